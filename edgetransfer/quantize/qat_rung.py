"""Rung f of the INT8 ladder (:mod:`~edgetransfer.quantize.ladder`), and the candidates rungs e and f
build on.

Which candidates rung f fine-tunes (:func:`qat_bases`), in order, stopping at the first that holds:

1. ``f:qat``: the best candidate with NO float fallback (rungs a-d: only what speed-aware placement or
   the user keep in float);
2. ``f:qat:fallback``: when that does not hold and the best rung-e candidate (nodes kept in float for
   accuracy) is better than the candidate rung e built on (:func:`fallback_base`), that one. Without
   AdaRound this is "the best candidate overall is a rung-e one"; with it, the AdaRound candidate may
   be the best overall and rung e still helped its own base (see below for why it is not built on rung d).

Why the float-free candidate first: a node rung e keeps in float costs speed even where rung e counts
it free. Digits, EfficientNet-Lite0, measured 2026-12-05: block 0's depthwise conv and the stem save
nothing in INT8 kernel time under ONNX Runtime here, so rung e keeps them in float (4 % of the compute
nodes), yet the whole file with those two in float ran 1.91 ms b1 vs 1.55 ms fully quantized under ONNX
Runtime (placement's whole-file timing, ``benchmarks/quant_peers.py``: the Q/DQ around them is paid),
and in that run the chosen file ran 0.56x ORT fp32 where the fully quantized files of hymenoptera and
pizza_steak_sushi ran 0.48-0.49x. On that bundle the float-free QAT candidate of the default ladder did
not hold (val agreement 0.972, mean KL 0.0120: the error sits in the first layers, before the tail QAT
trains; 21 s spent), so the ladder went on to ``f:qat:fallback`` (agreement 0.994, KL 0.0024, holds,
14 s); with ``--adaround auto`` the float-free one came to agreement 0.992, KL 0.0048, and missed the
top-1 point budget on val by one image of 359 (-0.56 pt).

Which candidate rung e builds on (:func:`fallback_base`): the best one, except an AdaRound (rung d)
candidate. AdaRound fits each layer's rounding to its input in the QDQ model, with every upstream
quantization error (the asymmetric reconstruction of Nagel et al. 2020, section 5); keeping upstream
layers in float then changes the input the later layers' rounding was fit to. Measured on digits
2026-12-05: rung e on the AdaRound candidate (stem and block 0 in float) took val mean KL from 0.0080
to 0.0245, worse than bias correction alone (0.0197), and the whole ladder ended ``budget_exceeded``
where the ladder without AdaRound held. So rung e starts from the best candidate of rungs a-c.
The other order, AdaRound fitted after rung e (its 8 most sensitive quantized layers re-rounded on the QDQ
model that already keeps rung e's nodes in float, so their inputs are the ones the file will have), was
measured too (CPU without VNNI, 7-bit weights, ``make demo`` bundle, 2026-12-07, a patched ladder with
``--adaround on``): rung e's best candidate (the stem and block 0's depthwise conv in float) val mean KL
0.0130, agreement 0.981; AdaRound on it 0.0337 / 0.955 in 272 s, worse than its base; rung f then chose
rung e's own candidate (``f:qat:fallback`` 0.0055, as without AdaRound) and the float-free ``f:qat`` on
rung d ended at 0.0079. So rung d stays before rung e and on float-free candidates only.

What did not help rung f on a CPU without VNNI (7-bit weights; ``make demo`` bundle, digits, 359 val images,
AMD EPYC with AVX2, measured 2026-12-07, each variant judged on val like the rung; default: 300 steps, tail of
2 nodes, l2 0.01, the 1024 plain training images): val mean KL of the fallback candidate 0.0055 by default,
0.0055 with 900 steps (training-set KL 0.0019 -> 0.0009), 0.0056 / 0.0055 with one trainer-recipe augmented
view (``augment.augment_image``) or two mild views (crop scale 0.6-1, no flip) per image added; the
float-free candidate 0.0301 by default, 0.0305 (900 steps), 0.0300 (tail of 3 nodes), 0.0300 (l2 0.1), 0.0289 /
0.0288 (the two augmentations). Longer training only lowers the training-set KL: the val error the tail can learn is
learnt in 300 steps, so the defaults stay.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any


def _usable(r: dict) -> bool:
    return "_path" in r and not r.get("_score_penalty")


def fallback_base(lad) -> dict:
    """The candidate rung e keeps units of in float: :meth:`Ladder.best`, or when that is a rung-d
    (AdaRound) candidate, the best of rungs a-c (see the module docstring)."""
    from .ladder import _score

    best = lad.best()
    if not best["rung"].startswith("d:"):
        return best
    pool = [r for r in lad.rungs if _usable(r) and r["rung"][:2] in ("a:", "b:", "c:")]
    return max(pool, key=_score) if pool else best


def qat_bases(lad) -> list[tuple[str, dict]]:
    """(rung name, candidate) pairs rung f fine-tunes, in order (see the module docstring)."""
    from .ladder import _score

    best = lad.best()
    free = [r for r in lad.rungs if _usable(r) and not r["rung"].startswith(("e:", "f:"))]
    first = max(free, key=_score) if free else best
    out = [("f:qat", first)]
    fallbacks = [r for r in lad.rungs if _usable(r) and r["rung"].startswith("e:")]
    if fallbacks:
        e = max(fallbacks, key=_score)
        base = next((r for r in lad.rungs if _usable(r) and r["rung"] == e.get("based_on")), None)
        if base is None or _score(e) > _score(base):  # ``first`` is never a rung-e candidate
            out.append(("f:qat:fallback", e))
    return out


def run_qat_rung(lad) -> None:
    """Rung f on the ladder ``lad`` (:mod:`~edgetransfer.quantize.qat`): each base of
    :func:`qat_bases` fine-tuned with fake quantization on its own INT8 features of the training
    images, re-quantized and judged like any candidate, until one holds. Records a skipped rung
    when ``LadderConfig.qat`` is off or torch is not installed."""
    from ..runtime.ort import onnx_logits
    from .ort_qdq import weight_qrange
    from .qat import head_parity, qat_head, qat_tail, strip_private

    if lad.cfg.qat == "off":
        lad.rungs.append({"rung": "f:qat", "skipped": "off (LadderConfig.qat)", "seconds": 0.0})
        return
    if importlib.util.find_spec("torch") is None:  # an export-only install: the rung needs the trainer's torch
        lad.rungs.append({"rung": "f:qat", "skipped": "torch is not installed (pip install 'edgetransfer[train]')",
                          "seconds": 0.0})
        return
    ref = None
    wq = weight_qrange(lad.preset)[1]  # symmetric int8 weights: 127, or 64 when 7-bit (reduce_range)
    for name, best in qat_bases(lad):
        s0 = time.perf_counter()
        out = lad.td / f"qat{len(lad.rungs)}.onnx"
        x = lad.train_x()
        if ref is None:
            ref = onnx_logits(lad.pre, x)
        if lad.cfg.qat_nodes == 1:  # the head alone (the default tail of 2 nodes: see LadderConfig)
            summary = qat_head(best["_float"], best["_path"], x, ref, lad.input_name, out, weight_qmax=wq)
        else:
            summary = qat_tail(best["_float"], best["_path"], x, ref, lad.input_name, out, qat_nodes=lad.cfg.qat_nodes,
                               weight_qmax=wq)
            if "skipped" in summary:  # a tail torch cannot run here (a residual Add from before the cut): the head
                why = summary["skipped"]
                summary = qat_head(best["_float"], best["_path"], x, ref, lad.input_name, out, weight_qmax=wq)
                summary["tail_skipped"] = f"tail of {lad.cfg.qat_nodes} nodes: {why}; the head alone was trained"
        if "skipped" in summary:
            lad.rungs.append({"rung": name, **summary, "seconds": time.perf_counter() - s0})
            return
        extra: dict[str, Any] = {"_base": best["_base"]} if "_base" in best else {}
        r = lad.candidate(name, out, best["_ranges"], best["excluded_nodes"], estimator=best.get("estimator"),
                          based_on=best["rung"], qat=strip_private(summary), prep_seconds=time.perf_counter() - s0, **extra)
        r["qat"]["parity"] = par = head_parity(r["_path"], summary, x, lad.input_name)
        if not par["passed"]:
            r["holds"] = False
            r["qat_failed"] = (f"QDQ head vs fake-quantized torch head: max |diff| {par['rel_diff']:.3%} of the mean "
                               f"|logit| > {par['tolerance']:.0%}")
            r["_score_penalty"] = True
        if lad.done():
            return
