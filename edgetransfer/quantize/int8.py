"""``QdqInt8FromOnnx``: static INT8 post-training quantization with ``onnxruntime.quantization``,
held to an accuracy budget.

Recipe: ``quant_pre_process`` (symbolic shape inference + ONNX optimisation) then tensor ranges
from the calibration recipe (:func:`~edgetransfer.quantize.calibration.cached_ranges`: computed
once per model x calibration set x method x preset, cached) then ``quantize_static`` in QDQ
format with the target's quantization preset (:class:`~edgetransfer.targets.QuantizationPreset`:
ORT on x86 wants uint8 activations that fuse into QLinearConv; TensorRT consumes only symmetric
signed INT8 with zero point 0 — NVIDIA TensorRT Developer Guide, "Explicit Quantization").

The accuracy budget: top-1 of the INT8 model against the fp32 ONNX model on held-out images
(the validation split; calibration uses the training split only), judged by
:func:`edgetransfer.stats.budget_judge` (the paired drop with its interval; logit fidelity when one
image is worth more than the budget; the worst-class bound). When it does not hold, the quantization units are ranked by the error each adds alone to the logits
(:mod:`~edgetransfer.quantize.sensitivity`) and the nodes consuming the worst units are kept in
floating point (``nodes_to_exclude``), 1, 2, 4, 8... units cumulatively, re-quantizing from the
cached ranges each step, until the budget holds or ``max_steps`` steps were taken. A model still
over budget is written with ``status: budget_exceeded`` in its manifest; the pipeline then exits
with code 3. Note: the budget is measured on the same validation images that choose the
exclusions, so the final figure is the one the loop optimised, not an independent estimate.

Differential checks recorded in the manifest: the INT8 model's top-1 with ONNX Runtime graph
optimisations on (fused integer kernels) and off (float Q/DQ reference semantics) — held by the sample-sized flip gate of :mod:`edgetransfer.gates`; a failing gate
writes the model with ``status: gate_failed`` and the reason (the job exits 3 after the report);
the check does not apply to TensorRT-preset models (TensorRT never runs ONNX Runtime's CPU
kernels); and the CPU features of the host (VNNI etc.: INT8
kernels without VNNI can saturate and give other results).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts import Manifest, atomic_path, read_manifest, tool_versions, write_manifest
from ..data import PreprocessSpec, Sample, load_arrays
from ..errors import ConfigError, DataError, EdgeTransferError, require
from ..onnx_inspect import count_ops
from ..parity import TOLERANCES, compare_logits
from ..progress import log, task
from ..gates import flip_gate, is_tensorrt_preset
from ..stats import budget_judge
from ..targets import QuantizationPreset
from ..types import Format, Precision, Status
from .calibration import CalibrationRecipe, cached_ranges

# ONNX Runtime with graph optimisations on runs QDQ models with fused integer kernels (QLinearConv:
# int32 accumulation, one requantization rounding); off, it runs the reference semantics (float
# DequantizeLinear -> op -> QuantizeLinear). Both must compute the same function up to rounding.
# Measured on EfficientNet-Lite0 / hymenoptera (153 images, mean |fp32 logit| 1.22) over the
# 23 models of benchmarks/quant_quality.py: mean |on - off| = 0.5-1.1 % of mean |fp32 logit| (u8s8)
# and 0.8-2.5 % (s8s8), prediction agreement >= 0.987 (rounding flips a borderline image or two
# of a coarsely quantized model, so an exact top-1 match is not a property of correct kernels);
# an optimiser rewrite that re-quantized an excluded conv gave 10 %. Without VNNI, u8s8 products
# can saturate, which also shows up as a large difference.
# Now judged by edgetransfer.gates.flip_gate (its max_rel_logit_diff is this 5 %); kept for readers of old manifests.
OPT_ON_OFF_TOLERANCE = {"max_rel_logit_diff": 0.05, "min_prediction_agreement": 0.98}

# Unit counts excluded cumulatively at budget steps 1, 2, 3...: 1, 2, 4, 8, ... (doubling keeps
# the step count logarithmic in the number of units while the first steps stay surgical).
def _units_at_step(step: int) -> int:
    return 2 ** (step - 1)


@dataclass(frozen=True)
class AccuracyBudget:
    """``max_top1_drop``: largest allowed top-1 drop (fraction, e.g. 0.005 = 0.5 pt) of the INT8
    model vs the fp32 ONNX model on held-out labelled images. ``max_steps``: exclusion steps
    before giving up (0 = measure only). ``sensitivity_images``: calibration images the
    sensitivity ranking runs on."""

    max_top1_drop: float = 0.005
    max_steps: int = 8
    sensitivity_images: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_top1_drop <= 1.0:
            raise ConfigError(f"--max-accuracy-drop must be a fraction of top-1 in [0, 1] (got {self.max_top1_drop}); 0.005 = 0.5 pt")
        if self.max_steps < 0:
            raise ConfigError(f"--max-steps must be >= 0 (got {self.max_steps})")
        if self.sensitivity_images < 1:
            raise ConfigError(f"sensitivity_images must be >= 1 (got {self.sensitivity_images})")


def _calibrate_method(q, recipe: CalibrationRecipe):
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[recipe.method]


def op_types_to_quantize() -> list[str]:
    """ORT's default op list of ``quantize_static`` (QLinear + QDQ registries); calibration uses
    the same list so the cached ranges cover exactly what the quantizer asks for."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def preprocess(onnx_path: Path, out: Path) -> None:
    """``quant_pre_process`` (symbolic shape inference, ORT basic optimisations such as Conv+BN
    folding, ONNX shape inference) then give every unnamed node a name (``nodes_to_exclude`` and
    the sensitivity ranking address nodes by name)."""
    onnx = require("onnx", "export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    before = set(Path.cwd().iterdir())
    try:
        quant_pre_process(str(onnx_path), str(out), skip_symbolic_shape=False)
    except Exception as exc:  # "Incomplete symbolic shape inference" (e.g. MobileViT's unfold reshapes): merge the
        # conflicting symbolic dims (auto_merge) instead. The failed attempt dumps sym_shape_infer_temp.onnx and its
        # external data (a uuid-named .data file) into the working directory: removed
        if "symbolic shape inference" not in str(exc):
            raise
        for p in set(Path.cwd().iterdir()) - before:
            if p.is_file() and (p.name.startswith("sym_shape_infer_temp") or p.suffix == ".data"):
                p.unlink(missing_ok=True)
        log(f"symbolic shape inference incomplete on {onnx_path.name}; retrying with auto_merge")
        quant_pre_process(str(onnx_path), str(out), skip_symbolic_shape=False, auto_merge=True)
    m = onnx.load(str(out))
    used = {n.name for n in m.graph.node if n.name}
    changed = False
    for i, n in enumerate(m.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name, changed = name, True
            used.add(name)
    if changed:
        onnx.save_model(m, str(out), save_as_external_data=False)


def quantize_with_ranges(pre: Path, out: Path, ranges: Path, preset: QuantizationPreset, recipe: CalibrationRecipe,
                         nodes_to_exclude: Sequence[str] = ()) -> dict[str, Any] | None:
    """``quantize_static`` in QDQ format from cached tensor ranges (no calibration run); a preset
    with ``placement: tensorrt`` goes to :mod:`.tensorrt_qdq` instead (returns its placement summary)."""
    if preset.placement == "tensorrt":
        from .tensorrt_qdq import quantize_tensorrt

        return quantize_tensorrt(pre, out, ranges, preset, nodes_to_exclude)
    q = require("onnxruntime.quantization", "export", "INT8 quantization")
    qtype = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    extra = {
        "ActivationSymmetric": preset.symmetric_activations,
        "WeightSymmetric": preset.symmetric_weights,
        "QuantizeBias": preset.quantize_bias,
        "AddQDQPairToWeight": preset.qdq_pair_on_weights,
        "DedicatedQDQPair": preset.dedicated_qdq_pair,
        "OpTypesToExcludeOutputQuantization": list(preset.no_output_qdq_ops),
    }
    q.quantize_static(
        str(pre), str(out), None, quant_format=q.QuantFormat.QDQ, per_channel=preset.per_channel,
        activation_type=qtype[preset.activation_type], weight_type=qtype[preset.weight_type],
        calibrate_method=_calibrate_method(q, recipe), nodes_to_exclude=list(nodes_to_exclude),
        op_types_to_quantize=op_types_to_quantize(), extra_options=extra, calibration_cache_path=str(ranges),
    )


_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")


def requantized_by_ort(qdq_path: Path, excluded: Sequence[str]) -> dict[str, list[str]]:
    """Excluded Conv/ConvTranspose/Gemm nodes of a QDQ model that ONNX Runtime would quantize
    again when it loads the model, each with the nodes to exclude as well to prevent it.

    ORT's ``WeightBiasQuantization`` graph optimizer (onnxruntime/core/optimizer/qdq_transformer/
    weight_bias_quantization.cc) gives a float-weight Conv/ConvTranspose/Gemm per-tensor INT8
    weights when its input comes from a per-tensor DequantizeLinear and its output reaches a
    QuantizeLinear through nothing but single-consumer Relu/Clip nodes: exactly the shape of a
    node excluded between quantized neighbours. Measured: excluding a depthwise conv of
    EfficientNet-Lite0 changed the reference (optimisations off) logits and not the optimised
    ones. Keeping the node's OUTPUT in float (the Relu/Clip chain and the consumers after the
    QuantizeLinear excluded too) breaks the pattern.
    """
    onnx = require("onnx", "export")
    m = onnx.load(str(qdq_path), load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    excluded = set(excluded)
    out: dict[str, list[str]] = {}
    for n in m.graph.node:
        if n.name not in excluded or n.op_type not in _WEIGHTED_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        p0 = producer.get(n.input[0])
        if p0 is None or p0.op_type != "DequantizeLinear" or p0.input[1] not in inits or \
                int(np.prod(inits[p0.input[1]].dims or [1])) != 1:
            continue
        chain, cur, q = [], n, None
        while len(cur.output) == 1 and len(consumers.get(cur.output[0], [])) == 1:
            c = consumers[cur.output[0]][0]
            if c.op_type == "QuantizeLinear":
                q = c
                break
            if c.op_type not in ("Relu", "Clip"):
                break
            chain.append(c.name)
            cur = c
        if q is None:
            continue
        after = [x.name for dq in consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"
                 for x in consumers.get(dq.output[0], []) if x.op_type not in ("QuantizeLinear", "DequantizeLinear")]
        out[n.name] = chain + after
    return out


def is_convolutional(onnx_path: Path) -> bool:
    onnx = require("onnx", "export")
    m = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("Conv", "ConvTranspose") for n in m.graph.node)


def refuse_dynamic(onnx_path: Path) -> None:
    """Dynamic quantization is never offered for convolutional models: raise :class:`ConfigError`
    explaining why (and for any other model too: this tool's INT8 is static QDQ)."""
    if is_convolutional(onnx_path):
        raise ConfigError(
            f"{Path(onnx_path).name} is a convolutional model: dynamic quantization is not offered for it. ONNX Runtime "
            "quantizes activations at run time only for MatMul/Gemm; convolutions get ConvInteger plus a run-time "
            "range computation per layer, which on this CPU measured 4.6-13x slower than fp32 and cost 3.3 points of "
            "top-1 (issue 4's measurements on EfficientNet-Lite0). Use static INT8 (the default: calibrated QDQ, --mode static)"
        )
    raise ConfigError("dynamic quantization is not implemented: edgetransfer's INT8 artifact is static QDQ (--mode static), "
                      "which ONNX Runtime, TensorRT and the mobile converters all consume")


def _top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


def qdq_int8_from_onnx(onnx_path: Path, out: Path, calib: Sequence[Sample] | np.ndarray, preset: QuantizationPreset,
                       recipe: CalibrationRecipe, *, parity_x: np.ndarray | None = None, parity_y: np.ndarray | None = None,
                       target: str | None = None, nodes_to_exclude: Sequence[str] = (), budget: AccuracyBudget | None = None,
                       cache_dir: Path | None = None, opset_max: int | None = None, check_opt_off: bool = True) -> Manifest:
    """Quantize the fp32 ONNX ``onnx_path`` to an INT8 QDQ ONNX ``out`` (+ manifest).

    ``calib``: calibration images of the training split, as samples (preprocessed here with the
    model's preprocessing) or a float32 (N, 3, S, S) array. ``parity_x`` float32 (N, 3, S, S) /
    ``parity_y`` int64 (N,): held-out labelled validation images: top-1 of fp32 and INT8, the
    agreement, the budget and the optimisations on/off check are measured on them.
    ``nodes_to_exclude``: node names kept in floating point from the start. ``budget``: see
    :class:`AccuracyBudget` (None: no budget, figures only). ``cache_dir``: calibration range
    cache (None: a temporary one). ``opset_max``: the target's opset ceiling, checked on the result.

    Returns the manifest; ``details["status"]`` is ``ok`` or ``budget_exceeded`` (the file is
    written in both cases so it can be inspected; the caller decides the exit code).
    Raises :class:`ConfigError` for a budget without labelled images or an opset above the
    ceiling. ``status`` is ``gate_failed`` (file written, ``details.gate_failed_reason``) when
    ONNX Runtime with graph optimisations on and off fail the flip gate.
    """
    require("onnxruntime.quantization", "export", "INT8 quantization")
    from ..host import cpu_info
    from ..onnx_inspect import graph_opset
    from ..runtime.ort import onnx_logits
    from .sensitivity import rank_units

    parent = read_manifest(onnx_path)
    spec = PreprocessSpec.from_dict(parent.preprocessing)
    input_name = parent.inputs[0]["name"]
    if budget is not None and (parity_x is None or parity_y is None or not len(parity_y)):
        raise ConfigError("an accuracy budget needs labelled held-out images (parity_x, parity_y); none were given")
    calib_files = None
    if isinstance(calib, np.ndarray):
        calib_x = calib
    else:
        calib_files = [str(s.path) for s in calib]
        calib_x, _ = load_arrays(list(calib), spec)
    if not len(calib_x):
        raise DataError("the calibration set is empty; calibration needs images of the training split")
    t0 = time.perf_counter()
    details: dict[str, Any] = {"quant_format": "QDQ", "preset": preset.to_dict(), "calibration": recipe.to_dict(),
                               "num_calibration_images": int(len(calib_x))}
    if calib_files is not None:
        details["calibration_images"] = calib_files
    with tempfile.TemporaryDirectory(prefix="edgetransfer-q-") as td:
        td = Path(td)
        pre = td / "pre.onnx"
        preprocess(onnx_path, pre)
        with task(f"Calibrating ({recipe.method}, {len(calib_x)} images)", None):
            cache = cached_ranges(pre, parent.sha256, calib_x, input_name, recipe, preset, Path(cache_dir or td / "cache"),
                                  op_types_to_quantize())
        details["calibration_cache"] = {**cache.to_dict(), "path": str(cache.path) if cache_dir else None}
        ref = onnx_logits(onnx_path, parity_x) if parity_x is not None else None

        def attempt(step: int, excluded: list[str]) -> dict[str, Any]:
            path = td / f"step{step}.onnx"
            s0 = time.perf_counter()
            excluded, added = list(excluded), {}
            for _ in range(8):  # until no excluded node would be quantized again by ONNX Runtime
                placed = quantize_with_ranges(pre, path, cache.path, preset, recipe, excluded)
                req = {k: v for k, v in requantized_by_ort(path, excluded).items() if any(n not in excluded for n in v)}
                if not req:
                    break
                added.update(req)
                excluded += list(dict.fromkeys(n for v in req.values() for n in v if n not in excluded))
            ops = count_ops(path)
            rec: dict[str, Any] = {"step": step, "path": path, "num_excluded_nodes": len(excluded),
                                   "excluded_nodes": list(excluded), "num_dequantize_nodes": ops.get("DequantizeLinear", 0)}
            if added:
                rec["exclusions_added_for_ort"] = added
            if placed:
                rec["tensorrt_placement"] = placed
            if ref is not None:
                cand = onnx_logits(path, parity_x, optimize=preset.placement != "tensorrt")  # TensorRT files: reference Q/DQ
                rec["parity"] = compare_logits(ref, cand).to_dict()
                rec["_logits"] = cand
                if parity_y is not None:
                    rec["top1_fp32"], rec["top1_int8"] = _top1(ref, parity_y), _top1(cand, parity_y)
                    rec["top1_drop"] = rec["top1_fp32"] - rec["top1_int8"]
                    if budget is not None:
                        j = budget_judge(ref, cand, parity_y, budget.max_top1_drop)
                        rec["judgement"] = {k: v for k, v in j.to_dict().items() if k != "per_class"}
                        rec["_per_class"] = j.figures["per_class"]
            rec["seconds"] = time.perf_counter() - s0
            return rec

        excluded = list(nodes_to_exclude)
        attempts = [attempt(0, excluded)]
        ranking = None
        if budget is not None and not attempts[0]["judgement"]["holds"] and budget.max_steps > 0:
            log(f"INT8 over budget ({attempts[0]['judgement']['reason']}): ranking "
                "quantization units by the error each adds to the logits")
            s0 = time.perf_counter()
            sens_x = calib_x[np.linspace(0, len(calib_x) - 1, min(budget.sensitivity_images, len(calib_x))).astype(int)]
            with task("Sensitivity ranking", None):
                ranking = [u for u in rank_units(pre, attempts[0]["path"], sens_x, input_name)
                           if any(n not in excluded for n in u.nodes)]
            details["sensitivity"] = {"images": int(len(sens_x)), "seconds": time.perf_counter() - s0,
                                      "num_units": len(ranking), "metric": "mean squared logit error added by the unit alone",
                                      "top_units": [u.to_dict() for u in ranking[:20]]}
            for step in range(1, budget.max_steps + 1):
                n_units = min(_units_at_step(step), len(ranking))
                new = [n for u in ranking[:n_units] for n in u.nodes if n not in excluded]
                if not new:
                    break
                attempts.append(attempt(step, excluded + list(dict.fromkeys(new))))
                a = attempts[-1]
                excluded = a["excluded_nodes"]
                log(f"  step {step}: {n_units} unit(s), {len(excluded)} node(s) in float: top-1 {a['top1_int8']:.4f} "
                    f"(fp32 {a['top1_fp32']:.4f}, drop {a['top1_drop']:.4f})")
                if a["judgement"]["holds"] or n_units == len(ranking) or not a["num_dequantize_nodes"]:
                    break
        # A graph left without any Q/DQ node is an fp32 model with an INT8 name: it never holds the budget.
        def holds(a):
            return a["judgement"]["holds"] and a["num_dequantize_nodes"] > 0

        if budget is None:
            chosen = attempts[-1]
        else:
            held = [a for a in attempts if holds(a)]
            chosen = held[0] if held else min((a for a in attempts if a["num_dequantize_nodes"] > 0),
                                              key=lambda a: (a["top1_drop"], a["num_excluded_nodes"]), default=attempts[0])
        status = Status.OK if budget is None or holds(chosen) else Status.BUDGET_EXCEEDED

        if check_opt_off and parity_x is not None and (preset.placement == "tensorrt" or is_tensorrt_preset(preset.to_dict())):
            details["optimizations_on_off"] = {"applies": False, "reason": "made for TensorRT, which never runs ONNX "
                                               "Runtime's CPU kernels: the ONNX Runtime on/off check does not apply"}
        elif check_opt_off and parity_x is not None:
            off = onnx_logits(chosen["path"], parity_x, optimize=False)
            on = chosen["_logits"]
            # sized to the sample (edgetransfer.gates): flips of borderline images do not count
            gate = flip_gate(off, on, name="ONNX Runtime graph optimisations on vs off")
            details["optimizations_on_off"] = {"applies": True, **gate.to_dict(), "prediction_agreement": float(
                (on.argmax(1) == off.argmax(1)).mean()), **({"top1_on": _top1(on, parity_y), "top1_off": _top1(off, parity_y)}
                                                            if parity_y is not None else {})}
            if not gate.passed:
                details["gate_failed_reason"] = (
                    f"INT8 model: {gate.reason}. The fused integer kernels of this CPU ({', '.join(cpu_info()['cpu_features'])}) "
                    "and the reference Q/DQ semantics compute different functions: an optimiser rewrote the graph, or "
                    "u8s8 products saturate (without VNNI ONNX Runtime recommends reduce_range). Try another preset "
                    "(--preset tensorrt is s8s8), or report it")
                log(f"[yellow]{details['gate_failed_reason']}")
                if status == Status.OK:
                    status = Status.GATE_FAILED
        onnx = require("onnx", "export")
        opset = graph_opset(onnx.load(str(chosen["path"]), load_external_data=False))
        if opset_max is not None and opset > opset_max:
            raise ConfigError(f"the INT8 model has opset {opset}, above the target's ceiling {opset_max}; export at a lower opset")
        from ..onnx_inspect import check_qdq_for_target

        problems = check_qdq_for_target(chosen["path"], preset, opset_max or opset)
        if problems:  # never an artifact that does not follow the preset it was made for
            raise EdgeTransferError(f"the INT8 model does not follow the {preset.name!r} preset: {'; '.join(problems)}")
        with atomic_path(out, suffix=".onnx") as tmp:
            shutil.copyfile(chosen["path"], tmp)
            _copy_metadata(onnx_path, tmp)
    per_class = chosen.get("_per_class")
    for a in attempts:
        a.pop("path", None)
        a.pop("_logits", None)
        a.pop("_per_class", None)
    details.update({
        "status": str(status), "opset": opset, "qdq_check": "follows the preset (edgetransfer.onnx_inspect)",
        "nodes_to_exclude": chosen["excluded_nodes"],
        "exclusions_added_for_ort": chosen.get("exclusions_added_for_ort", {}),
        **({"tensorrt_placement": chosen["tensorrt_placement"]} if "tensorrt_placement" in chosen else {}),
        "num_excluded_nodes": chosen["num_excluded_nodes"], "seconds": time.perf_counter() - t0,
        "node_counts": count_ops(out), "cpu": cpu_info(),
        "cpu_note": "INT8 results are recorded on this CPU; kernels without VNNI (avx512_vnni / avx_vnni) can saturate "
                    "u8s8 products and give other results",
    })
    if parity_x is not None:
        details["parity_vs"] = "fp32 onnx"
        details["parity"] = chosen["parity"]
        details["parity_tolerance"] = {k: (None if v == float("inf") else v) for k, v in TOLERANCES["int8"].items()}
        if parity_y is not None:
            details["val_top1_fp32"] = chosen["top1_fp32"]
            details["val_top1_int8"] = chosen["top1_int8"]
            details["val_top1_drop"] = chosen["top1_drop"]
        if chosen["parity"]["agreement"] < TOLERANCES["int8"]["min_agreement"]:
            log(f"[yellow]INT8 agreement with fp32 {chosen['parity']['agreement']:.4f} is below "
                f"{TOLERANCES['int8']['min_agreement']}")
        log(f"INT8 vs fp32 ONNX on {chosen['parity']['num_samples']} held-out images: agreement {chosen['parity']['agreement']:.4f}"
            + (f", top-1 {chosen['top1_int8']:.4f} vs {chosen['top1_fp32']:.4f}" if parity_y is not None else ""))
    if budget is not None:
        details["budget"] = {"max_top1_drop": budget.max_top1_drop, "max_steps": budget.max_steps,
                             "held": status == Status.OK, "top1_drop": chosen["top1_drop"],
                             "judgement": {**chosen["judgement"], "per_class": per_class},
                             "steps": attempts, "chosen_step": chosen["step"]}
    return write_manifest(out, Manifest(
        format=str(Format.ONNX), precision=str(Precision.INT8), file=out.name, parent_sha256=parent.sha256,
        parent_file=parent.file, target=target, preprocessing=parent.preprocessing, class_names=parent.class_names,
        inputs=parent.inputs, outputs=parent.outputs, producer="edgetransfer.quantize.int8",
        tool_versions=tool_versions("onnx", "onnxruntime"), details=details,
    ))


def _copy_metadata(src: Path, dst: Path) -> None:
    onnx = require("onnx", "export")
    s = onnx.load(str(src), load_external_data=False)
    d = onnx.load(str(dst))
    have = {p.key for p in d.metadata_props}
    for p in s.metadata_props:
        if p.key not in have:
            d.metadata_props.add(key=p.key, value=p.value)
    onnx.save_model(d, str(dst), save_as_external_data=False)
