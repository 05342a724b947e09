"""Rung f of the INT8 ladder: quantization-aware fine-tuning (QAT) of the network's tail
(:func:`qat_tail`, the ladder's default: the last 2 weighted nodes) or of the classifier head
alone (:func:`qat_head`) on the INT8 model's own features.

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
   ``symmetric=True``: ``scale = max(|rmin|, |rmax|) / 127``, qmin -127 in the restricted range);
   with 7-bit ``reduce_range`` weights (x86 without VNNI: :func:`~.ort_qdq.weights_reduced`)
   ``weight_qmax`` 64 and [-64, 64], ORT's ``ONNX_INT_TYPE_REDUCED_RANGE``.
3. The trained weights go back into the FLOAT model as grid values ``W' = s * q`` (so
   ``quantize_static`` re-quantizes them to exactly ``q`` with the same scale: the per-channel
   max of ``W'`` is ``127 s``, or ``64 s``), the bias as float (ORT quantizes it to int32 like any bias).
4. Parity: the head of the re-quantized QDQ file under ONNX Runtime vs the fake-quantized torch
   head on the cached features: max |logit difference| relative to the mean |logit| must stay
   within :data:`PARITY_TOL` (the output Q/DQ pair of the Gemm and the int32 bias rounding are the
   only differences); a head failing it is recorded and not chosen.

Only the Gemm head (transA 0) is tuned; a model without one (or with a MatMul head) is skipped
with the reason. Test and validation images never reach this rung: it trains on ``calib_x``.

:func:`qat_tail` (what the ladder runs, ``LadderConfig.qat_nodes``, default 2 = EfficientNet-Lite0's
1x1 conv_head + the classifier Gemm) generalizes the head to the TAIL after a cut tensor: the input
of the last K weighted nodes in the pre-processed fp32 graph, when every tail op maps to torch
(:data:`TAIL_OPS`). The cut tensor's DequantizeLinear output in the QDQ candidate is the feature
cache (one forward pass of the frozen quantized part); the tail runs in torch with per-channel
fake-quantized weights (the rule above, along ORT's channel axis) and per-tensor fake-quantized
activations at the candidate's own fixed (calibrated) scales and zero points, wherever the QDQ
model quantizes a tail tensor. Why fixed scales: the re-quantization reuses the candidate's ranges
file, so the trained tail sees at inference exactly the grid it was trained on. Adam with a
cosine-decayed lr (1e-4: Adam's steps are ~lr per element whatever the input scale, and the
conv_head's inputs reach tens) over minibatches of the cache; weights written back as grid values,
biases as float, parity as for the head.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from ..errors import require
from .bias_correction import _attrs

# max |ORT - torch| / mean |torch logit| of the QDQ head vs its fake-quantized torch twin. The two differ by the
# Gemm output's own Q/DQ pair (uint8 over the calibrated logit range: up to half a step, a step being ~1/255 of
# a range of several mean |logit|), the int32 bias rounding and the features' batch order; measured 2.9 % on the
# tiny test model (16 images), see the rung record for EfficientNet-Lite0
PARITY_TOL = 0.05


@contextlib.contextmanager
def one_torch_thread():
    """torch with one intra-op thread for the block. The QAT and AdaRound steps are small ops, and
    torch's two threads on a shared 2-core host spin and starve: at a load average of 5, 500 steps
    of a (8, 3, 32, 32) 1x1 conv took 62 s with two threads and 0.98 s with one (measured
    2026-12-02)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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


