"""Rung d of the INT8 ladder: AdaRound, learned rounding of the weights, layer by layer, on
calibration images.

Rounding every weight to its nearest grid point minimizes the error of each weight, not of the
layer's output: for a depthwise 3x3 kernel (9 weights per output channel) the errors of nearest
rounding do not cancel. AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020) chooses, per weight, floor or ceil so that the layer's OUTPUT on
calibration inputs stays close to the float layer's output. Recipe (the paper, section 4, with
the defaults of Qualcomm AIMET's ``AdaroundParameters``: regularization weight 0.01, beta
annealed 20 -> 2, warm start 20 % of the iterations; AIMET's 10 000 Adam steps at lr 1e-3 are
500 steps at lr 1e-2 here, the same distance for ``V`` in a twentieth of the time: on the tiny
depthwise net of the tests, 500 steps at 1e-3 flipped 1.4 % of the depthwise weights and cut its
reconstruction loss 14 %, at 1e-2 7 % and 16 %, measured 2026-12-02):

1. Per weight ``w`` with its scale ``s`` (per output channel, from the QDQ candidate's own
   DequantizeLinear: the grid is the one ORT chose) and zero point ``z``: ``q_soft = clamp(floor(w/s)
   + h(V) + z, qmin, qmax)``, ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, zeta 1.1,
   gamma -0.1 (the rectified sigmoid), ``V`` initialized so that ``h(V) = w/s - floor(w/s)``.
2. Loss on a minibatch of the calibration images: ``sum over channels, mean over the rest of
   (act(layer(x_q; s (q_soft - z)) + b) - act(layer_fp32(x) + b))^2 + 0.01 sum(1 - |2 h(V) - 1|^beta)``,
   with ``x_q`` the layer's input in the QDQ model (its DequantizeLinear output: the quantized
   input with every upstream error, the "asymmetric reconstruction" of the paper's section 5) and
   ``act`` the Relu/Clip that follows the layer when it is its only consumer (ORT fuses it).
3. Hard rounding ``q = floor(w/s) + [h(V) >= 0.5]``; the element of each channel that sets its
   range (max |w| for symmetric weights, min and max for asymmetric ones) keeps nearest rounding,
   so ORT's per-channel scale of the written weights is the same ``s``.
4. The weights go back into the FLOAT model as grid values ``s (q - z)``: ``quantize_static`` with
   the same ranges then stores exactly ``q`` (tested). The bias is untouched (the ladder's bias
   correction runs after this rung).

Layers are processed in topological order (each one's input is taken from the QDQ model with the
previous layers' new rounding patched in), the most sensitive first when ``layers`` is a ranked
subset, within a time budget: a layer not reached is left at nearest rounding and recorded.

Rungs a-d run on the ONNX graph (see :mod:`~edgetransfer.quantize.ladder`); this one uses torch
for the gradient, so it is skipped without the ``train`` extra.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import require
from .bias_correction import _attrs
from .qat import _wq_axis, exposed_outputs, one_torch_thread
from .sensitivity import find_units

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (paper, eq. 23)
REG, BETA, WARM = 0.01, (20.0, 2.0), 0.2  # AIMET AdaroundParameters defaults


def _activation_after(fm, node):
    """The Relu/Clip that is ``node``'s only consumer (min, max as floats) or None."""
    from onnx import numpy_helper

    cons = [n for n in fm.graph.node if node.output[0] in n.input]
    if len(cons) != 1 or cons[0].op_type not in ("Relu", "Clip"):
        return None
    c = cons[0]
    if c.op_type == "Relu":
        return c, 0.0, float("inf")
    inits = {i.name: i for i in fm.graph.initializer}
    a = _attrs(c)
    lo, hi = a.get("min", -float("inf")), a.get("max", float("inf"))
    if len(c.input) > 1 and c.input[1]:
        if c.input[1] not in inits:
            return None
        lo = float(numpy_helper.to_array(inits[c.input[1]]))
    if len(c.input) > 2 and c.input[2]:
        if c.input[2] not in inits:
            return None
        hi = float(numpy_helper.to_array(inits[c.input[2]]))
    return c, float(lo), float(hi)


def _layer_fn(node):
    """torch function (x, w, b) -> y for a Conv or Gemm ``node`` (Gemm: weight as stored)."""
    import torch.nn.functional as F

    a = _attrs(node)
    if node.op_type == "Conv":
        pads = list(a.get("pads", [0, 0, 0, 0]))
        stride, dil, group = tuple(a.get("strides", [1, 1])), tuple(a.get("dilations", [1, 1])), int(a.get("group", 1))

        def conv(x, w, b):
            p = pads
            if p[:2] != p[2:]:
                x, p = F.pad(x, (p[1], p[3], p[0], p[2])), [0, 0, 0, 0]
            return F.conv2d(x, w, b, stride, tuple(p[:2]), dil, group)
        return conv
    alpha, beta, trans_b = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)), bool(a.get("transB", 0))

    def gemm(x, w, b):
        y = alpha * x.reshape(len(x), -1) @ (w.T if trans_b else w)
        return y if b is None else y + beta * b
    return gemm


