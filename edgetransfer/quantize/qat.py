"""Rung f of the INT8 ladder: quantization-aware fine-tuning (QAT) of the classifier head on the
INT8 model's own features.

Why the head, and why on the INT8 features: the quantization error of a CNN is spread over its
early layers (EfficientNet-Lite0 on digits, measured 2026-12-02 by
:mod:`~edgetransfer.quantize.sensitivity`: the first depthwise conv's weights 42 % of the logit
error, the stem's 16 %, the stem's activation 15 %), and the trainer froze those layers anyway.
The head is the one layer that can learn to read the features the INT8 backbone actually
produces. Running the QDQ candidate once on the calibration images with the head's input exposed
(the DequantizeLinear output feeding the final Gemm: exactly what the quantized head sees) gives a
feature cache, so the frozen quantized part costs one forward pass and every training step is a
(N, K) x (K, C) product.

Recipe (Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-
Arithmetic-Only Inference", CVPR 2018: fake quantization in the forward pass, straight-through
gradients; Hinton et al. 2015 distillation loss):

1. ``F`` float32 (N, K): head inputs of the QDQ candidate on the N calibration images of the
   TRAINING split; ``T`` float32 (N, C): the fp32 model's logits on the same images.
2. Train ``W`` (C, K) and ``b`` (C,) from the float head with Adam (``lr``, ``steps``) on
   ``KL(softmax(T) || softmax(F fq(W)^T + b)) + l2 * ||W - W0||^2`` (the L2 pull keeps a fit on
   128 images close to the trained head). ``fq``: symmetric per-output-channel INT8 fake
   quantization, scale = max|w| / 127 per channel, the integer range [-127, 127] — the rule of
   ``onnxruntime.quantization`` for symmetric int8 weights (``quant_utils.compute_scale_zp`` with
   ``symmetric=True``: ``scale = max(|rmin|, |rmax|) / 127``, qmin -127 in the restricted range).
3. The trained weights go back into the FLOAT model as grid values ``W' = s * q`` (so
   ``quantize_static`` re-quantizes them to exactly ``q`` with the same scale: the per-channel
   max of ``W'`` is ``127 s``), the bias as float (ORT quantizes it to int32 like any bias).
4. Parity: the head of the re-quantized QDQ file under ONNX Runtime vs the fake-quantized torch
   head on the cached features: max |logit difference| relative to the mean |logit| must stay
   within :data:`PARITY_TOL` (the output Q/DQ pair of the Gemm and the int32 bias rounding are the
   only differences); a head failing it is recorded and not chosen.

Only the Gemm head (transA 0) is tuned; a model without one (or with a MatMul head) is skipped
with the reason. Test and validation images never reach this rung: it trains on ``calib_x``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from ..errors import require

# max |ORT - torch| / mean |torch logit| of the QDQ head vs its fake-quantized torch twin. The two differ by the
# Gemm output's own Q/DQ pair (uint8 over the calibrated logit range: up to half a step, a step being ~1/255 of
# a range of several mean |logit|), the int32 bias rounding and the features' batch order; measured 2.9 % on the
# tiny test model (16 images), see the rung record for EfficientNet-Lite0
PARITY_TOL = 0.05


def head_gemm(float_model):
    """The last Gemm of ``float_model`` whose weight and bias are initializers, or None."""
    inits = {i.name for i in float_model.graph.initializer}
    for n in reversed(float_model.graph.node):
        if n.op_type == "Gemm" and len(n.input) >= 3 and n.input[1] in inits and n.input[2] in inits:
            attrs = {a.name: a.i for a in n.attribute if a.type == a.INT}
            if not attrs.get("transA"):
                return n
    return None


def exposed_outputs(qdq_path: Path, tensors: list[str], x: np.ndarray, input_name: str, batch: int = 32) -> list[np.ndarray]:
    """Run the QDQ model with ``tensors`` exposed as outputs on ``x`` float32 (N, 3, S, S):
    float32 arrays, one per tensor, concatenated over the batches."""
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    from onnx import helper

    m = onnx.load(str(qdq_path))
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs: list[list[np.ndarray]] = [[] for _ in tensors]
    for i in range(0, len(x), batch):
        for k, v in enumerate(s.run(tensors, {input_name: np.ascontiguousarray(x[i: i + batch])})):
            outs[k].append(np.asarray(v, np.float32))
    return [np.concatenate(o) for o in outs]


def _fake_quant_rows(w):
    import torch

    scale = (w.detach().abs().amax(1) / 127).clamp_min(1e-12)
    return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[0], dtype=torch.int32), 0, -127, 127)


def qat_head(float_path: Path, qdq_path: Path, calib_x: np.ndarray, fp32_logits: np.ndarray, input_name: str,
             out_float: Path, *, steps: int = 300, lr: float = 1e-3, l2: float = 1e-2, seed: int = 0) -> dict:
    """Write ``out_float``: ``float_path`` with its Gemm head replaced by one trained with fake
    quantization on the features ``qdq_path`` (quantized from ``float_path``) computes for
    ``calib_x`` (float32 (N, 3, S, S), training images), distilled from ``fp32_logits`` float32
    (N, C) of the fp32 model on the same images. Returns a summary (``skipped`` with the reason
    when there is no Gemm head; else loss before/after, steps, lr, images, seconds, and the
    features/logits needed by :func:`head_parity`)."""
    onnx = require("onnx", "export")
    torch = require("torch", "train", "QAT")
    from onnx import numpy_helper

    t0 = time.perf_counter()
    fm = onnx.load(str(float_path))
    gemm = head_gemm(fm)
    if gemm is None:
        return {"skipped": "no Gemm classifier head with initializer weights (only that head is fine-tuned)"}
    qm = onnx.load(str(qdq_path), load_external_data=False)
    qnode = next((n for n in qm.graph.node if n.name == gemm.name), None)
    if qnode is None:
        return {"skipped": f"head {gemm.name!r} not found in the QDQ candidate"}
    feat_name = qnode.input[0]
    (feats,) = exposed_outputs(qdq_path, [feat_name], calib_x, input_name)
    feats = feats.reshape(len(feats), -1)
    inits = {i.name: i for i in fm.graph.initializer}
    attrs = {a.name: (a.i if a.type == a.INT else a.f) for a in gemm.attribute}
    w0 = numpy_helper.to_array(inits[gemm.input[1]]).astype(np.float32)
    w0 = w0 if attrs.get("transB") else w0.T  # (C, K)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    b0 = np.broadcast_to(numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float32).reshape(-1), (w0.shape[0],)).copy()
    torch.manual_seed(seed)
    f = torch.from_numpy(feats)
    p = torch.softmax(torch.from_numpy(np.asarray(fp32_logits, np.float32)), 1)
    w0t = torch.from_numpy(w0)
    w, b = w0t.clone().requires_grad_(True), torch.from_numpy(b0 * beta).requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)

    def loss_fn():
        z = alpha * f @ _fake_quant_rows(w).T + b
        return torch.nn.functional.kl_div(torch.log_softmax(z, 1), p, reduction="batchmean"), z

    with torch.no_grad():
        kl0 = float(loss_fn()[0])
    for _ in range(steps):
        opt.zero_grad()
        kl, _ = loss_fn()
        (kl + l2 * ((w - w0t) ** 2).sum()).backward()
        opt.step()
    with torch.no_grad():
        kl1, z = loss_fn()
        wq = _fake_quant_rows(w).numpy()
    fm.graph.initializer.remove(inits[gemm.input[1]])
    fm.graph.initializer.append(numpy_helper.from_array((wq if attrs.get("transB") else wq.T).astype(np.float32), gemm.input[1]))
    fm.graph.initializer.remove(inits[gemm.input[2]])
    fm.graph.initializer.append(numpy_helper.from_array((b.detach().numpy() / beta).astype(np.float32), gemm.input[2]))
    onnx.save_model(fm, str(out_float))
    return {"head": gemm.name, "features": feat_name, "images": int(len(feats)), "steps": steps, "lr": lr, "l2": l2,
            "kl_before": kl0, "kl_after": float(kl1), "seconds": time.perf_counter() - t0,
            "_feats": feats, "_torch_logits": z.numpy().astype(np.float32)}


def head_parity(qdq_path: Path, summary: dict, calib_x: np.ndarray, input_name: str) -> dict:
    """Logits of the re-quantized QDQ file ``qdq_path`` on ``calib_x`` vs the fake-quantized torch
    head's on the same cached features (both float32 (N, C)): ``max_abs_diff``, ``rel_diff``
    (max |diff| / mean |torch logit|), ``agreement``, ``tolerance`` and ``passed``.
    The QDQ file's head sees the same features only when the layers before it are unchanged,
    which holds: this rung changes only the head's initializers."""
    onnx = require("onnx", "export")
    m = onnx.load(str(qdq_path), load_external_data=False)
    out_name = m.graph.output[0].name
    (logits,) = exposed_outputs(qdq_path, [out_name], calib_x, input_name)
    ref = summary["_torch_logits"]
    diff = float(np.abs(logits - ref).max())
    rel = diff / max(float(np.abs(ref).mean()), 1e-12)
    return {"max_abs_diff": diff, "rel_diff": rel, "agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
            "tolerance": PARITY_TOL, "passed": bool(rel <= PARITY_TOL), "vs": "fake-quantized torch head on cached features"}


def strip_private(summary: dict) -> dict:
    return {k: v for k, v in copy.copy(summary).items() if not k.startswith("_")}
