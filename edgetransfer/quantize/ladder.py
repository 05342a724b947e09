"""The INT8 ladder: candidate QDQ models, each judged against the fp32 model on the VALIDATION
split (:func:`edgetransfer.stats.budget_judge`).

Rungs (every one recorded in the INT8 manifest, ``details.ladder``, with its figures and seconds):

a. activation ranges: the calibration recipe's method (ORT calibrator, cached), then each range
   estimator of :attr:`LadderConfig.estimators` (:mod:`~edgetransfer.quantize.ranges`, one
   histogram pass shared by all of them). Between the two, speed-aware placement
   (:mod:`~edgetransfer.quantize.placement`, ``a:placement``; files for ONNX Runtime's CPU on this
   host's kind of CPU): compute nodes whose INT8 kernel is slower than fp32 here stay in float,
   within the float cap, when the whole file is then faster; every later candidate keeps them;
b. cross-layer equalization + high-bias absorption (:mod:`~edgetransfer.quantize.equalize`),
   for graphs with depthwise convolutions; ``auto`` runs it only with per-tensor weights (with
   per-channel weights it lowered digits agreement 0.965 -> 0.938 in the previous measurement);
c. bias correction (:mod:`~edgetransfer.quantize.bias_correction`) of EVERY rung-a candidate;
d. AdaRound (:mod:`~edgetransfer.quantize.adaround`), opt-in (``LadderConfig.adaround``, CLI
   ``--adaround``): learned rounding of the weights of the :attr:`LadderConfig.adaround_layers` most
   sensitive layers (ranked as rung e ranks units) of the best candidate's uncorrected float
   model, then bias-corrected again; time-capped by :attr:`LadderConfig.adaround_seconds`;
e. float fallback, greedy, one unit more per step: the :attr:`LadderConfig.fallback_candidates`
   quantization units (:mod:`~edgetransfer.quantize.sensitivity`) that rank first by the logit error
   each adds alone per millisecond it costs to keep in float on this host (for ONNX Runtime files
   when this host is the target's kind, the fp32 minus INT8 kernel ms of its nodes,
   :func:`~edgetransfer.quantize.placement.node_time_pairs`: no INT8 gain, no cost; else their fp32
   kernel ms x (1 - INT8/fp32 b1 p50 of the whole file measured here); floor 1 % of that file's INT8
   b1 p50, :data:`~edgetransfer.quantize.fallback_rung.COST_RESOLUTION`) are each
   quantized with what is already in float to learn the nodes ONNX Runtime forces into float with
   them (:func:`~edgetransfer.quantize.ort_qdq.requantized_by_ort`), which count in their cost and
   against :attr:`LadderConfig.max_float_share` of the compute nodes (each pair of the first
   :attr:`LadderConfig.fallback_pairs` units too, as one addition); the set's logit error is then
   measured as a set against fp32, a float node without the bias correction made for its rounding
   (:class:`~edgetransfer.quantize.sensitivity.UnitScorer`, ``base_path``), and the
   :attr:`LadderConfig.fallback_trials` additions with the largest error reduction per ms are made
   and judged on val; the best of them is the next step's start. Why: on
   digits without VNNI (2026-12-07), the unit ranked first alone (block 1's depthwise conv, profiled
   saving 0.00-0.04 ms between runs) forced its pointwise consumer out and used the whole 2-node cap
   for val KL 0.0500 -> 0.0500, where the stem with block 0's depthwise conv (two float nodes next to
   each other, nothing forced) gave 0.0130; and the gated error alone ranked block 0's depthwise and
   pointwise convs (KL 0.0574 once corrected) above that pair while it was measured against the
   bias-corrected model (against fp32 with the biases gated, the pair ranks first of 7 sets:
   ``benchmarks/fallback_ranking.py``, 2026-12-08).
   Each step is quantized from the uncorrected float model and bias-corrected again (a layer kept in
   float must lose the correction made for its rounding, and its neighbours' shifts change);
f. QAT of the network's tail (default: the last 2 weighted nodes and what follows them; 1 = the
   classifier head) on a candidate's own INT8 features of the training images
   (:mod:`~edgetransfer.quantize.qat`), parity-checked against the fake-quantized torch tail: first
   the best candidate without float fallback, then the best rung-e one
   (:mod:`~edgetransfer.quantize.qat_rung`, which also says why rung e never builds on rung d).

Which candidate is chosen. Rungs a-c give files of the same graph (same nodes quantized, same
speed) and cost seconds, so ALL of them are measured, and the chosen one is the candidate that
holds with the best logit fidelity (lowest mean KL vs fp32 on val). Stopping at the first that
holds would let one borderline validation image pick the file (hymenoptera, 76 val images:
minmax held on val and lost 1 of 77 test images; its bias-corrected sibling, KL 0.0001 vs
0.0002, lost none; measured 2026-12-02). Placement is the one speed decision among them: of the
plain file and the placed one, the slower is marked ``superseded`` and never chosen. The rungs that
cost speed or minutes (d, e) run only when none of a-c holds, and stop at the first step that holds;
f runs last.

Rungs a-c act on the fp32 ONNX graph (after ``quant_pre_process``: BN folded) rather than on
the PyTorch model: the same code then serves every model the export stage can write, and the
file ORT quantizes is the file that was judged. Every candidate is made by ONE call,
:func:`~edgetransfer.quantize.ort_qdq.quantize_with_ranges`, with the target's preset (x86
u8s8, TensorRT s8s8 symmetric, ...), so every result follows its preset.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..onnx_inspect import count_ops
from ..parity import compare_logits
from ..progress import log
from ..stats import budget_judge
from .graphstats import compute_nodes, depthwise_convs
from .ladder_config import LadderConfig  # noqa: F401  (re-exported: the ladder's public configuration)
from .ort_qdq import quantize_with_ranges, requantized_by_ort, weight_qrange


def _score(r: dict) -> tuple:
    """Larger is better: holds, then lower mean KL vs fp32 (the logit fidelity: a smoother measure
    than a top-1 drop of a few images), higher agreement, smaller top-1 drop."""
    if r.get("_score_penalty"):  # e.g. a QAT head that failed its parity check: never chosen
        return (False, float("-inf"), 0.0, float("-inf"))
    j = r.get("judgement") or {}
    kl = j.get("fidelity", {}).get("mean_kl")
    if kl is None or kl != kl:  # no budget (figures only) or no labels: nothing to rank on
        kl = float("inf")
    return (bool(r.get("holds")), -kl, r.get("parity", {}).get("agreement", 0.0), -r.get("top1_drop", 0.0))


class Ladder:
    """One ladder run in the work directory ``td`` on the pre-processed float model ``pre``.
    ``ref``: fp32 logits on ``parity_x``; ``logits_of(path)``: a candidate's logits on the same
    images; ``budget``: an :class:`~edgetransfer.quantize.int8.AccuracyBudget` or None (then only
    the first rung runs: figures without a decision)."""

    def __init__(self, td: Path, pre: Path, calib_x: np.ndarray, input_name: str, preset, recipe, cfg: LadderConfig,
                 recipe_ranges: Path, logits_of: Callable[[Path], np.ndarray], ref: np.ndarray | None,
                 labels: np.ndarray | None, budget, excluded: Sequence[str] = (),
                 qat_x: np.ndarray | Callable[[], np.ndarray] | None = None):
        self.td, self.pre, self.calib_x, self.input_name = td, pre, calib_x, input_name
        self.preset, self.recipe, self.cfg, self.recipe_ranges = preset, recipe, cfg, recipe_ranges
        self.logits_of, self.ref, self.labels, self.budget = logits_of, ref, labels, budget
        self.excluded0 = list(excluded)
        self._qat_x = calib_x if qat_x is None else qat_x  # rung f's training images (training split), maybe lazy
        self.rungs: list[dict] = []
        self.n_compute = len(compute_nodes(pre))
        self._hists: dict[Path, dict] = {}
        self._ranks: dict[tuple, tuple] = {}

    # -- one candidate ---------------------------------------------------------------------
    def _quantize(self, float_path: Path, path: Path, ranges: Path, excluded: Sequence[str]) -> tuple[list, dict, Any]:
        """Quantize; returns (exclusions, exclusions added so ONNX Runtime does not quantize an
        excluded node again at load time, TensorRT placement summary or None)."""
        excluded, added, placed = list(excluded), {}, None
        for _ in range(8):  # until no excluded node would be quantized again by ONNX Runtime
            placed = quantize_with_ranges(float_path, path, ranges, self.preset, self.recipe, excluded)
            req = {k: v for k, v in requantized_by_ort(path, excluded).items() if any(n not in excluded for n in v)}
            if not req:
                break
            added.update(req)
            excluded += list(dict.fromkeys(n for v in req.values() for n in v if n not in excluded))
        return excluded, added, placed

    def candidate(self, name: str, float_path: Path, ranges: Path, excluded: Sequence[str], **info) -> dict:
        s0 = time.perf_counter()
        path = self.td / f"rung{len(self.rungs)}.onnx"
        excluded, added, placed = self._quantize(float_path, path, ranges, excluded)
        comp = set(compute_nodes(float_path))
        rec: dict[str, Any] = {"rung": name, **info, "num_excluded_nodes": len(excluded), "excluded_nodes": excluded,
                               "float_compute_nodes": sum(n in comp for n in excluded),
                               "num_dequantize_nodes": count_ops(path).get("DequantizeLinear", 0),
                               "_path": path, "_float": float_path, "_ranges": ranges}
        rec["float_share"] = rec["float_compute_nodes"] / self.n_compute if self.n_compute else 0.0
        if added:
            rec["exclusions_added_for_ort"] = added
        if placed:
            rec["tensorrt_placement"] = placed
        if self.ref is not None:
            cand = self.logits_of(path)
            rec["_logits"] = cand
            rec["parity"] = compare_logits(self.ref, cand).to_dict()
            if self.labels is not None:
                t32, t8 = (float((a.argmax(1) == self.labels).mean()) for a in (self.ref, cand))
                rec.update(top1_fp32=t32, top1_int8=t8, top1_drop=t32 - t8)
                if self.budget is not None:
                    j = budget_judge(self.ref, cand, self.labels, self.budget.max_top1_drop)
                    rec["judgement"] = {k: v for k, v in j.to_dict().items() if k != "per_class"}
                    rec["_per_class"] = j.figures["per_class"]
                    rec["holds"] = bool(j.holds) and rec["num_dequantize_nodes"] > 0
        rec["seconds"] = time.perf_counter() - s0 + info.pop("prep_seconds", 0.0)
        rec.pop("prep_seconds", None)
        self.rungs.append(rec)
        if "top1_int8" in rec:
            fid = (rec.get("judgement") or {}).get("fidelity") or {}
            dec = (f" (decisive {fid['decisive_agreement']:.4f} on {fid['decisive_images']}), mean KL {fid['mean_kl']:.4f}"
                   if fid.get("decisive_images") else "")  # what the verdict reads (stats.budget_judge)
            log(f"  INT8 rung {name}: top-1 {rec['top1_int8']:.4f} (fp32 {rec['top1_fp32']:.4f}), agreement "
                f"{rec['parity']['agreement']:.4f}{dec}, {rec['float_compute_nodes']} compute node(s) in float"
                + (f": {'holds' if rec['holds'] else 'does not hold'}" if "holds" in rec else ""))
        return rec

    def best(self) -> dict:
        return max((r for r in self.rungs if "_path" in r), key=_score)

    def done(self) -> bool:
        return self.budget is None or any(r.get("holds") and not r.get("_score_penalty") for r in self.rungs)

    def histograms(self, float_path: Path) -> dict:
        from .ort_qdq import op_types_to_quantize
        from .ranges import collect_histograms

        if float_path not in self._hists:
            s0 = time.perf_counter()
            self._hists[float_path] = collect_histograms(float_path, self.calib_x, self.input_name, op_types_to_quantize(),
                                                         num_bins=self.recipe.num_bins)
            self._hist_seconds = time.perf_counter() - s0
        else:
            self._hist_seconds = 0.0
        return self._hists[float_path]

    def ranges_file(self, float_path: Path, method: str) -> tuple[Path, dict]:
        from .ranges import write_ranges

        h = self.histograms(float_path)
        out = self.td / f"ranges{len(self.rungs)}-{method}.json"
        summary = write_ranges(h, method, bool(self.preset.symmetric_activations), out, percentile=self.recipe.percentile,
                               num_quantized_bins=self.recipe.num_quantized_bins)
        summary["seconds"] += self._hist_seconds
        return out, summary

    # -- the rungs ---------------------------------------------------------------------------
    def run(self, sens_images: int = 8) -> dict:
        free = [self.candidate(f"a:ranges:{self.recipe.method}", self.pre, self.recipe_ranges, self.excluded0,
                               estimator=self.recipe.method, source="calibration recipe (ORT calibrator, cached)")]
        if self.budget is None:  # figures only: no decision to make
            return free[0]
        placed = self.rung_placement(free[0])
        if placed is not None:  # the plain file is slower: every later candidate keeps those nodes in float too
            free = [placed]
        for est in self.cfg.estimators:
            if est == self.recipe.method:
                continue
            s0 = time.perf_counter()
            ranges, summary = self.ranges_file(self.pre, est)
            free.append(self.candidate(f"a:ranges:{est}", self.pre, ranges, self.excluded0, estimator=est,
                                       range_summary=summary, prep_seconds=time.perf_counter() - s0))
        eq = self.rung_equalize()
        if eq is not None:
            free.append(eq)
        if self.cfg.bias_correction:
            for r in list(free):
                free.append(self.rung_bias_correction(r))
        else:
            self.rungs.append({"rung": "c:bias_correction", "skipped": "off (--no-bias-correction)", "seconds": 0.0})
        if not self.done() or self.cfg.adaround != "auto":  # "off" is recorded as skipped
            self.rung_adaround(sens_images)
        if not self.done():
            self.rung_fallback(sens_images)
        if not self.done() or self.cfg.qat != "auto":  # "off" is recorded as skipped
            self.rung_qat()
        return self.best()

    def rung_placement(self, plain: dict) -> dict | None:
        """Speed-aware placement (:mod:`~edgetransfer.quantize.placement`): the compute nodes of the
        plain candidate ``plain`` that are slower in INT8 than in fp32 on this host, kept in float when
        the whole file is then faster. Returns that candidate (``plain`` is then never chosen) or None."""
        from .placement import MIN_EXTRA_MS, MIN_RATIO, placement_verdict, slower_in_int8

        cfg, tensorrt = self.cfg, self.preset.placement != "ort"
        if cfg.speed_placement == "off" or (cfg.speed_placement == "auto" and (tensorrt or not cfg.host_is_target)):
            why = ("off" if cfg.speed_placement == "off" else "TensorRT placement: ONNX Runtime CPU times are not "
                   "TensorRT's" if tensorrt else "the target's CPU is not this host's kind: times measured here are not the target's")
            self.rungs.append({"rung": "a:placement", "skipped": why, "seconds": 0.0})
            return None
        s0 = time.perf_counter()
        x1, comp = self.calib_x[:1], compute_nodes(self.pre)
        already = sum(n in plain["excluded_nodes"] for n in comp)  # compute nodes the plain file keeps in float
        cap = math.floor(cfg.max_float_share * self.n_compute + 1e-9) - already
        if cap <= 0:
            self.rungs.append({"rung": "a:placement", "skipped": f"no float node left under the cap ({cfg.max_float_share:.0%} "
                               f"of {self.n_compute} compute nodes)", "seconds": 0.0})
            return None
        slow, table = slower_in_int8(self.pre, plain["_path"], x1, [n for n in comp if n not in plain["excluded_nodes"]], cap)
        info = {"min_ratio": MIN_RATIO, "min_extra_ms": MIN_EXTRA_MS, "float_cap_left": cap, "node_times": table[:6]}
        if not slow:
            self.rungs.append({"rung": "a:placement", "kept_in_float": [], **info, "seconds": time.perf_counter() - s0,
                               "reason": f"no quantized compute node is >= {MIN_RATIO}x and >= {MIN_EXTRA_MS} ms "
                               "slower in INT8 on this host"})
            log(f"  INT8 placement: nothing kept in float ({self.rungs[-1]['reason']})")
            return None
        rec = self.candidate(f"a:placement:{self.recipe.method}", self.pre, self.recipe_ranges, self.excluded0 + slow,
                             estimator=self.recipe.method, kept_in_float=slow, **info, prep_seconds=time.perf_counter() - s0)
        s1 = time.perf_counter()
        v = placement_verdict(plain["_path"], rec["_path"], x1, cfg.placement_runtimes)
        rec.update({k: v[k] for k in ("b1_ms", "b1_ms_openvino") if k in v}, seconds=rec["seconds"] + time.perf_counter() - s1)
        over = rec["float_compute_nodes"] > cap + already  # ORT's exclusions count
        rec["adopted"] = v["adopted"] and not over
        loser = plain if rec["adopted"] else rec  # one of the two files is slower: never chosen
        loser["_score_penalty"] = True
        loser["superseded"] = (f"{', '.join(slow)} in float: {v['reason']} (this host)"
                               + (": over the float cap with ONNX Runtime's exclusions" if over else ""))
        log(f"  INT8 placement: {', '.join(slow)} {'kept' if rec['adopted'] else 'not kept'} in float: {v['reason']}")
        if not rec["adopted"]:
            return None
        self.excluded0 = list(rec["excluded_nodes"])
        return rec

    def _ranking(self, float_path: Path, qdq_path: Path, sens_images: int,
                 base: Path | None = None) -> tuple[np.ndarray, list]:
        """(images, units of ``qdq_path`` ranked by the logit error each adds alone), cached with the
        :class:`~edgetransfer.quantize.sensitivity.UnitScorer` that scored them (:meth:`_scorer`);
        ``base``: the float model a bias-corrected ``float_path`` was corrected from (the scorer's
        ``base_path``)."""
        from .sensitivity import UnitScorer, rank_units

        key = (float_path, qdq_path, base)
        if key not in self._ranks:
            sx = self.calib_x[np.linspace(0, len(self.calib_x) - 1, min(sens_images, len(self.calib_x))).astype(int)]
            scorer = UnitScorer(float_path, qdq_path, sx, self.input_name, base_path=base)
            self._ranks[key] = (sx, rank_units(float_path, qdq_path, sx, self.input_name, scorer=scorer), scorer)
        return self._ranks[key][:2]

    def _scorer(self, float_path: Path, qdq_path: Path, base: Path | None = None):
        """The :class:`~edgetransfer.quantize.sensitivity.UnitScorer` of a :meth:`_ranking` already made."""
        return self._ranks[(float_path, qdq_path, base)][2]

    def rung_adaround(self, sens_images: int) -> None:
        """Rung d (:mod:`~edgetransfer.quantize.adaround`) on the best candidate's uncorrected float
        model and its plain QDQ file; the result is bias-corrected again (:meth:`corrected`)."""
        if self.cfg.adaround == "off":
            self.rungs.append({"rung": "d:adaround", "skipped": "off (opt-in: --adaround auto|on, LadderConfig.adaround)",
                               "seconds": 0.0})
            return
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            self.rungs.append({"rung": "d:adaround", "skipped": "torch is not installed (pip install 'edgetransfer[train]')",
                               "seconds": 0.0})
            return
        from .adaround import adaround

        best = self.best()
        s0 = time.perf_counter()
        base = best.get("_base", best["_float"])
        plain = next((r["_path"] for r in self.rungs if r.get("_float") == base and "_base" not in r
                      and r.get("_ranges") == best["_ranges"] and r.get("excluded_nodes") == best["excluded_nodes"]), None)
        if plain is None:
            plain = self.td / f"plain{len(self.rungs)}.onnx"
            self._quantize(base, plain, best["_ranges"], best["excluded_nodes"])
        layers = None
        if self.cfg.adaround_layers:
            _, units = self._ranking(base, plain, sens_images)
            layers = list(dict.fromkeys(n for u in units if u.kind == "weight" for n in u.nodes))[: self.cfg.adaround_layers]
        out = self.td / f"adaround{len(self.rungs)}.onnx"
        summary = adaround(base, plain, self.calib_x, self.input_name, out, layers=layers, iters=self.cfg.adaround_iters,
                           max_seconds=self.cfg.adaround_seconds, weight_range=weight_qrange(self.preset))
        summary["selected"] = "all quantized Conv/Gemm" if layers is None else f"the {len(layers)} most sensitive weights"
        self.corrected("d:adaround", out, best["_ranges"], best["excluded_nodes"], estimator=best.get("estimator"),
                       based_on=best["rung"], adaround=summary, prep_seconds=time.perf_counter() - s0)

    def rung_qat(self) -> None:
        """Rung f: :func:`~edgetransfer.quantize.qat_rung.run_qat_rung` (the float-free candidate
        first, then the best rung-e one)."""
        from .qat_rung import run_qat_rung

        run_qat_rung(self)

    def train_x(self) -> np.ndarray:
        """The training-split images of rungs d (``adaround_images: train``) and f, decoded once."""
        if callable(self._qat_x):
            self._qat_x = self._qat_x()
        return self._qat_x

    def rung_equalize(self) -> dict | None:
        from .equalize import channel_min, equalize

        dw = depthwise_convs(self.pre)
        per_tensor = not self.preset.per_channel
        if self.cfg.equalize == "off" or (self.cfg.equalize == "auto" and not (dw and per_tensor)):
            why = ("off" if self.cfg.equalize == "off" else
                   "no depthwise convolutions" if not dw else "per-channel weights (equalization only moves range into them)")
            self.rungs.append({"rung": "b:equalize", "skipped": why, "seconds": 0.0})
            return None
        best = self.best()
        s0 = time.perf_counter()
        eq0, eq = self.td / "equalized0.onnx", self.td / "equalized.onnx"
        equalize(self.pre, eq0)  # CLE, then high biases absorbed from the equalized conv1 outputs' minima
        summary = equalize(eq0, eq, channel_min=channel_min(eq0, self.calib_x, self.input_name))
        est = best.get("estimator") or "minmax"
        ranges, rs = self.ranges_file(eq, est)
        return self.candidate("b:equalize", eq, ranges, self.excluded0, estimator=est, equalization=summary,
                              range_summary=rs, prep_seconds=time.perf_counter() - s0)

    def rung_bias_correction(self, base: dict) -> dict:
        """Rung c on the candidate ``base``: its float model bias-corrected against its own QDQ
        file, quantized again with the same ranges and exclusions."""
        from .bias_correction import correct_biases

        s0 = time.perf_counter()
        out = self.td / f"biascorr{len(self.rungs)}.onnx"
        summary = correct_biases(base["_float"], base["_path"], self.calib_x, self.input_name, out)
        return self.candidate(f"c:bias_correction:{base['rung'].split(':')[-1]}", out, base["_ranges"],
                              base["excluded_nodes"], estimator=base.get("estimator"), based_on=base["rung"],
                              bias_correction=summary, prep_seconds=time.perf_counter() - s0, _base=base["_float"])

    def corrected(self, name: str, base_float: Path, ranges: Path, excluded: Sequence[str], **info) -> dict:
        """A candidate of ``base_float`` with ``excluded`` kept in float, bias-corrected for
        exactly that quantization when the config asks for bias correction (else plain)."""
        if not self.cfg.bias_correction:
            return self.candidate(name, base_float, ranges, excluded, **info)
        from .bias_correction import correct_biases

        s0 = time.perf_counter() - info.pop("prep_seconds", 0.0)
        plain = self.td / f"plain{len(self.rungs)}.onnx"
        excluded, _, _ = self._quantize(base_float, plain, ranges, excluded)
        out = self.td / f"biascorr{len(self.rungs)}.onnx"
        summary = correct_biases(base_float, plain, self.calib_x, self.input_name, out)
        return self.candidate(name, out, ranges, excluded, bias_correction=summary,
                              prep_seconds=time.perf_counter() - s0, _base=base_float, **info)

    def rung_fallback(self, sens_images: int) -> None:
        """Rung e: :func:`~edgetransfer.quantize.fallback_rung.run_fallback_rung`."""
        from .fallback_rung import run_fallback_rung

        run_fallback_rung(self, sens_images)

    def finish(self, chosen: dict, out: Path) -> tuple[list[dict], Any]:
        """Copy the chosen candidate to ``out``; return the JSON-ready rung records and the
        chosen rung's per-class figures."""
        shutil.copyfile(chosen["_path"], out)
        per_class = chosen.get("_per_class")
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.rungs]
        return clean, per_class