def qat_head(float_path: Path, qdq_path: Path, calib_x: np.ndarray, fp32_logits: np.ndarray, input_name: str,
             out_float: Path, *, steps: int = 300, lr: float = 1e-3, l2: float = 1e-2, seed: int = 0,
             weight_qmax: int = 127) -> dict:
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
        z = alpha * f @ _fq_weight(w, 0, weight_qmax).T + b
        return torch.nn.functional.kl_div(torch.log_softmax(z, 1), p, reduction="batchmean"), z

    with torch.no_grad():
        kl0 = float(loss_fn()[0])
    with one_torch_thread():
        for _ in range(steps):
            opt.zero_grad()
            kl, _ = loss_fn()
            (kl + l2 * ((w - w0t) ** 2).sum()).backward()
            opt.step()
    with torch.no_grad():
        kl1, z = loss_fn()
        wq = _fq_weight(w, 0, weight_qmax).numpy()
    fm.graph.initializer.remove(inits[gemm.input[1]])
    fm.graph.initializer.append(numpy_helper.from_array((wq if attrs.get("transB") else wq.T).astype(np.float32), gemm.input[1]))
    fm.graph.initializer.remove(inits[gemm.input[2]])
    fm.graph.initializer.append(numpy_helper.from_array((b.detach().numpy() / beta).astype(np.float32), gemm.input[2]))
    onnx.save_model(fm, str(out_float))
    return {"head": gemm.name, "features": feat_name, "images": int(len(feats)), "steps": steps, "lr": lr, "l2": l2,
            "kl_before": kl0, "kl_after": float(kl1), "seconds": time.perf_counter() - t0,
            "_feats": feats, "_torch_logits": z.numpy().astype(np.float32)}


def _output_range(model) -> tuple[float, float] | None:
    """The float range [lo, hi] the graph output's DequantizeLinear can represent (the Gemm
    output's Q/DQ pair calibrated on fp32 logits), or None when the output is not dequantized."""
    from .bias_correction import dq_qparams

    qp = dq_qparams(model, model.graph.output[0].name)
    if qp is None:
        return None
    scale, zp, qmin, qmax = qp
    return (qmin - zp) * scale, (qmax - zp) * scale


def head_parity(qdq_path: Path, summary: dict, calib_x: np.ndarray, input_name: str) -> dict:
    """Logits of the re-quantized QDQ file ``qdq_path`` on ``calib_x`` vs the fake-quantized torch
    head's on the same cached features (both float32 (N, C)): ``max_abs_diff``, ``rel_diff``
    (max |diff| / mean |torch logit|) over the images whose torch logits the file's output Q/DQ
    pair can represent, ``saturated_images`` (the others: the output range was calibrated on the
    fp32 logits of the calibration images, and a head trained on more images can leave it there;
    what that costs is measured by the val judgement of the file), ``agreement`` (all images),
    ``tolerance`` and ``passed`` (``rel_diff`` within tolerance on at least one representable
    image). The QDQ file's head sees the same features only when the layers before it are
    unchanged, which holds: this rung changes only the head's initializers."""
    onnx = require("onnx", "export")
    m = onnx.load(str(qdq_path), load_external_data=False)
    out_name = m.graph.output[0].name
    (logits,) = exposed_outputs(qdq_path, [out_name], calib_x, input_name)
    ref = summary["_torch_logits"]
    rng = _output_range(m)
    ok = np.ones(len(ref), bool) if rng is None else ((ref >= rng[0]) & (ref <= rng[1])).all(1)
    diff = float(np.abs(logits[ok] - ref[ok]).max()) if ok.any() else float("inf")
    rel = diff / max(float(np.abs(ref).mean()), 1e-12)
    return {"max_abs_diff": diff, "rel_diff": rel, "agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
            "images": int(len(ref)), "saturated_images": int((~ok).sum()), "output_range": rng,
            "tolerance": PARITY_TOL, "passed": bool(ok.any() and rel <= PARITY_TOL),
            "vs": "fake-quantized torch head on cached features"}


