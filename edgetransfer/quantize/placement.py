"""Speed-aware placement: compute nodes whose INT8 kernel is SLOWER than their fp32 kernel on
this host's ONNX Runtime CPU stay in float from the start of the INT8 ladder.

Why. INT8 exists for speed, and ONNX Runtime's integer kernels are not uniformly faster. On
EfficientNet-Lite0 (x86-64 with AVX-512 VNNI, 2 threads, batch 1, ORT profiler, measured
2026-12-03) the pointwise convolutions ran 0.33x their fp32 time and the depthwise ones 0.86-1.00x,
but the stem convolution (3 input channels, 3x3, stride 2) ran 2.3x SLOWER as a QLinearConv
(0.78 vs 0.34 ms): its im2col GEMM has a reduction of only 27 values, where MLAS's NCHWc fp32
kernel is efficient. Keeping it in float moves the input QuantizeLinear behind it and took the
whole file from 0.62-0.65x to 0.59-0.60x fp32 b1 p50 (hymenoptera, same run, interleaved).
TensorRT makes the same choice by measurement (its tactic selection runs a layer in the faster
precision when the network is not strongly typed); this module does it for ONNX Runtime.

How (:func:`slower_in_int8`, then the ladder confirms on the whole file with :func:`b1_pair_ms`):
per-node kernel times of the fp32 model and of a plain QDQ candidate, from ORT's profiler at
batch 1, the minimum over ``repeats`` profiles (robust to a busy host); a node qualifies when its
INT8 time is at least ``min_ratio`` times its fp32 time. The nodes found are kept in float only
when the whole file, quantized with them excluded, is faster than without (medians of interleaved
rounds): a node kept in float adds a Q/DQ transition the per-node times do not show. Where the
target also benchmarks the file on OpenVINO (``LadderConfig.placement_runtimes``, x86-cpu's
``runtimes``), the placed file must be faster on balance of both (:func:`placement_verdict`): one
file serves every runtime of the target, and a placement that buys ONNX Runtime a few per cent by
costing OpenVINO as much is not a speed-up. Measured on pizza_steak_sushi (AMD EPYC host,
2026-12-04, benchmarks/quant_peers.py's timing, two runs): the stem in float ran ONNX Runtime
0.47-0.52x fp32 where the fully quantized file ran 0.48x, but OpenVINO 0.449-0.457x where the fully
quantized file ran 0.415-0.435x; the ladder had adopted it on ONNX Runtime's 1.12 vs 1.16 ms. The nodes count against the ladder's float cap (``LadderConfig.max_float_share``).

Applies to files for ONNX Runtime's CPU execution provider on this host's kind of CPU only
(``LadderConfig.host_is_target``): per-node times on an x86 workstation say nothing about an ARM
phone or TensorRT.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .graphstats import b1_ms, float_node_times, median_call_ms, node_ms

# an INT8 node must take at least this many times its fp32 node's kernel time to qualify: per-node
# profiler times of the same node varied 1.2-1.7x between two runs on the 2-core host (2026-12-03)
# where the stem measured 2.28x and 2.31x
MIN_RATIO = 1.5
# ... and take at least this many ms more per run (batch 1): an absolute floor, so that the kernels of
# microseconds of a tiny model, where timer noise is the whole difference, never qualify (the stem
# above: 0.43 ms more)
MIN_EXTRA_MS = 0.05
# the placed file must be faster than the plain one by this fraction of its b1 median. Measured with
# b1_pair_ms on this 2-core host (2026-12-03), 4 calls each: the same hymenoptera / pizza INT8 file against
# itself 0.988-1.006 / 0.989-1.057; the stem kept in float against fully quantized 0.84-0.94 / 0.88-0.94
PAIR_MARGIN = 0.03


def int8_node_ms(qdq_path: Path, x1: np.ndarray, iterations: int = 10) -> dict[str, float]:
    """Per-node kernel ms of a QDQ file by the name of its float compute node: ORT names a fused
    QLinearConv ``<conv name>_token_<k>`` (the suffix is dropped)."""
    out: dict[str, float] = {}
    for k, v in node_ms(qdq_path, x1, iterations).items():
        k = re.sub(r"_token_\d+$", "", k)
        out[k] = out.get(k, 0.0) + v
    return out


def node_time_pairs(float_path: Path, qdq_path: Path, x1: np.ndarray, repeats: int = 3) -> tuple[dict, dict]:
    """``(fp32, int8)``: kernel ms per run (batch 1) of every node of the fp32 model ``float_path``
    and of the QDQ file ``qdq_path``, both by float-model node name (:func:`float_node_times`,
    :func:`int8_node_ms`); each the minimum over ``repeats`` profiles taken interleaved, so a burst
    of other work on the host hits both models alike and a busy host only adds time the minimum drops.
    ``x1``: float32 (1, 3, S, S)."""
    fp: dict[str, float] = {}
    q8: dict[str, float] = {}
    for _ in range(repeats):
        for store, times in ((fp, float_node_times(float_path, node_ms(float_path, x1))), (q8, int8_node_ms(qdq_path, x1))):
            for k, v in times.items():
                store[k] = min(store.get(k, float("inf")), v)
    return fp, q8


def slower_in_int8(float_path: Path, qdq_path: Path, x1: np.ndarray, nodes: Sequence[str], limit: int,
                   min_ratio: float = MIN_RATIO, min_extra_ms: float = MIN_EXTRA_MS,
                   repeats: int = 3) -> tuple[list[str], list[dict]]:
    """``(names, table)``: at most ``limit`` of ``nodes`` (compute nodes quantized in ``qdq_path``)
    whose INT8 kernel time is >= ``min_ratio`` x their fp32 kernel time and >= ``min_extra_ms`` more
    than it, largest ratio first;
    ``table``: ``{"node", "fp32_ms", "int8_ms", "ratio"}`` of every node measured in both, largest
    ratio first. ``x1``: float32 (1, 3, S, S). Times: :func:`node_time_pairs`, ms per run."""
    fp, q8 = node_time_pairs(float_path, qdq_path, x1, repeats)
    table = [{"node": n, "fp32_ms": fp[n], "int8_ms": q8[n], "ratio": q8[n] / fp[n]}
             for n in nodes if fp.get(n, 0.0) > 0 and q8.get(n, 0.0) > 0]
    table.sort(key=lambda r: -r["ratio"])
    slow = [r["node"] for r in table if r["ratio"] >= min_ratio and r["int8_ms"] - r["fp32_ms"] >= min_extra_ms]
    return slow[: max(limit, 0)], table


def _openvino_b1(path: Path, x1: np.ndarray):
    """A function timing ``iterations`` batch-1 OpenVINO CPU calls of ``path`` (median ms), compiled
    as the product's runner compiles an INT8 file; None when OpenVINO is not installed or refuses it."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino as ov

    from ..runtime.openvino import compile_config
    from ..types import Precision

    try:
        req = ov.Core().compile_model(str(path), "CPU", compile_config(Precision.INT8)).create_infer_request()
    except RuntimeError:
        return None
    feed = {0: np.ascontiguousarray(x1[:1])}
    return lambda iterations: median_call_ms(lambda: req.infer(feed), iterations)


