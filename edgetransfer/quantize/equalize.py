"""Cross-layer equalization (CLE) with high-bias absorption on the BN-folded float ONNX graph
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV
2019, sections 4.1 and 4.3; Qualcomm AIMET's ``equalize_model``).

For two convolutions in a row, ``conv1 -> [Relu] -> conv2`` with nothing else reading conv1's
output, output channel i of conv1 can be divided by s_i > 0 and input channel i of conv2
multiplied by s_i without changing the function (Relu is positively homogeneous). With
``s_i = sqrt(r1_i / r2_i)`` (r = max |w| of the channel's weights) both channels end with the
range ``sqrt(r1_i r2_i)``: a depthwise conv whose channels span 1000x ranges gets per-tensor INT8
weights that no longer round its small channels to zero. Pairs are equalized in graph order,
``iterations`` sweeps (chains pointwise -> depthwise -> pointwise converge in a few).

Scope, stated: pairs joined by Relu or by nothing. Clip (ReLU6) is not scale-equivariant (its
bound would have to become 6 s_i per channel, which ONNX's scalar Clip cannot hold), so such
pairs are left alone and counted. CLE matters for per-tensor weights; with per-channel weights it
can only move range from activations into weights, and the ladder keeps it only when it measures
better.

High-bias absorption (after CLE, Relu pairs into a 1x1 conv2 without padding): ``c_i = max(0,
min over the calibration images of conv1's output channel i)``; ``b1_i -= c_i`` and ``b2 +=
W2[:, i] c_i``. Since conv1's output never went below ``c_i`` on those images,
``relu(y - c) + c == relu(y)`` there: the function is unchanged on calibration data, and the
activation range shrinks by ``c``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import require


def _attr(node, name, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def find_pairs(model) -> tuple[list[tuple], int]:
    """``([(conv1, act or None, conv2)], clip_pairs_skipped)``: the equalizable Conv pairs of ``model``
    (conv1's output read only by the activation / conv2; weights and biases are initializers)."""
    inits = {i.name for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    pairs, skipped = [], 0

    def only(t):
        c = consumers.get(t, [])
        return c[0] if len(c) == 1 and t not in outputs else None

    for c1 in model.graph.node:
        if c1.op_type != "Conv" or len(c1.input) < 2 or c1.input[1] not in inits:
            continue
        nxt = only(c1.output[0])
        act = None
        if nxt is not None and nxt.op_type in ("Relu", "Clip"):
            if nxt.op_type == "Clip":
                after = only(nxt.output[0])
                skipped += int(after is not None and after.op_type == "Conv")
                continue
            act, nxt = nxt, only(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or nxt.input[0] != (act or c1).output[0] or nxt.input[1] not in inits:
            continue
        if any(i and i not in inits for i in list(c1.input[1:]) + list(nxt.input[1:])):
            continue
        pairs.append((c1, act, nxt))
    return pairs, skipped


def _in_channel_ranges(w2: np.ndarray, group: int, c: int) -> np.ndarray:
    """max |w| over conv2's weights reading each of its ``c`` input channels (grouped convs: the
    input channel i of group g sits at w2[g * out_per_group: ..., i - g * in_per_group])."""
    cin_g = w2.shape[1]
    out_g = w2.shape[0] // group
    r = np.zeros(c)
    for i in range(c):
        g, j = divmod(i, cin_g)
        r[i] = np.abs(w2[g * out_g: (g + 1) * out_g, j]).max()
    return r


def _scale_in_channels(w2: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    cin_g = w2.shape[1]
    out_g = w2.shape[0] // group
    w2 = w2.copy()
    for i in range(len(s)):
        g, j = divmod(i, cin_g)
        w2[g * out_g: (g + 1) * out_g, j] *= s[i]
    return w2


def equalize(float_path: Path, out: Path, iterations: int = 4, channel_min: dict[str, np.ndarray] | None = None) -> dict:
    """Write ``out``: ``float_path`` with every pair of :func:`find_pairs` equalized, then high
    biases absorbed where ``channel_min`` ({conv1 output tensor: per-channel min over calibration
    images, (C,)}) is given. Returns a summary: pairs, clip pairs skipped, the mean ratio of the
    largest to the smallest per-channel weight range before / after over the pairs' conv1 weights,
    absorbed pairs and seconds."""
    onnx = require("onnx", "export")
    from onnx import numpy_helper

    t0 = time.perf_counter()
    m = onnx.load(str(float_path))
    inits = {i.name: i for i in m.graph.initializer}
    arr = {k: numpy_helper.to_array(v).astype(np.float64) for k, v in inits.items()}
    pairs, skipped = find_pairs(m)

    def spread(w):
        r = np.abs(w.reshape(w.shape[0], -1)).max(1)
        return float(r.max() / max(r.min(), 1e-12))

    before = [spread(arr[c1.input[1]]) for c1, _, _ in pairs]
    for _ in range(iterations):
        for c1, _, c2 in pairs:
            w1, w2 = arr[c1.input[1]], arr[c2.input[1]]
            r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(1)
            r2 = _in_channel_ranges(w2, int(_attr(c2, "group", 1)), w1.shape[0])
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)
            arr[c1.input[1]] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
            if len(c1.input) > 2 and c1.input[2]:
                arr[c1.input[2]] = arr[c1.input[2]] / s
            arr[c2.input[1]] = _scale_in_channels(w2, int(_attr(c2, "group", 1)), s)
    absorbed = 0
    for c1, act, c2 in pairs:
        if act is None or act.op_type != "Relu" or channel_min is None or c1.output[0] not in channel_min:
            continue
        w2 = arr[c2.input[1]]
        if w2.shape[2:] != (1, 1) or int(_attr(c2, "group", 1)) != 1 or any(_attr(c2, "pads", [0]) or [0]) \
                or len(c1.input) < 3 or not c1.input[2] or len(c2.input) < 3 or not c2.input[2]:
            continue
        c = np.maximum(channel_min[c1.output[0]], 0.0)
        if not c.any():
            continue
        arr[c1.input[2]] = arr[c1.input[2]] - c
        arr[c2.input[2]] = arr[c2.input[2]] + w2[:, :, 0, 0] @ c
        absorbed += 1
    for k, v in arr.items():
        inits[k].CopyFrom(numpy_helper.from_array(v.astype(numpy_helper.to_array(inits[k]).dtype), k))
    onnx.save_model(m, str(out))
    after = [spread(arr[c1.input[1]]) for c1, _, _ in pairs]
    return {"pairs": len(pairs), "clip_pairs_skipped": skipped, "high_bias_absorbed": absorbed,
            "conv1_range_spread_before": float(np.mean(before)) if before else None,
            "conv1_range_spread_after": float(np.mean(after)) if after else None, "seconds": time.perf_counter() - t0}


def channel_min(float_path: Path, x: np.ndarray, input_name: str, batch: int = 8) -> dict[str, np.ndarray]:
    """Per-channel minimum over the images ``x`` (float32 (N, 3, S, S)) of the output of every
    conv1 of a Relu pair of :func:`find_pairs` (the pre-activation): {tensor: float64 (C,)}, the
    ``channel_min`` that :func:`equalize` absorbs high biases from."""
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    m = onnx.load(str(float_path))
    names = [c1.output[0] for c1, act, _ in find_pairs(m)[0] if act is not None and act.op_type == "Relu"]
    if not names:
        return {}
    for t in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    mins: dict[str, np.ndarray] = {}
    for i in range(0, len(x), batch):
        for t, v in zip(names, sess.run(names, {input_name: np.ascontiguousarray(x[i: i + batch])})):
            v = np.asarray(v, np.float64).min(axis=(0, 2, 3))
            mins[t] = np.minimum(mins[t], v) if t in mins else v
    return mins