def strip_private(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


TAIL_OPS = ("Conv", "Relu", "Clip", "Add", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Gemm", "MatMul")
WEIGHTED = ("Conv", "Gemm", "MatMul")


def find_tail(float_model, qat_nodes: int):
    """(cut tensor name, tail nodes) for the last ``qat_nodes`` weighted nodes (Conv/Gemm/MatMul
    with an initializer weight) of the topologically sorted ``float_model``; the tail is every node
    from the first of them to the end. Returns (None, reason) when an op outside :data:`TAIL_OPS`
    or an input from before the cut (other than the cut tensor and initializers) is in the tail."""
    inits = {i.name for i in float_model.graph.initializer}
    nodes = list(float_model.graph.node)
    idx = [k for k, n in enumerate(nodes) if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in inits]
    if len(idx) < qat_nodes or qat_nodes < 1:
        return None, f"fewer than {qat_nodes} weighted nodes with initializer weights"
    tail = nodes[idx[-qat_nodes]:]
    cut = tail[0].input[0]
    have = {cut} | inits
    for n in tail:
        if n.op_type not in TAIL_OPS:
            return None, f"tail op {n.op_type} ({n.name}) has no torch mapping here (mapped: {', '.join(TAIL_OPS)})"
        if n.op_type == "Gemm" and _attrs(n).get("transA"):
            return None, f"Gemm {n.name} with transA"
        miss = [i for i in n.input if i and i not in have]
        if miss:
            return None, f"tail node {n.name} reads {miss} from before the cut {cut!r}"
        have.update(n.output)
    return cut, tail


def _wq_axis(n) -> int:
    """The output-channel axis of the stored weight: ORT's per-channel axis (Conv 0, Gemm transB 0,
    Gemm transB 1 / MatMul (K, C) the columns)."""
    if n.op_type == "Conv" or (n.op_type == "Gemm" and _attrs(n).get("transB")):
        return 0
    return 1


def _fq_weight(w, axis: int, qmax: int = 127):
    """Symmetric per-channel INT8 fake quantization along ``axis``: scale max|w|/qmax, [-qmax, qmax]
    (127; 64 for ONNX Runtime's 7-bit ``reduce_range`` weights, whose range is [-64, 64])."""
    import torch

    red = [d for d in range(w.dim()) if d != axis]
    scale = (w.detach().abs().amax(red) / qmax).clamp_min(1e-12)
    return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[axis], dtype=torch.int32), axis, -qmax, qmax)


