"""``Fp16FromOnnx``: fp32 ONNX -> fp16 ONNX with onnxconverter-common, parity-checked.

Inputs and outputs stay float32 (``keep_io_types=True``) so the file is fed exactly like the fp32
one. Ops that overflow in fp16 (largest finite value 65504) stay in fp32: the op types that
accumulate over many elements or exponentiate (:data:`FP16_OP_BLOCK_LIST`, on top of
onnxconverter-common's own default list) and the producer and consumers of every tensor whose
magnitude reached :data:`OVERFLOW_HEADROOM` x 65504 on the parity images when run in fp32.

What the parity check can see on a CPU: ONNX Runtime's CPU execution provider runs fp16 nodes
that lack an fp16 kernel in fp32 and fuses the Cast pairs around them, so on CPU the parity
figures measure the fp16 rounding of the weights and the graph's structure, not fp16 activation
arithmetic; the overflow screen above is what guards against inf/NaN, and tests check it with the
ONNX reference evaluator (true fp16 numpy arithmetic). The artifact's fp16 accuracy is measured
where it runs (a GPU target's benchmark).

FP16 is for GPU targets (TensorRT, CUDA/ROCm execution providers, mobile GPUs). On a CPU it
brings no speed: ONNX Runtime's CPU execution provider has few fp16 kernels and wraps the rest
in casts (measured on this host with EfficientNet-Lite0: 5.3 ms fp16 vs 3.9 ms fp32 at batch 1 for
issue 4; batch-1 p50 1.2x and batch-8 throughput 0.63x of fp32, paired, in
benchmarks/quant_quality.py), so a target whose ``precisions`` lack fp16 refuses it unless
explicitly overridden.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts import Manifest, atomic_path, read_manifest, tool_versions, write_manifest
from ..errors import DataError, require
from ..parity import Tolerance, judge, tolerance
from ..progress import log
from ..types import Format, Precision

FP16_MAX = 65504.0
OVERFLOW_HEADROOM = 0.5  # a node whose fp32 output reaches half the fp16 range stays in fp32
# Overflow-prone op types kept in fp32: sums/means over many elements, powers and exponentials
# (softmax, norms), and normalisations that square their input.
FP16_OP_BLOCK_LIST = ("ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd", "Pow", "Exp",
                      "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization")

CPU_NOTE = ("FP16 brings no speed on CPU targets: ONNX Runtime's CPU execution provider runs most fp16 ops through "
            "casts (measured on an AVX-512 x86 CPU with EfficientNet-Lite0: 5.3 ms fp16 vs 3.9 ms fp32 at batch 1; "
            "batch-1 p50 1.2x and batch-8 throughput 0.63x of fp32 in benchmarks/quant_quality.py). It exists for GPU "
            "targets (TensorRT, CUDA) and is not recommended for this target.")


def overflowing_tensors(model_path: Path, x: np.ndarray, headroom: float = OVERFLOW_HEADROOM, batch: int = 16) -> dict[str, float]:
    """Intermediate float tensors whose fp32 magnitude reaches ``headroom`` x 65504 on images
    ``x`` (float32 (N, 3, S, S)), with that peak magnitude. Runs the model once with every
    intermediate float tensor added as an output."""
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    m = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    float_vi = {v.name: v for v in m.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    outputs = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o in float_vi and o not in outputs:
                m.graph.output.add().CopyFrom(float_vi[o])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peak: dict[str, float] = {}
    in_name = sess.get_inputs()[0].name
    for i in range(0, len(x), batch):
        for name, val in zip(names, sess.run(None, {in_name: x[i : i + batch]})):
            if name not in outputs:
                peak[name] = max(peak.get(name, 0.0), float(np.nanmax(np.abs(val))) if val.size else 0.0)
    return {t: v for t, v in peak.items() if v >= headroom * FP16_MAX}


def nodes_touching(model_path: Path, tensors) -> list[str]:
    """Names of the nodes producing or consuming any of ``tensors``: to keep a tensor in fp32,
    both its producer and its consumers must run in fp32 (a consumer in fp16 would cast it to
    fp16 on its input)."""
    onnx = require("onnx", "export")
    tensors = set(tensors)
    m = onnx.load(str(model_path), load_external_data=False)
    return sorted({n.name for n in m.graph.node if n.name and tensors & (set(n.input) | set(n.output))})


def fp16_from_onnx(onnx_path: Path, out: Path, parity_x: np.ndarray, *, target: str | None = None,
                   op_block_list: Sequence[str] = FP16_OP_BLOCK_LIST, max_abs: float | None = None,
                   mean_abs: float | None = None, min_agreement: float | None = None,
                   target_supports_fp16: bool = True) -> Manifest:
    """Convert the fp32 ONNX ``onnx_path`` to fp16 ``out`` (+ manifest), parity-checked against it.

    ``parity_x``: float32 (N, 3, S, S), N >= 1, preprocessed validation images (also used to
    find overflowing nodes). Tolerances default to ``TOLERANCES["fp16"]`` (max / mean |logit
    diff| in logit units, top-1 agreement). ``target_supports_fp16`` False records in the
    manifest that the target gains nothing from it (see :data:`CPU_NOTE`).
    Raises :class:`ParityError` for NaN/inf outputs or figures beyond tolerance; ``out`` is only
    written when the check passed.
    """
    onnx = require("onnx", "export")
    require("onnxconverter_common", "export", "FP16 conversion")
    from onnxconverter_common import float16

    from ..runtime.ort import onnx_logits

    if len(parity_x) == 0:
        raise DataError("the fp16 parity check needs at least one validation image; the validation split is empty")
    parent = read_manifest(onnx_path)
    tol = tolerance("fp16", max_abs=max_abs, mean_abs=mean_abs, min_agreement=min_agreement)
    t0 = time.perf_counter()
    overflow = overflowing_tensors(onnx_path, parity_x)
    blocked_nodes = nodes_touching(onnx_path, overflow)
    if overflow:
        log(f"[yellow]{len(overflow)} tensor(s) reach the fp16 range on the parity images; {len(blocked_nodes)} node(s) "
            f"around them stay in fp32: {blocked_nodes[:5]}")
    blocked_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
    m = onnx.load(str(onnx_path))
    m16 = float16.convert_float_to_float16(m, keep_io_types=True, op_block_list=blocked_ops,
                                           node_block_list=blocked_nodes, disable_shape_infer=False)
    kept = sorted({n.op_type for n in m.graph.node if n.op_type in op_block_list})
    with atomic_path(out, suffix=".onnx") as tmp:
        onnx.save_model(m16, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        ref = onnx_logits(onnx_path, parity_x)
        cand = onnx_logits(tmp, parity_x)
        stats = judge(ref, cand, Tolerance(**tol), what="FP16 conversion",
                      output=parent.outputs[0]["name"] if parent.outputs else "logits").raise_for(
            "keep more ops in fp32 (op_block_list) or use fp32 for this model").stats
    log(f"FP16 vs fp32 ONNX on {stats.num_samples} images: max |diff| {stats.max_abs:.2e}, mean {stats.mean_abs:.2e}, "
        f"agreement {stats.agreement:.4f}")
    details: dict[str, Any] = {
        "converter": "onnxconverter_common.float16.convert_float_to_float16", "keep_io_types": True,
        "op_block_list": blocked_ops, "fp32_op_types_present": kept, "overflow_tensors": overflow,
        "overflow_nodes_kept_fp32": blocked_nodes,
        "overflow_threshold": OVERFLOW_HEADROOM * FP16_MAX, "parity_vs": "fp32 onnx", "parity": stats.to_dict(),
        "tolerance": tol, "seconds": time.perf_counter() - t0, "target_supports_fp16": target_supports_fp16,
    }
    if not target_supports_fp16:
        details["target_note"] = CPU_NOTE
    return write_manifest(out, Manifest(
        format=str(Format.ONNX), precision=str(Precision.FP16), file=out.name, parent_sha256=parent.sha256,
        parent_file=parent.file, target=target, preprocessing=parent.preprocessing, class_names=parent.class_names,
        inputs=parent.inputs, outputs=parent.outputs, producer="edgetransfer.quantize.fp16",
        tool_versions=tool_versions("onnx", "onnxruntime", "onnxconverter_common"), details=details,
    ))