def _range_setters(w: np.ndarray, axis: int, symmetric: bool) -> np.ndarray:
    """bool mask of the elements that set each channel's quantization range along ``axis``."""
    wm = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    mask = np.zeros_like(wm, dtype=bool)
    rows = np.arange(len(wm))
    if symmetric:
        mask[rows, np.abs(wm).argmax(1)] = True
    else:
        mask[rows, wm.argmax(1)] = True
        mask[rows, wm.argmin(1)] = True
    return np.moveaxis(mask.reshape(np.moveaxis(w, axis, 0).shape), 0, axis)


def adaround_layer(fn, x_q: np.ndarray, target: np.ndarray, w: np.ndarray, b: np.ndarray | None, scale: np.ndarray,
                   zp: np.ndarray, axis: int, qmin: int, qmax: int, act: tuple[float, float] | None, *,
                   iters: int = 500, batch: int = 8, lr: float = 1e-2, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Learn the rounding of one layer. ``x_q`` float32 (N, ...): the layer's quantized input;
    ``target`` float32 (N, ...): the float layer's output (after ``act``); ``w`` float32 weight as
    stored, ``scale``/``zp`` its per-channel (or per-tensor, size 1) quantization along ``axis``.
    Returns (integer weights q, int64 of ``w``'s shape, summary with the reconstruction loss of
    nearest rounding and of the learned rounding on all N images, and the share of weights rounded
    the other way than nearest)."""
    torch = require("torch", "train", "AdaRound")

    shape = [1] * w.ndim
    shape[axis] = -1
    s = np.asarray(scale, np.float32).reshape(shape if np.size(scale) > 1 else [1] * w.ndim)
    z = np.asarray(zp, np.float32).reshape(s.shape)
    symmetric = bool(np.all(z == 0)) and qmin < 0
    lo, hi = (-qmax if symmetric else qmin), qmax
    ws = w.astype(np.float64) / s
    w_floor = np.floor(ws)
    rest = np.clip(ws - w_floor, 1e-4, 1 - 1e-4)
    nearest = np.clip(np.rint(ws) + z, lo, hi)
    fixed = _range_setters(w, axis, symmetric) if np.size(scale) > 1 else (
        np.abs(w) == np.abs(w).max() if symmetric else (w == w.max()) | (w == w.min()))
    with one_torch_thread():
        return _learn(torch, fn, x_q, target, w, b, s, z, lo, hi, w_floor, rest, nearest, fixed, act, iters, batch, lr, seed)


def _learn(torch, fn, x_q, target, w, b, s, z, lo, hi, w_floor, rest, nearest, fixed, act, iters, batch, lr, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    tf = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    v = tf(-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    wf, st, zt, nt, fx = tf(w_floor), tf(s), tf(z), tf(nearest), torch.from_numpy(fixed)
    bt = None if b is None else tf(b)
    xq, tg = tf(x_q), tf(target)

    def h():
        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def weight(hv):
        q = torch.where(fx, nt, torch.clamp(wf + hv + zt, lo, hi))
        return st * (q - zt)

    def recon(wt, idx=None):
        xi, ti = (xq, tg) if idx is None else (xq[idx], tg[idx])
        y = fn(xi, wt, bt)
        if act is not None:
            y = torch.clamp(y, act[0], act[1])
        d = (y - ti.reshape(y.shape)) ** 2
        return d.sum(1).mean() if d.dim() > 1 else d.mean()

    with torch.no_grad():
        loss_nearest = float(sum(recon(st * (nt - zt), torch.arange(i, min(i + 32, len(xq)))) * min(32, len(xq) - i)
                                 for i in range(0, len(xq), 32)) / len(xq))
    opt = torch.optim.Adam([v], lr=lr)
    warm = int(WARM * iters)
    for it in range(iters):
        idx = torch.randperm(len(xq), generator=g)[:batch]
        hv = h()
        loss = recon(weight(hv), idx)
        if it >= warm:
            beta = BETA[1] + 0.5 * (BETA[0] - BETA[1]) * (1 + np.cos(np.pi * (it - warm) / max(iters - warm, 1)))
            loss = loss + REG * (1 - (2 * hv - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        hard = (h() >= 0.5).to(torch.float32)
        q = torch.where(fx, nt, torch.clamp(wf + hard + zt, lo, hi))
        loss_learned = float(sum(recon(st * (q - zt), torch.arange(i, min(i + 32, len(xq)))) * min(32, len(xq) - i)
                                 for i in range(0, len(xq), 32)) / len(xq))
        q_np = q.numpy().astype(np.int64)
    flipped = float((q_np != nearest).mean())
    return q_np, {"recon_nearest": loss_nearest, "recon_adaround": loss_learned, "flipped_share": flipped}


def adaround(float_path: Path, qdq_path: Path, calib_x: np.ndarray, input_name: str, out_float: Path, *,
             layers: Sequence[str] | None = None, iters: int = 500, batch: int = 8, lr: float = 1e-2,
             max_seconds: float = 600.0, seed: int = 0, weight_range: tuple[int, int] | None = None) -> dict:
    """Write ``out_float``: ``float_path`` with the weights of its quantized Conv/Gemm nodes (all, or
    the node names ``layers``) rounded by AdaRound against the QDQ model ``qdq_path`` (quantized
    from ``float_path``; its scales and zero points are kept) on ``calib_x`` float32 (N, 3, S, S)
    TRAINING images. Stops starting new layers after ``max_seconds``. Returns a summary: per layer
    the reconstruction loss with nearest and with learned rounding, share of weights flipped and
    seconds; layers not reached; total seconds. ``weight_range``: (qmin, qmax) the weights of
    ``qdq_path`` may store (:func:`~.ort_qdq.weight_qrange`: (-64, 64) for 7-bit ``reduce_range``
    weights, so rounding stays there); None: the stored dtype's range. Raises :class:`~edgetransfer.errors.MissingExtraError`
    without torch."""
    onnx = require("onnx", "export")
    require("torch", "train", "AdaRound")
    from onnx import numpy_helper

    t0 = time.perf_counter()
    fm, qm = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    fnodes = {n.name: n for n in fm.graph.node if n.name}
    finits = {i.name: i for i in fm.graph.initializer}
    qinits = {i.name: i for i in qm.graph.initializer}
    qnodes = {n.name: n for n in qm.graph.node if n.name}
    weights = {u.tensor: p for u, p in find_units(fm, qm) if u.kind == "weight"}
    order = [n.name for n in fm.graph.node if n.op_type in ("Conv", "Gemm") and n.name in qnodes and len(n.input) > 1
             and n.input[1] in weights and n.input[1] in finits
             and not (n.op_type == "Gemm" and _attrs(n).get("transA"))]
    todo = [n for n in order if layers is None or n in set(layers)]
    done, skipped = [], []
    for name in todo:
        if time.perf_counter() - t0 > max_seconds:
            skipped.append(name)
            continue
        s0 = time.perf_counter()
        fn_node, qn = fnodes[name], qnodes[name]
        p = weights[fn_node.input[1]]
        w = numpy_helper.to_array(finits[fn_node.input[1]]).astype(np.float32)
        b = numpy_helper.to_array(finits[fn_node.input[2]]).astype(np.float32) if len(fn_node.input) > 2 and \
            fn_node.input[2] in finits else None
        act = _activation_after(fm, fn_node)
        tgt_name = act[0].output[0] if act else fn_node.output[0]
        (target,) = exposed_outputs(float_path, [tgt_name], calib_x, input_name)
        (x_q,) = exposed_outputs_model(qm, [qn.input[0]], calib_x, input_name)
        qlo, qhi = (int(p["qmin"]), int(p["qmax"])) if weight_range is None else weight_range
        q, rec = adaround_layer(_layer_fn(fn_node), x_q, target, w, b, p["scale"], p["zero_point"],
                                p["axis"] if np.size(p["scale"]) > 1 else _wq_axis(fn_node), qlo, qhi,
                                (act[1], act[2]) if act else None, iters=iters, batch=batch, lr=lr, seed=seed)
        s = np.asarray(p["scale"], np.float32)
        zz = np.asarray(p["zero_point"]).astype(np.float32)
        shape = [1] * w.ndim
        shape[p["axis"] % w.ndim if np.size(s) > 1 else 0] = -1
        s, zz = (s.reshape(shape), zz.reshape(shape)) if np.size(s) > 1 else (s.reshape(()), zz.reshape(()))
        grid = (s * (q.astype(np.float32) - zz)).astype(np.float32)
        fm.graph.initializer.remove(finits[fn_node.input[1]])
        fm.graph.initializer.append(numpy_helper.from_array(grid, fn_node.input[1]))
        finits[fn_node.input[1]] = fm.graph.initializer[-1]
        stored = p["stored"]  # patch the QDQ model too: the next layer's input sees this rounding
        old = qinits[stored]
        arr = numpy_helper.to_array(old)
        new = q.astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else grid.astype(arr.dtype)
        qm.graph.initializer.remove(old)
        qm.graph.initializer.append(numpy_helper.from_array(new.reshape(arr.shape), stored))
        qinits[stored] = qm.graph.initializer[-1]
        done.append({"node": name, "images": int(len(calib_x)), "iters": iters,
                     **rec, "seconds": time.perf_counter() - s0})
    onnx.save_model(fm, str(out_float))
    gain = [d["recon_adaround"] / d["recon_nearest"] for d in done if d["recon_nearest"] > 0]
    return {"layers": done, "layers_not_reached": skipped, "iters": iters, "batch": batch, "lr": lr,
            "max_seconds": max_seconds, "median_recon_ratio": float(np.median(gain)) if gain else None,
            "seconds": time.perf_counter() - t0}


def exposed_outputs_model(model, tensors: list[str], x: np.ndarray, input_name: str, batch: int = 32) -> list[np.ndarray]:
    """:func:`~edgetransfer.quantize.qat.exposed_outputs` for an in-memory ONNX model."""
    import tempfile

    onnx = require("onnx", "export")
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "m.onnx"
        onnx.save_model(model, str(path))
        return exposed_outputs(path, tensors, x, input_name, batch)
