"""Graph figures the INT8 ladder and the benchmarks need: compute nodes, which of them run in
float in a QDQ file, depthwise convolutions, and per-node latency measured with ONNX Runtime's
profiler on this host.

"Compute nodes" are Conv / ConvTranspose / Gemm / MatMul: the nodes that carry the model's
arithmetic and whose INT8 kernels make the speed. The float-node share of a QDQ file is the
fraction of them whose data input does not come from a DequantizeLinear (they run in float):
the same definition for edgetransfer's, NNCF's and ORT's files.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import require

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _load(model_or_path):
    onnx = require("onnx", "export")
    if isinstance(model_or_path, (str, Path)):
        return onnx.load(str(model_or_path), load_external_data=False)
    return model_or_path


def compute_nodes(model_or_path) -> list[str]:
    """Names of the compute nodes (:data:`COMPUTE_OPS`), in graph order."""
    return [n.name for n in _load(model_or_path).graph.node if n.op_type in COMPUTE_OPS]


def float_compute_nodes(qdq_path) -> tuple[list[str], int]:
    """``(names, total)``: the compute nodes of a QDQ file whose first input is not produced by a
    DequantizeLinear (they compute in float), and the number of compute nodes."""
    m = _load(qdq_path)
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    comp = [n for n in m.graph.node if n.op_type in COMPUTE_OPS]
    return [n.name or n.output[0] for n in comp if producer.get(n.input[0]) != "DequantizeLinear"], len(comp)


def float_node_share(qdq_path) -> float:
    """Fraction of compute nodes in float (0.0 = fully quantized); 0.0 for a file without any."""
    names, total = float_compute_nodes(qdq_path)
    return len(names) / total if total else 0.0


def depthwise_convs(model_or_path) -> list[str]:
    """Conv nodes with one input channel per group (group > 1 and weight shape[1] == 1)."""
    m = _load(model_or_path)
    from onnx import helper

    shapes = {i.name: list(i.dims) for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        g = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and g > 1 and len(n.input) > 1 and shapes.get(n.input[1], [0, 0])[1:2] == [1]:
            out.append(n.name)
    return out


def b1_ms(path: Path, x1: np.ndarray, iterations: int = 20, threads: int | None = None) -> float:
    """Median batch-1 latency (ms) of ``path`` under ONNX Runtime (CPU, all graph optimisations)
    over ``iterations`` runs after 3 warm-up runs."""
    ort = require("onnxruntime", "export")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x1[:1])}
    return median_call_ms(lambda: sess.run(None, feed), iterations)


def median_call_ms(fn, iterations: int, warmup: int = 3) -> float:
    """Median wall time (ms) of ``iterations`` calls of ``fn()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def node_ms(path: Path, x1: np.ndarray, iterations: int = 10) -> dict[str, float]:
    """Mean kernel time per run (ms) of every node of ``path`` at batch 1, from ONNX Runtime's
    profiler (graph optimisations on: a fused Conv+Clip is reported under the Conv's name)."""
    ort = require("onnxruntime", "export")
    with tempfile.TemporaryDirectory(prefix="edgetransfer-prof-") as td:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(td, "p")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x1[:1])}
        for _ in range(2 + iterations):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1e3)
    # the first 2 runs are warm-up: keep the last `iterations` values of each node
    return {k: float(np.sum(v[-iterations:]) / iterations) for k, v in per.items()}


def float_node_times(float_path: Path, prof: dict[str, float]) -> dict[str, float]:
    """Profiler times by float-model node name. ORT reports a fused node under the first node's name
    or, after its NCHWc rewrite, under its output tensor + ``_nchwc``; a Conv fused with the
    Relu/Clip that follows is reported under the activation's output: that time goes to the Conv."""
    m = _load(float_path)
    by_out = {o: n for n in m.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: dict[str, float] = {}
    for k, ms in prof.items():
        key = k[: -len("_nchwc")] if k.endswith("_nchwc") else k
        node = next((n for n in m.graph.node if n.name == key), None) or by_out.get(key)
        if node is None:
            continue
        if node.op_type in ("Relu", "Clip"):
            p = by_out.get(node.input[0])
            if p is not None and p.op_type in ("Conv", "Gemm") and len(consumers.get(p.output[0], [])) == 1:
                node = p
        out[node.name] = out.get(node.name, 0.0) + ms
    return out
