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
rounds): a node kept in float adds a Q/DQ transition the per-node times do not show. The nodes count
against the ladder's float cap (``LadderConfig.max_float_share``).

Applies to files for ONNX Runtime's CPU execution provider on this host's kind of CPU only
(``LadderConfig.host_is_target``): per-node times on an x86 workstation say nothing about an ARM
phone or TensorRT.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .graphstats import b1_ms, float_node_times, node_ms

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


def b1_pair_ms(a: Path, b: Path, x1: np.ndarray, rounds: int = 5, iterations: int = 20) -> tuple[float, float]:
    """Batch-1 median ms of ``a`` and of ``b`` under ONNX Runtime CPU, ``rounds`` interleaved
    rounds of ``iterations`` runs each (a, b, a, b, ...); medians of the per-round medians."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(b1_ms(a, x1, iterations))
        tb.append(b1_ms(b, x1, iterations))
    return float(np.median(ta)), float(np.median(tb))