def b1_pair_ms(a: Path, b: Path, x1: np.ndarray, rounds: int = 5, iterations: int = 20,
               runtime: str = "onnxruntime") -> tuple[float, float] | None:
    """Batch-1 median ms of ``a`` and of ``b`` under ``runtime`` (``onnxruntime``: CPU EP, a session
    per round; ``openvino``: CPU plugin, each compiled once), ``rounds`` interleaved rounds of
    ``iterations`` runs each (a, b, a, b, ...); medians of the per-round medians. None for
    ``openvino`` when it is not installed or refuses one of the files."""
    if runtime == "openvino":
        ra, rb = _openvino_b1(a, x1), _openvino_b1(b, x1)
        if ra is None or rb is None:
            return None
        fa, fb = ra, rb
    else:
        fa, fb = (lambda n: b1_ms(a, x1, n)), (lambda n: b1_ms(b, x1, n))
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(fa(iterations))
        tb.append(fb(iterations))
    return float(np.median(ta)), float(np.median(tb))


def placement_verdict(plain: Path, placed: Path, x1: np.ndarray, runtimes: Sequence[str] = ("onnxruntime",)) -> dict:
    """Whether the ``placed`` file (some compute nodes kept in float) replaces the ``plain`` one:
    faster under ONNX Runtime by :data:`PAIR_MARGIN` of the plain file's b1 median, and, when
    ``openvino`` is in ``runtimes``, faster by :data:`PAIR_MARGIN` on balance: the geometric mean of
    the two runtimes' with/without ratios (:func:`b1_pair_ms`; OpenVINO is timed only when ONNX
    Runtime says yes). Returns ``{"adopted": bool, "b1_ms": {"without", "with"} (ONNX Runtime, ms),
    "b1_ms_openvino": {...} (ms, when timed), "reason": str}``; ``x1``: float32 (1, 3, S, S)."""
    t_plain, t_placed = b1_pair_ms(plain, placed, x1)
    out: dict = {"b1_ms": {"without": t_plain, "with": t_placed}}
    adopted = t_placed < (1.0 - PAIR_MARGIN) * t_plain
    why = [f"ONNX Runtime b1 {t_placed:.2f} ms with vs {t_plain:.2f} ms without"]
    if not adopted and "openvino" in runtimes:
        why.append("OpenVINO not timed: not faster under ONNX Runtime")
    elif adopted and "openvino" in runtimes:
        ov = b1_pair_ms(plain, placed, x1, runtime="openvino")
        if ov is None:
            why.append("OpenVINO not timed (not installed, or it refused a file)")
        else:
            out["b1_ms_openvino"] = {"without": ov[0], "with": ov[1]}
            balance = ((t_placed / t_plain) * (ov[1] / ov[0])) ** 0.5
            adopted = balance < 1.0 - PAIR_MARGIN
            why.append(f"OpenVINO {ov[1]:.2f} vs {ov[0]:.2f} ms; both runtimes {balance:.3f}x"
                       + ("" if adopted else f": not {PAIR_MARGIN:.0%} faster on balance"))
    out.update(adopted=adopted, reason="; ".join(why))
    return out
