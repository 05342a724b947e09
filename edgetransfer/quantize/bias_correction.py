"""Empirical bias correction: remove the mean output shift that weight quantization adds to every
Conv / Gemm, per output channel, measured on calibration images.

Weight rounding error ``dW = W_q - W`` is not zero-mean per output channel (depthwise kernels of 9
weights least of all), so a layer's output moves by ``E[conv(x, dW)]`` on average, and the shift
travels through the network (Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction", ICCV 2019, section 4.2; Finkelstein et al., "Fighting Quantization Bias
With Bias", 2019: the empirical variant). Recipe here:

1. One pass of the calibration images through the FLOAT model with the data input of every
   quantized Conv / Gemm exposed: its per-position mean over the images, ``M`` (C_in, H, W) for
   a Conv, (K,) for a Gemm, and the mean of its fake-quantized value ``M_q`` with the scale and
   zero point the QDQ model gives that input (activation rounding is not zero-mean either: a
   flat background maps to one value and rounds the same way everywhere).
2. The layer's own shift, ``delta = mean over output positions of (conv(M_q, W_q) - conv(M, W))``
   (the conv is linear, so this is exact, padding included; computed with the node's own
   attributes by ONNX Runtime), per output channel: the error of the quantized layer on the
   float model's inputs, as NNCF's fast bias correction measures it. Each layer corrects only
   its own shift; upstream shifts are corrected by the upstream layers, never twice.
3. ``bias -= delta`` in the float model (a bias is added where there is none), which is then
   quantized again with the SAME activation ranges: ORT quantizes the corrected float bias
   (int32 for x86 presets, float behind Q/DQ for TensorRT), the weights are unchanged.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from ..errors import require
from .sensitivity import find_units

_WEIGHTED = ("Conv", "Gemm")


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _own_shift(node, m: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """Mean over output positions of ``node`` applied to the mean input ``m`` with weights ``dw``
    and no bias: float64 (C_out,)."""
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    from onnx import TensorProto, helper, numpy_helper

    attrs = _attrs(node)
    if node.op_type == "Gemm":
        attrs.pop("beta", None)
        if attrs.get("transA"):
            attrs.pop("transA")
        inp = m.reshape(1, -1).astype(np.float32)
    else:
        inp = m[None].astype(np.float32)
    g = helper.make_graph(
        [helper.make_node(node.op_type, ["x", "w"], ["y"], **attrs)], "shift",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(inp.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(dw.astype(np.float32), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    y = ort.InferenceSession(onnx.ModelProto.SerializeToString(model), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": inp})[0].astype(np.float64)
    return y.reshape(y.shape[0], y.shape[1], -1).mean(axis=(0, 2))


def mean_inputs(float_model, tensors: dict[str, tuple | None], x: np.ndarray, input_name: str,
                batch: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each float tensor of ``tensors`` ({name: (scale, zero_point, qmin, qmax) of its Q/DQ pair
    in the QDQ model, or None when it stays float}): the mean over the images ``x`` (float32
    (N, 3, S, S)) of the tensor and of its fake-quantized value (ONNX QuantizeLinear ->
    DequantizeLinear), from the float model: {name: (mean, mean_fake_quant)}, float64 arrays."""
    ort = require("onnxruntime", "export")
    from onnx import helper

    m = copy.deepcopy(float_model)
    names = list(tensors)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sums: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), batch):
        for t, v in zip(names, sess.run(names, {input_name: np.ascontiguousarray(x[i: i + batch])})):
            v = np.asarray(v, np.float32)
            q = tensors[t]
            fq = v if q is None else ((np.clip(np.rint(v / q[0]) + q[1], q[2], q[3]) - q[1]) * q[0])
            add = [v.astype(np.float64).sum(0), fq.astype(np.float64).sum(0)]
            sums[t] = [a + b for a, b in zip(sums[t], add)] if t in sums else add
    return {t: (s[0] / len(x), s[1] / len(x)) for t, s in sums.items()}


