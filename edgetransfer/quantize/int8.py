"""``QdqInt8FromOnnx``: static INT8 post-training quantization with ``onnxruntime.quantization``,
held to an accuracy budget.

Recipe: ``quant_pre_process`` (symbolic shape inference + ONNX optimisation) then tensor ranges
from the calibration recipe (:func:`~edgetransfer.quantize.calibration.cached_ranges`: computed
once per model x calibration set x method x preset, cached) then ``quantize_static`` in QDQ
format with the target's quantization preset (:class:`~edgetransfer.targets.QuantizationPreset`:
ORT on x86 wants uint8 activations that fuse into QLinearConv; TensorRT consumes only symmetric
signed INT8 with zero point 0 — NVIDIA TensorRT Developer Guide, "Explicit Quantization").

The accuracy budget and the ladder (:mod:`~edgetransfer.quantize.ladder`): candidates,
cheapest first — activation range estimators, cross-layer equalization, bias correction, then
float fallback capped at a share of the compute nodes — each judged against the fp32 ONNX model
on held-out images (the validation split; calibration uses the training split only) by
:func:`edgetransfer.stats.budget_judge` (the paired drop with its interval; logit fidelity when
one image is worth more than the budget; the worst-class bound), stopping at the first that
holds. Every rung is recorded in ``details.ladder``. A model still over budget is written with
``status: budget_exceeded`` in its manifest (the best candidate); the pipeline then exits with
code 3. The test split, when the bundle has one, never reaches this decision.

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
from ..parity import TOLERANCES
from ..progress import log, task
from ..gates import flip_gate, is_tensorrt_preset
from ..targets import QuantizationPreset
from ..types import Format, Precision, Status
from .calibration import CalibrationRecipe, cached_ranges
from .ladder import Ladder, LadderConfig
from .ort_qdq import (  # noqa: F401  (public names builders and tests import from here)
    copy_metadata as _copy_metadata, op_types_to_quantize, preprocess, quantize_with_ranges, requantized_by_ort, weights_reduced,
)

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

def _weights_7bit(preset: QuantizationPreset) -> dict[str, Any]:
    """What ``details.weights_7bit`` records: whether the INT8 weights were made 7-bit and why."""
    from ..host import cpu_info, int8_saturates

    on = weights_reduced(preset)
    if preset.placement == "tensorrt":
        why = "placement tensorrt: TensorRT's INT8 kernels do not saturate, weights keep 8 bits"
    elif preset.reduce_range is not None:
        why = f"quantization.reduce_range: {str(preset.reduce_range).lower()} (set by the target or preset)"
    elif on:
        why = (f"this CPU ({cpu_info()['cpu']}) is x86 without VNNI: ONNX Runtime's u8s8 kernels saturate their int16 "
               "pair sums with 8-bit weights (ONNX Runtime quantization guide, reduce_range)")
    else:
        why = "this CPU has VNNI (or is not x86): ONNX Runtime's INT8 kernels accumulate in int32"
    return {"applied": on, "why": why, "cpu_saturates_u8s8": int8_saturates()}


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
                       cache_dir: Path | None = None, opset_max: int | None = None, check_opt_off: bool = True,
                       ladder: LadderConfig | None = None, qat_x=None) -> Manifest:
    """Quantize the fp32 ONNX ``onnx_path`` to an INT8 QDQ ONNX ``out`` (+ manifest).

    ``calib``: calibration images of the training split, as samples (preprocessed here with the
    model's preprocessing) or a float32 (N, 3, S, S) array. ``parity_x`` float32 (N, 3, S, S) /
    ``parity_y`` int64 (N,): held-out labelled validation images: top-1 of fp32 and INT8, the
    agreement, the budget and the optimisations on/off check are measured on them.
    ``nodes_to_exclude``: node names kept in floating point from the start. ``budget``: see
    :class:`AccuracyBudget` (None: no budget, figures only). ``cache_dir``: calibration range
    cache (None: a temporary one). ``opset_max``: the target's opset ceiling, checked on the result.
    ``qat_x``: float32 (M, 3, S, S) training-split images for the ladder's QAT rung, or a callable
    returning them (called only when the rung runs); default: the calibration images.

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
                               "num_calibration_images": int(len(calib_x)), "weights_7bit": _weights_7bit(preset)}
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

        lad = Ladder(td, pre, calib_x, input_name, preset, recipe, ladder or LadderConfig(), cache.path,
                     # TensorRT-placement files are judged with reference Q/DQ semantics (ORT's CPU fusions are not TensorRT's)
                     lambda p: onnx_logits(p, parity_x, optimize=preset.placement != "tensorrt"), ref, parity_y, budget,
                     nodes_to_exclude, qat_x=qat_x)
        chosen = lad.run(budget.sensitivity_images if budget is not None else 8)
        status = Status.OK if budget is None or chosen.get("holds") else Status.BUDGET_EXCEEDED
        chosen_path = chosen["_path"]  # a temp file: never recorded in the manifest

        if check_opt_off and parity_x is not None and (preset.placement == "tensorrt" or is_tensorrt_preset(preset.to_dict())):
            details["optimizations_on_off"] = {"applies": False, "reason": "made for TensorRT, which never runs ONNX "
                                               "Runtime's CPU kernels: the ONNX Runtime on/off check does not apply"}
        elif check_opt_off and parity_x is not None:
            off = onnx_logits(chosen_path, parity_x, optimize=False)
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
                    f"u8s8 products saturate (weights 7-bit: {weights_reduced(preset)}; without VNNI ONNX Runtime "
                    "recommends reduce_range, quantization.reduce_range: true). Try another preset "
                    "(--preset tensorrt is s8s8), or report it")
                log(f"[yellow]{details['gate_failed_reason']}")
                if status == Status.OK:
                    status = Status.GATE_FAILED
        onnx = require("onnx", "export")
        opset = graph_opset(onnx.load(str(chosen_path), load_external_data=False))
        if opset_max is not None and opset > opset_max:
            raise ConfigError(f"the INT8 model has opset {opset}, above the target's ceiling {opset_max}; export at a lower opset")
        from ..onnx_inspect import check_qdq_for_target

        problems = check_qdq_for_target(chosen_path, preset, opset_max or opset)
        if problems:  # never an artifact that does not follow the preset it was made for
            raise EdgeTransferError(f"the INT8 model does not follow the {preset.name!r} preset: {'; '.join(problems)}")
        with atomic_path(out, suffix=".onnx") as tmp:
            shutil.copyfile(chosen_path, tmp)
            _copy_metadata(onnx_path, tmp)
        chosen_index = lad.rungs.index(chosen)
        rungs, per_class = lad.finish(chosen, td / "chosen.onnx")
    chosen = rungs[chosen_index]
    details.update({
        "status": str(status), "opset": opset, "qdq_check": "follows the preset (edgetransfer.onnx_inspect)",
        "nodes_to_exclude": chosen["excluded_nodes"],
        "exclusions_added_for_ort": chosen.get("exclusions_added_for_ort", {}),
        "num_excluded_nodes": chosen["num_excluded_nodes"], "seconds": time.perf_counter() - t0,
        "node_counts": count_ops(out), "cpu": cpu_info(),
        "cpu_note": "INT8 results are recorded on this CPU; kernels without VNNI (avx512_vnni / avx_vnni) can saturate "
                    "u8s8 products and give other results (see weights_7bit)",
        "ladder": rungs, "ladder_config": (ladder or LadderConfig()).to_dict(), "chosen_rung": chosen["rung"],
        "float_compute_share": chosen["float_share"], "float_compute_nodes": chosen.get("float_compute_nodes"),
        **({"tensorrt_placement": chosen["tensorrt_placement"]} if "tensorrt_placement" in chosen else {}),
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
        log(f"INT8 vs fp32 ONNX on {chosen['parity']['num_samples']} validation images (the split that decides INT8): agreement {chosen['parity']['agreement']:.4f}"
            + (f", top-1 {chosen['top1_int8']:.4f} vs {chosen['top1_fp32']:.4f}" if parity_y is not None else ""))
    if budget is not None:
        details["budget"] = {"max_top1_drop": budget.max_top1_drop, "max_steps": budget.max_steps,
                             "held": status == Status.OK, "top1_drop": chosen["top1_drop"],
                             "judgement": {**chosen["judgement"], "per_class": per_class},
                             "steps": [r for r in rungs if "skipped" not in r], "chosen_step": chosen_index}
    return write_manifest(out, Manifest(
        format=str(Format.ONNX), precision=str(Precision.INT8), file=out.name, parent_sha256=parent.sha256,
        parent_file=parent.file, target=target, preprocessing=parent.preprocessing, class_names=parent.class_names,
        inputs=parent.inputs, outputs=parent.outputs, producer="edgetransfer.quantize.int8",
        tool_versions=tool_versions("onnx", "onnxruntime"), details=details,
    ))
