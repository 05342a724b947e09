"""The ONNX Runtime QDQ call: ``quant_pre_process`` + node naming, ``quantize_static`` in QDQ
format from a ranges file (no calibration run inside ORT), and the exclusions ONNX Runtime would
undo at load time.

Every INT8 candidate the ladder (:mod:`~edgetransfer.quantize.ladder`) judges is made by
:func:`quantize_with_ranges` from a ranges JSON in ORT's calibration cache format
(``onnxruntime.quantization.calibrate.save_tensors_data``), so range estimators, equalization
and bias correction all act before or around one well-defined ORT call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import require
from ..progress import log
from ..targets import QuantizationPreset
from .calibration import CalibrationRecipe


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


def weights_reduced(preset: QuantizationPreset) -> bool:
    """Whether ``preset``'s INT8 weights are made 7-bit, [-64, 64] (``preset.reduce_range``; None:
    :func:`edgetransfer.host.int8_saturates` on this CPU). Never for placement ``tensorrt``
    (TensorRT's INT8 kernels do not saturate).

    Depthwise convs are reduced too, although ONNX Runtime's depthwise INT8 kernel (MLAS
    ``MlasConvDepthwiseKernelAvx2``) widens to int16 and multiplies into int32, so it cannot saturate
    (measured 2026-12-07, AMD EPYC with AVX2: a +-1-weight net with only its depthwise conv quantized gave
    the same on/off difference, 0.89 %, with 8-bit and 7-bit weights). Keeping them 8-bit (ORT's
    per-initializer ``TensorQuantOverrides`` ``reduce_range: false``) was tried on the ``make demo`` bundle:
    plain minmax val KL 0.140 -> 0.121 but agreement 0.922 -> 0.914, and the whole ladder ended at val KL
    0.0090 instead of 0.0055, so it is not done."""
    from ..host import int8_saturates

    return preset.placement != "tensorrt" and (int8_saturates() if preset.reduce_range is None else preset.reduce_range)


def weight_qrange(preset: QuantizationPreset) -> tuple[int, int]:
    """(qmin, qmax) of ``preset``'s stored INT8 weights, as ``quantize_static`` picks them
    (``quant_utils.get_qmin_qmax_for_qType``): symmetric int8 (-127, 127), 7-bit (-64, 64),
    uint8 (0, 255) or 7-bit (0, 127)."""
    require("onnxruntime.quantization", "export", "INT8 quantization")
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qtype = TensorProto.INT8 if preset.weight_type == "int8" else TensorProto.UINT8
    lo, hi = get_qmin_qmax_for_qType(qtype, reduce_range=weights_reduced(preset), symmetric=preset.symmetric_weights)
    return int(lo), int(hi)


def quantize_with_ranges(pre: Path, out: Path, ranges: Path, preset: QuantizationPreset, recipe: CalibrationRecipe,
                         nodes_to_exclude: Sequence[str] = ()) -> dict[str, Any] | None:
    """``quantize_static`` in QDQ format from cached tensor ranges (no calibration run); a preset
    with ``placement: tensorrt`` goes to :mod:`.tensorrt_qdq` instead (returns its placement summary).

    ``ranges``: a calibration cache (``save_tensors_data`` JSON): the recipe's own (ORT calibrator,
    tagged with the recipe's method) or a range estimator's (:func:`~.ranges.write_ranges`, tagged
    MinMax). ``quantize_static`` is given the cache's own method as ``calibrate_method``, whatever
    ``recipe`` says (``recipe`` is not used here): ORT raises ValueError for a cache whose method differs
    from ``calibrate_method``, and the ranges in the cache are final either way (under an entropy
    recipe the ladder's mse candidate raised exactly that before, 2026-12-04)."""
    if preset.placement == "tensorrt":
        from .tensorrt_qdq import quantize_tensorrt

        return quantize_tensorrt(pre, out, ranges, preset, nodes_to_exclude)
    q = require("onnxruntime.quantization", "export", "INT8 quantization")
    from onnxruntime.quantization.calibrate import load_tensors_data

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
        reduce_range=weights_reduced(preset),
        activation_type=qtype[preset.activation_type], weight_type=qtype[preset.weight_type],
        calibrate_method=load_tensors_data(ranges).calibration_method, nodes_to_exclude=list(nodes_to_exclude),
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



def copy_metadata(src: Path, dst: Path) -> None:
    onnx = require("onnx", "export")
    s = onnx.load(str(src), load_external_data=False)
    d = onnx.load(str(dst))
    have = {p.key for p in d.metadata_props}
    for p in s.metadata_props:
        if p.key not in have:
            d.metadata_props.add(key=p.key, value=p.value)
    onnx.save_model(d, str(dst), save_as_external_data=False)