def dq_qparams(qdq_model, tensor: str) -> tuple | None:
    """(scale, zero_point, qmin, qmax) of the per-tensor DequantizeLinear producing ``tensor`` in the
    QDQ model (scale and zero point initializers), or None when ``tensor`` is not made by one."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    dq = next((n for n in qdq_model.graph.node if tensor in n.output), None)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zp = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else np.array(0, np.uint8)
    if scale.size != 1:
        return None
    info = np.iinfo(zp.dtype)
    return float(scale.reshape(())), float(zp.reshape(())), info.min, info.max


def _input_qparams(qdq_model, node) -> tuple | None:
    """:func:`dq_qparams` of ``node``'s data input: None when that input is float."""
    return dq_qparams(qdq_model, node.input[0])


def correct_biases(float_path: Path, qdq_path: Path, x: np.ndarray, input_name: str, out_float: Path,
                   batch: int = 8) -> dict:
    """Write ``out_float``: the float model ``float_path`` with every quantized Conv / Gemm bias
    corrected by its own mean output shift in ``qdq_path`` (quantized from ``float_path``: same
    node names) on the calibration images ``x`` (float32 (N, 3, S, S)). Returns a summary:
    layers corrected, mean / max |shift| (output units) and seconds."""
    onnx = require("onnx", "export")
    from onnx import numpy_helper

    t0 = time.perf_counter()
    fm, qm = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    finits = {i.name: i for i in fm.graph.initializer}
    fnodes = {n.name: n for n in fm.graph.node if n.name}
    qnodes = {n.name: n for n in qm.graph.node if n.name}
    wq = {u.tensor: p["value"] for u, p in find_units(fm, qm) if u.kind == "weight"}
    layers = []
    for name, fn in fnodes.items():
        if fn.op_type not in _WEIGHTED or name not in qnodes or len(fn.input) < 2 or fn.input[1] not in wq:
            continue
        if fn.op_type == "Gemm" and _attrs(fn).get("transA"):
            continue
        layers.append((name, fn, _input_qparams(qm, qnodes[name])))
    if not layers:
        onnx.save_model(fm, str(out_float))
        return {"layers": 0, "mean_abs_shift": 0.0, "max_abs_shift": 0.0, "seconds": time.perf_counter() - t0}
    stats = mean_inputs(fm, {fn.input[0]: qp for _, fn, qp in layers}, x, input_name, batch)
    shifts = []
    for name, fn, _ in layers:
        w = numpy_helper.to_array(finits[fn.input[1]]).astype(np.float32)
        mean, mean_q = stats[fn.input[0]]
        delta = _own_shift(fn, mean_q, wq[fn.input[1]].astype(np.float32)) - _own_shift(fn, mean, w)
        alpha = float(_attrs(fn).get("alpha", 1.0))
        beta = float(_attrs(fn).get("beta", 1.0)) if fn.op_type == "Gemm" else 1.0
        delta = delta * alpha / beta  # Gemm: y = alpha A B + beta C
        if len(fn.input) > 2 and fn.input[2]:
            b = numpy_helper.to_array(finits[fn.input[2]]).astype(np.float64)
            bname = fn.input[2]
            fm.graph.initializer.remove(finits[bname])
        else:
            b, bname = np.zeros(len(delta)), f"{name}_edgetransfer_bias"
            while len(fn.input) < 3:
                fn.input.append("")
            fn.input[2] = bname
        if b.shape != delta.shape:  # a broadcast bias (e.g. Gemm C of shape (1, N)): keep it, correct in full
            b = np.broadcast_to(b, delta.shape).copy()
        fm.graph.initializer.append(numpy_helper.from_array((b - delta).astype(np.float32), bname))
        finits[bname] = fm.graph.initializer[-1]
        shifts.append(np.abs(delta))
    onnx.save_model(fm, str(out_float))
    allabs = np.concatenate(shifts)
    return {"layers": len(layers), "mean_abs_shift": float(allabs.mean()), "max_abs_shift": float(allabs.max()),
            "seconds": time.perf_counter() - t0}

