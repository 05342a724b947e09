"""``QdqInt8FromOnnx``: static INT8 post-training quantization with ``onnxruntime.quantization``.

Recipe: ``quant_pre_process`` (symbolic shape inference + ONNX optimisation) then
``quantize_static`` in QDQ format with per-channel weights, calibrated on images of the training
split. Activation/weight types and symmetry come from the target's quantization preset
(ORT on x86: uint8 activations fuse into QLinearConv; TensorRT: symmetric int8, zero point 0 —
NVIDIA TensorRT Developer Guide, "Explicit Quantization").
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..artifacts import Manifest, atomic_path, read_manifest, tool_versions, write_manifest
from ..data import PreprocessSpec, Sample, iter_batches
from ..errors import require
from ..export.parity import compare_logits
from ..progress import log, task
from ..targets import QuantizationPreset
from ..types import Format, Precision
from .calibration import CalibrationRecipe


class _Reader:
    """``CalibrationDataReader`` over preprocessed calibration batches."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, input_name: str, batch_size: int):
        self.batches = [x for x, _ in iter_batches(list(samples), spec, batch_size)]
        self.input_name = input_name
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def _calibrate_method(q, recipe: CalibrationRecipe):
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[recipe.method]


def qdq_int8_from_onnx(onnx_path: Path, out: Path, calib: Sequence[Sample], preset: QuantizationPreset,
                       recipe: CalibrationRecipe, *, parity_x: np.ndarray | None = None, parity_y: np.ndarray | None = None,
                       target: str | None = None, nodes_to_exclude: Sequence[str] = ()) -> Manifest:
    """Quantize the fp32 ONNX ``onnx_path`` to an INT8 QDQ ONNX ``out`` (+ manifest).

    ``calib``: calibration images (training split). ``parity_x`` float32 (N, 3, S, S) / ``parity_y``
    int64 (N,): held-out validation images used to record agreement with fp32 and top-1 of both.
    """
    q = require("onnxruntime.quantization", "export", "INT8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    parent = read_manifest(onnx_path)
    spec = PreprocessSpec.from_dict(parent.preprocessing)
    input_name = parent.inputs[0]["name"]
    t0 = time.perf_counter()
    qtype = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    extra = {
        "ActivationSymmetric": preset.symmetric_activations,
        "WeightSymmetric": preset.symmetric_weights,
        "CalibMovingAverage": False,
        "QuantizeBias": preset.quantize_bias,
        "AddQDQPairToWeight": preset.qdq_pair_on_weights,
        "DedicatedQDQPair": preset.dedicated_qdq_pair,
        "OpTypesToExcludeOutputQuantization": list(preset.no_output_qdq_ops),
    }
    if recipe.method in ("entropy", "percentile"):
        extra["CalibNumBins"] = recipe.num_bins
    if recipe.method == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    with tempfile.TemporaryDirectory(prefix="edgetransfer-q-") as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=False)
        with task(f"Calibrating ({recipe.method}, {len(calib)} images)", None):
            reader = _Reader(calib, spec, input_name, recipe.batch_size)
            with atomic_path(out, suffix=".onnx") as tmp:
                q.quantize_static(
                    str(pre), str(tmp), reader, quant_format=q.QuantFormat.QDQ, per_channel=preset.per_channel,
                    activation_type=qtype[preset.activation_type], weight_type=qtype[preset.weight_type],
                    calibrate_method=_calibrate_method(q, recipe), nodes_to_exclude=list(nodes_to_exclude),
                    extra_options=extra,
                )
                _copy_metadata(onnx_path, tmp)
    seconds = time.perf_counter() - t0
    details = {"quant_format": "QDQ", "preset": {**preset.__dict__, "no_output_qdq_ops": list(preset.no_output_qdq_ops)}, "calibration": recipe.to_dict(),
               "calibration_images": [str(s.path) for s in calib], "num_calibration_images": len(calib),
               "nodes_to_exclude": list(nodes_to_exclude), "seconds": seconds, "node_counts": count_ops(out)}
    if parity_x is not None:
        from ..export.onnx import onnx_logits

        ref = onnx_logits(onnx_path, parity_x)
        cand = onnx_logits(out, parity_x)
        stats = compare_logits(ref, cand)
        details["parity_vs"] = "fp32 onnx"
        details["parity"] = stats.to_dict()
        if parity_y is not None:
            details["val_top1_fp32"] = float((ref.argmax(1) == parity_y).mean())
            details["val_top1_int8"] = float((cand.argmax(1) == parity_y).mean())
        log(f"INT8 vs fp32 ONNX on {stats.num_samples} held-out images: agreement {stats.agreement:.4f}"
            + (f", top-1 {details['val_top1_int8']:.4f} vs {details['val_top1_fp32']:.4f}" if parity_y is not None else ""))
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


def count_ops(path: Path) -> dict[str, int]:
    """Histogram of op types in an ONNX graph (e.g. QuantizeLinear/DequantizeLinear counts)."""
    onnx = require("onnx", "export")
    m = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))
