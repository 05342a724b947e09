"""Read what an ONNX file contains: op counts, opset, and what its Q/DQ nodes use, checked against
a quantization preset. Used by quantize (node counts, the preset check of what it wrote), builders
(TensorRT's INT8 and opset checks) and export (the opset it wrote); imports ``onnx`` lazily.

A bundle's ``model.int8.qdq.onnx`` may have been made for another target (x86 CPUs run unsigned,
asymmetric activations fastest; TensorRT consumes only signed, symmetric INT8). The check reads
the graph itself — the types and values of every zero point, the scale shapes, the opset — so a
file made with another preset is never used silently.

TensorRT's rules checked by :func:`tensorrt_violations` (NVIDIA TensorRT Developer Guide, "Working
with Quantized Types" / "Explicit Quantization"; onnx-tensorrt ``docs/operators.md``:
``QuantizeLinear``: "y_zero_point must be 0", ``DequantizeLinear``: INT8 input, "x_zero_point must
be zero"): signed INT8 zero points, all 0; per-tensor activation scales; only INT8 tensors
dequantized (no int32 biases); no integer-arithmetic ops (QLinearConv, ConvInteger, ...); default
-domain opset within the target's ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import require
from .targets import QuantizationPreset

def graph_opset(model) -> int:
    """The default-domain (``ai.onnx``) opset a ModelProto imports (0 when it imports none)."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def file_opset(path: str | Path) -> int:
    """The default-domain opset of the ONNX file at ``path`` (weights not loaded)."""
    onnx = require("onnx", "export")
    return graph_opset(onnx.load(str(path), load_external_data=False))


def count_ops(path: str | Path) -> dict[str, int]:
    """Histogram of op types in an ONNX graph (e.g. QuantizeLinear/DequantizeLinear counts), sorted by name."""
    onnx = require("onnx", "export")
    m = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd",
                "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QGemm"}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# onnx.TensorProto data types
_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 10: "float16"}


@dataclass
class QdqSummary:
    """What the Q/DQ nodes of one ONNX graph use.

    ``zero_point_types``: dtype name -> number of Q/DQ nodes (a Q node without a zero point counts
    as ``uint8``, the ONNX default). ``nonzero_zero_points``: names of nodes whose zero point is not
    all 0. ``per_channel_activations``: Q nodes on a non-constant input with a non-scalar scale.
    ``dequantized_types``: dtype of each DequantizeLinear input that is a constant (int32 = a
    quantized bias). ``unverifiable``: zero points that are neither initializers nor Constant
    outputs.
    """

    opset: int
    num_quantize: int = 0
    num_dequantize: int = 0
    zero_point_types: dict[str, int] = field(default_factory=dict)
    nonzero_zero_points: list[str] = field(default_factory=list)
    per_channel_weights: int = 0
    per_channel_activations: list[str] = field(default_factory=list)
    dequantized_types: dict[str, int] = field(default_factory=dict)
    integer_ops: dict[str, int] = field(default_factory=dict)
    unverifiable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def inspect_qdq(path: str | Path) -> QdqSummary:
    """Summarise the Q/DQ nodes of the ONNX file ``path`` (needs the ``onnx`` package)."""
    onnx = require("onnx", "tensorrt", "checking a Q/DQ ONNX file")
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    consts: dict[str, Any] = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    s = QdqSummary(opset=opset)
    for n in model.graph.node:
        if n.op_type in _INTEGER_OPS:
            s.integer_ops[n.op_type] = s.integer_ops.get(n.op_type, 0) + 1
        if n.op_type not in _QDQ:
            continue
        label = n.name or n.output[0]
        if n.op_type == "QuantizeLinear":
            s.num_quantize += 1
        else:
            s.num_dequantize += 1
        zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else ""
        if not zp_name:
            out_dtype = next((a.i for a in n.attribute if a.name == "output_dtype"), 0)
            dtype = _DTYPES.get(out_dtype, "uint8") if n.op_type == "QuantizeLinear" else _dq_input_type(consts, n)
            s.zero_point_types[dtype] = s.zero_point_types.get(dtype, 0) + 1
        elif zp_name in consts:
            zp = consts[zp_name]
            dtype = _DTYPES.get(zp.data_type, str(zp.data_type))
            s.zero_point_types[dtype] = s.zero_point_types.get(dtype, 0) + 1
            if np.any(numpy_helper.to_array(zp) != 0):
                s.nonzero_zero_points.append(label)
        else:
            s.unverifiable.append(label)
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        scale_size = int(np.prod(list(scale.dims))) if scale is not None else 1
        if n.op_type == "QuantizeLinear":
            if scale_size > 1:
                if n.input[0] in consts:
                    s.per_channel_weights += 1
                else:
                    s.per_channel_activations.append(label)
        elif n.input[0] in consts:
            dtype = _DTYPES.get(consts[n.input[0]].data_type, str(consts[n.input[0]].data_type))
            s.dequantized_types[dtype] = s.dequantized_types.get(dtype, 0) + 1
            if scale_size > 1 and dtype in ("int8", "uint8"):
                s.per_channel_weights += 1
    return s


