"""Empirical bias correction on a PyTorch model, for the INT8 files that mobile quantizers make
from it (ExecuTorch PT2E, LiteRT ai-edge-quantizer).

The same recipe as the ONNX ladder's rung c (:mod:`~edgetransfer.quantize.bias_correction`; Nagel
et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019,
section 4.2; Finkelstein et al., "Fighting Quantization Bias With Bias", 2019), measured on the
``torch.export`` graph of the model instead of an ONNX graph, because the mobile converters start
from the PyTorch model:

1. Every ``aten.conv2d`` / ``aten.linear`` node, with the ``aten.batch_norm`` that follows it
   folded in numerically (``W * gamma / sqrt(var + eps)``: what PT2E's ``prepare_pt2e`` and
   LiteRT's converter fold before quantizing).
2. The mobile int8 scheme both quantizers use (ExecuTorch's ``XNNPACKQuantizer`` with
   ``get_symmetric_quantization_config(is_per_channel=True)``, ai-edge-quantizer's
   ``static_wi8_ai8``): weights int8 symmetric per output channel, ``scale = max|W_c| / 127``
   in [-127, 127]; the layer's input int8 affine per tensor over [min, max] of the calibration
   images (0 included), ``scale = (max - min) / 255``.
3. One pass of the calibration images for the input ranges, one for the per-position mean of
   each layer's input ``M`` and of its fake-quantized value ``M_q``. The layer's own shift is
   ``delta = mean over output positions of (layer(M_q, W_q) - layer(M, W))`` per output channel
   (exact: the layer is linear, padding included). Each layer corrects only its own shift.
4. ``bias -= delta`` on the model's parameters (the BatchNorm's ``beta`` when one follows, a new
   zero bias where a Conv/Linear has none). The quantizer then calibrates the corrected model as
   usual.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import require

_CONV = "aten.conv2d.default"
_LINEAR = "aten.linear.default"
_BN = "aten.batch_norm.default"
W_QMAX = 127  # symmetric int8 weights in [-127, 127] (XNNPACK, TFLite per-channel)
A_QMIN, A_QMAX = -128, 127  # affine int8 activations


def _arg(node, i: int, default=None):
    return node.args[i] if len(node.args) > i else default


def _param(gm, node):
    """The tensor a ``get_attr`` node names (None for a None argument)."""
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise ValueError(f"{node} is not a parameter of the module")
    return gm.get_parameter(node.target) if node.target in dict(gm.named_parameters()) else gm.get_buffer(node.target)


def _layers(gm) -> list[dict[str, Any]]:
    """The weighted nodes of ``gm`` with their folded float weights and the parameter to correct."""
    torch = require("torch", "train")
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or str(n.target) not in (_CONV, _LINEAR):
            continue
        w_node, b_node = n.args[1], _arg(n, 2)
        if getattr(w_node, "op", None) != "get_attr" or (b_node is not None and getattr(b_node, "op", None) != "get_attr"):
            continue
        w = _param(gm, w_node).detach().double()
        b = _param(gm, b_node)
        bias = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.detach().double()
        target = None if b_node is None else b_node.target
        users = list(n.users)
        if len(users) == 1 and str(users[0].target) == _BN and users[0].args[0] is n:
            bn = users[0]
            gamma, beta, mean, var = (_param(gm, a) for a in bn.args[1:5])
            if beta is None or _arg(bn, 5):  # no affine shift to correct, or a training-mode BN
                continue
            eps = float(_arg(bn, 7, 1e-5))
            g = (gamma.detach().double() if gamma is not None else torch.ones_like(mean, dtype=torch.float64)) / torch.sqrt(var.double() + eps)
            w = w * g.reshape(-1, *([1] * (w.dim() - 1)))
            bias = (bias - mean.double()) * g + beta.detach().double()
            target = bn.args[2].target
        out.append({"node": n.name, "kind": "conv" if str(n.target) == _CONV else "linear", "w": w, "bias": bias,
                    "target": target, "weight_target": w_node.target,
                    "conv_args": tuple(_arg(n, i, d) for i, d in ((3, 1), (4, 0), (5, 1), (6, 1)))})
    return out


def _weight_fake_quant(w):
    """Symmetric per-output-channel int8 fake quantization, ``scale = max|W_c| / 127``."""
    torch = require("torch", "train")
    amax = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
    s = (amax / W_QMAX).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / s), -W_QMAX, W_QMAX) * s


def _act_qparams(lo: float, hi: float) -> tuple[float, float]:
    """(scale, zero_point) of affine int8 over [lo, hi] with 0 inside (PT2E MinMaxObserver's rule)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (A_QMAX - A_QMIN), 2 ** -12)
    zp = float(np.clip(A_QMIN - round(lo / scale), A_QMIN, A_QMAX))
    return scale, zp


def _mean_response(layer: dict[str, Any], inp, w):
    """Mean over output positions of ``layer`` (no bias) applied to the mean input ``inp`` with
    weights ``w``: float64 (C_out,)."""
    import torch.nn.functional as F

    if layer["kind"] == "conv":
        stride, padding, dilation, groups = layer["conv_args"]
        return F.conv2d(inp[None], w, None, stride, padding, dilation, groups).mean(dim=(0, 2, 3))
    return F.linear(inp.reshape(1, -1), w).reshape(-1, w.shape[0]).mean(0)


def _record_inputs(gm, names: set[str], x: np.ndarray, batch: int, fn) -> None:
    """Run ``gm`` on ``x`` in batches; call ``fn(node_name, input_tensor)`` for every node of ``names``."""
    torch = require("torch", "train")

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            if n.name in names:
                fn(n.name, self.env[n.args[0]])
            return super().run_node(n)

    rec = Recorder(gm)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            rec.run(torch.from_numpy(np.ascontiguousarray(x[i: i + batch])))


def correct_biases_torch(model, x: np.ndarray, batch: int = 16) -> dict[str, Any]:
    """Correct, in place, the biases of ``model`` (an ``nn.Module`` in eval mode, input float32
    (N, 3, S, S)) for the mobile int8 scheme (module docstring), measured on the calibration images
    ``x`` (float32 (K, 3, S, S), K >= 1). Returns a summary: layers corrected, mean / max |shift|
    (logit / activation units) and seconds. Raises ValueError for an empty ``x``."""
    torch = require("torch", "train")
    if len(x) == 0:
        raise ValueError("bias correction needs at least one calibration image")
    t0 = time.perf_counter()
    example = torch.from_numpy(np.ascontiguousarray(np.repeat(x[:1], 2, axis=0)))
    gm = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
    layers = _layers(gm)
    names = {ly["node"] for ly in layers}
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def ranges(name, v):
        lo[name] = min(lo.get(name, 0.0), float(v.min()))
        hi[name] = max(hi.get(name, 0.0), float(v.max()))

    _record_inputs(gm, names, x, batch, ranges)
    qp = {k: _act_qparams(lo[k], hi[k]) for k in names}
    sums: dict[str, list] = {}

    def means(name, v):
        s, z = qp[name]
        fq = (torch.clamp(torch.round(v / s) + z, A_QMIN, A_QMAX) - z) * s
        add = [v.double().sum(0), fq.double().sum(0)]
        sums[name] = [a + b for a, b in zip(sums[name], add)] if name in sums else add

    _record_inputs(gm, names, x, batch, means)
    shifts = []
    params = dict(model.named_parameters())
    for ly in layers:
        m, mq = (s / len(x) for s in sums[ly["node"]])
        wq = _weight_fake_quant(ly["w"])
        delta = _mean_response(ly, mq, wq) - _mean_response(ly, m, ly["w"])
        target = ly["target"]
        if target is None:  # a Conv/Linear without bias: give it one
            mod = model.get_submodule(ly["weight_target"].rsplit(".", 1)[0])
            mod.bias = torch.nn.Parameter(torch.zeros(delta.shape[0], dtype=mod.weight.dtype))
            target = ly["weight_target"].rsplit(".", 1)[0] + ".bias"
            params[target] = mod.bias
        p = params[target]
        with torch.no_grad():
            p.sub_(delta.to(p.dtype).reshape(p.shape))
        shifts.append(delta.abs().numpy())
    allabs = np.concatenate(shifts) if shifts else np.zeros(1)
    return {"layers": len(layers), "mean_abs_shift": float(allabs.mean()), "max_abs_shift": float(allabs.max()),
            "images": len(x), "seconds": time.perf_counter() - t0}