def act_qparams(qdq_model) -> dict:
    """{float tensor: (scale, zero point, qmin, qmax)} of every per-tensor QuantizeLinear of the QDQ
    model whose scale and zero point are initializers (the calibrated activation ranges)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq_model.graph.initializer}
    out = {}
    for n in qdq_model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) >= 3 and n.input[1] in inits and n.input[2] in inits:
            s, z = numpy_helper.to_array(inits[n.input[1]]), numpy_helper.to_array(inits[n.input[2]])
            if s.size == 1:
                lo, hi = (-128, 127) if z.dtype == np.int8 else (0, 255)
                out[n.input[0]] = (float(s.reshape(())), int(z.reshape(())), lo, hi)
    return out


def run_tail(tail, cut: str, feats, params: dict, consts: dict, aq: dict, fake_quant: bool = True,
             weight_qmax: int = 127):
    """The tail on ``feats`` (torch float32, the cut tensor's batch) in torch: ``params`` trainable
    weights/biases by initializer name, ``consts`` other initializers (numpy), ``aq`` activation
    quantization of :func:`act_qparams` applied to every tail tensor the QDQ model quantizes."""
    import torch
    import torch.nn.functional as F

    env = {cut: feats}

    def val(name):
        if name in env:
            return env[name]
        if name in params:
            a = params[name]
            return a
        return torch.from_numpy(np.array(consts[name]))

    for n in tail:
        a, ins = _attrs(n), [val(i) if i else None for i in n.input]
        if n.op_type in WEIGHTED and fake_quant and n.input[1] in params:
            ins[1] = _fq_weight(ins[1], _wq_axis(n), weight_qmax)
        if n.op_type == "Conv":
            pads = list(a.get("pads", [0, 0, 0, 0]))
            x = ins[0]
            if pads[:2] != pads[2:]:
                x, pads = F.pad(x, (pads[1], pads[3], pads[0], pads[2])), [0, 0]
            y = F.conv2d(x, ins[1], ins[2] if len(ins) > 2 else None, tuple(a.get("strides", [1, 1])), tuple(pads[:2]),
                         tuple(a.get("dilations", [1, 1])), int(a.get("group", 1)))
        elif n.op_type == "Relu":
            y = torch.relu(ins[0])
        elif n.op_type == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min", -np.inf)
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max", np.inf)
            y = torch.clamp(ins[0], float(lo), float(hi))
        elif n.op_type == "Add":
            y = ins[0] + ins[1]
        elif n.op_type == "GlobalAveragePool":
            y = ins[0].mean((2, 3), keepdim=True)
        elif n.op_type == "ReduceMean":  # axes: attribute (opset < 18) or input 1
            axes = a.get("axes") if len(ins) < 2 or ins[1] is None else [int(v) for v in np.asarray(ins[1]).reshape(-1)]
            y = ins[0].mean(tuple(int(v) for v in axes), keepdim=bool(a.get("keepdims", 1)))
        elif n.op_type == "Flatten":
            ax = int(a.get("axis", 1))
            y = ins[0].reshape(int(np.prod(ins[0].shape[:ax])), -1)
        elif n.op_type == "Reshape":
            shape = [int(s) for s in np.asarray(ins[1].numpy() if torch.is_tensor(ins[1]) else ins[1])]
            shape = [ins[0].shape[k] if s == 0 else s for k, s in enumerate(shape)]
            y = ins[0].reshape(shape)
        elif n.op_type == "Gemm":
            w = ins[1].T if a.get("transB") else ins[1]
            y = float(a.get("alpha", 1.0)) * ins[0] @ w
            if len(ins) > 2 and ins[2] is not None:
                y = y + float(a.get("beta", 1.0)) * ins[2]
        else:  # MatMul
            y = ins[0] @ ins[1]
        o = n.output[0]
        if fake_quant and o in aq:
            s, z, lo, hi = aq[o]
            y = torch.fake_quantize_per_tensor_affine(y, s, z, lo, hi)
        env[o] = y
    return env


def qat_tail(float_path: Path, qdq_path: Path, calib_x: np.ndarray, fp32_logits: np.ndarray, input_name: str,
             out_float: Path, *, qat_nodes: int = 2, steps: int = 300, lr: float = 1e-4, l2: float = 1e-2,
             batch: int = 32, labels: np.ndarray | None = None, ce: float = 0.0, seed: int = 0,
             weight_qmax: int = 127) -> dict:
    """Write ``out_float``: ``float_path`` with the weights and biases of its tail (the last
    ``qat_nodes`` weighted nodes and everything after them, see :func:`find_tail`) trained with
    fake quantization (weights per channel, activations with the QDQ candidate's fixed calibrated
    scales) on the cut tensor's values the QDQ candidate ``qdq_path`` computes for ``calib_x``
    (float32 (N, 3, S, S), TRAINING images only), distilled from ``fp32_logits`` float32 (N, C);
    optional CE on ``labels`` int (N,) with weight ``ce``. Adam, minibatches of ``batch``, L2 pull
    ``l2`` (per element, mean) to the float weights; the weights of the checkpoint (every
    ``steps // 10`` steps, and step 0) with the lowest KL on all of ``calib_x`` are kept, so
    ``kl_after <= kl_before`` always. Returns the summary as :func:`qat_head`, with ``best_step``
    (0: training never improved on the candidate) and ``checkpoint_every``."""
    onnx = require("onnx", "export")
    torch = require("torch", "train", "QAT")
    from onnx import numpy_helper

    t0 = time.perf_counter()
    fm = onnx.load(str(float_path))
    cut, tail = find_tail(fm, qat_nodes)
    if cut is None:
        return {"skipped": tail}
    qm = onnx.load(str(qdq_path), load_external_data=False)
    qnode = next((n for n in qm.graph.node if n.name == tail[0].name), None)
    if qnode is None:
        return {"skipped": f"tail node {tail[0].name!r} not found in the QDQ candidate"}
    feat_name = qnode.input[0]
    (feats,) = exposed_outputs(qdq_path, [feat_name], calib_x, input_name)
    inits = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
    train = [i for n in tail if n.op_type in WEIGHTED for i in n.input[1:3] if i in inits]
    params = {k: torch.from_numpy(inits[k].astype(np.float32).copy()).requires_grad_(True) for k in train}
    p0 = {k: v.detach().clone() for k, v in params.items()}
    consts = {k: v for k, v in inits.items() if k not in params}
    aq = act_qparams(qm)
    out_name = tail[-1].output[0]
    torch.manual_seed(seed)
    f = torch.from_numpy(feats)
    p = torch.softmax(torch.from_numpy(np.asarray(fp32_logits, np.float32)), 1)
    yl = None if labels is None else torch.from_numpy(np.asarray(labels, np.int64))
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))  # decays to 0: no Adam jitter at the end

    def kl_of(idx=None):
        fi, pi = (f, p) if idx is None else (f[idx], p[idx])
        z = run_tail(tail, cut, fi, params, consts, aq, weight_qmax=weight_qmax)[out_name].reshape(len(fi), -1)
        kl = torch.nn.functional.kl_div(torch.log_softmax(z, 1), pi, reduction="batchmean")
        if ce and yl is not None:
            kl = kl + ce * torch.nn.functional.cross_entropy(z, yl if idx is None else yl[idx])
        return kl, z

    with torch.no_grad():
        kl0 = float(kl_of()[0])
    # the best full-set KL seen at the checkpoints is kept: a straight-through step can push a weight across a
    # rounding boundary where a large input (an outlier channel) turns one grid step into a jump of the logits
    # (measured on the tiny outlier net of tests/quantize/test_qat.py with 7-bit weights: KL 6.4e-5 at step 150,
    # 0.497 at step 180 as one weight moved from 0 to one step)
    every, best, best_step = max(steps // 10, 1), (kl0, {k: v.detach().clone() for k, v in params.items()}), 0
    g = torch.Generator().manual_seed(seed)
    with one_torch_thread():
        for step in range(1, steps + 1):
            idx = torch.randperm(len(f), generator=g)[:batch]
            opt.zero_grad()
            kl, _ = kl_of(idx)
            (kl + l2 * sum(((params[k] - p0[k]) ** 2).mean() for k in params)).backward()
            opt.step()
            sched.step()
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    k_now = float(kl_of()[0])
                if k_now < best[0]:
                    best, best_step = (k_now, {k: v.detach().clone() for k, v in params.items()}), step
    with torch.no_grad():
        for k, v in best[1].items():
            params[k].copy_(v)
        kl1, z = kl_of()
        for n in tail:
            if n.op_type in WEIGHTED and n.input[1] in params:
                params[n.input[1]].copy_(_fq_weight(params[n.input[1]], _wq_axis(n), weight_qmax))  # grid values s * q
    for init in list(fm.graph.initializer):
        if init.name in params:
            fm.graph.initializer.remove(init)
            fm.graph.initializer.append(numpy_helper.from_array(params[init.name].detach().numpy().astype(np.float32), init.name))
    onnx.save_model(fm, str(out_float))
    return {"head": tail[-1].name, "tail": [n.name for n in tail], "qat_nodes": qat_nodes, "features": feat_name,
            "images": int(len(feats)), "steps": steps, "lr": lr, "l2": l2, "batch": batch, "ce": ce,
            "fake_quant_activations": sorted(set(aq) & {o for n in tail for o in n.output}),
            "kl_before": kl0, "kl_after": float(kl1), "best_step": best_step, "checkpoint_every": every,
            "seconds": time.perf_counter() - t0, "_feats": feats, "_torch_logits": z.numpy().astype(np.float32)}