def _dq_input_type(consts: dict[str, Any], node) -> str:
    x = consts.get(node.input[0])
    return _DTYPES.get(x.data_type, "unknown") if x is not None else "unknown"


def preset_violations(summary: QdqSummary, preset: QuantizationPreset, opset_max: int) -> list[str]:
    """Ways the graph departs from ``preset`` and the opset ceiling; empty when it conforms.

    Checks: the graph is Q/DQ at all; zero-point types equal the preset's activation/weight types;
    symmetric presets have all zero points 0; ``quantize_bias: false`` presets dequantize no int32
    tensor; no integer-arithmetic ops; opset <= ``opset_max``.
    """
    out: list[str] = []
    if summary.num_quantize + summary.num_dequantize == 0:
        out.append("the graph has no QuantizeLinear/DequantizeLinear nodes: it is not a Q/DQ INT8 model")
    if summary.opset > opset_max:
        out.append(f"opset {summary.opset} exceeds the target's ceiling {opset_max}")
    allowed = {preset.activation_type, preset.weight_type} | ({"int32"} if preset.quantize_bias else set())
    wrong = {t: c for t, c in summary.zero_point_types.items() if t not in allowed}
    if wrong:
        out.append(f"zero points of type {', '.join(f'{t} ({c} nodes)' for t, c in sorted(wrong.items()))}; "
                   f"the preset uses {preset.activation_type} activations and {preset.weight_type} weights")
    if preset.symmetric_activations and preset.symmetric_weights and summary.nonzero_zero_points:
        n = summary.nonzero_zero_points
        out.append(f"{len(n)} Q/DQ nodes have a non-zero zero point (asymmetric), e.g. {n[0]!r}; the preset is symmetric (zero point 0)")
    if not preset.quantize_bias and summary.dequantized_types.get("int32"):
        out.append(f"{summary.dequantized_types['int32']} DequantizeLinear nodes dequantize int32 tensors (quantized biases); "
                   "the preset keeps biases in float")
    if summary.integer_ops:
        out.append(f"integer-arithmetic ops {summary.integer_ops} (QOperator format); the preset is Q/DQ")
    if summary.unverifiable:
        out.append(f"{len(summary.unverifiable)} zero points are computed at run time (e.g. {summary.unverifiable[0]!r}) and cannot be checked")
    return out


def tensorrt_violations(summary: QdqSummary, opset_max: int) -> list[str]:
    """TensorRT's own rules (see the module docstring), independent of any preset."""
    out = preset_violations(summary, QuantizationPreset(activation_type="int8", weight_type="int8", symmetric_activations=True,
                                                        symmetric_weights=True, quantize_bias=False), opset_max)
    if summary.per_channel_activations:
        out.append(f"{len(summary.per_channel_activations)} activations are quantized per channel (e.g. "
                   f"{summary.per_channel_activations[0]!r}); TensorRT takes per-tensor activation scales")
    return out


def check_qdq_for_target(path: str | Path, preset: QuantizationPreset, opset_max: int, *, tensorrt: bool = False) -> list[str]:
    """All violations of ``path`` against ``preset`` (plus TensorRT's rules when ``tensorrt``)."""
    s = inspect_qdq(path)
    out = preset_violations(s, preset, opset_max)
    if tensorrt:
        out += [v for v in tensorrt_violations(s, opset_max) if v not in out]
    return out
