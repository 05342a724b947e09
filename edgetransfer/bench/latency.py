"""Latency measurement: warm-up, then timed iterations until BOTH a minimum count and a minimum
duration are reached; percentiles by linear interpolation (numpy's default, 'linear' method)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass
class LatencyStats:
    """Per-call latency of one batch, in milliseconds; ``throughput_ips`` = batch_size / mean, in
    images per second; ``seconds``: wall time of the timed loop."""

    batch_size: int
    warmup: int
    iterations: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput_ips: float
    seconds: float
    early_stopping: dict | None = None  # LoadGen-style p90/p99 estimates and the samples they rest on (bench/early_stop.py)

    def to_dict(self):
        return asdict(self)


def summarize(times_ms: np.ndarray, batch_size: int, warmup: int, seconds: float) -> LatencyStats:
    """Statistics of per-iteration times (ms). Raises ValueError on an empty sample."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timed iterations")
    p50, p90, p95, p99 = np.percentile(t, [50, 90, 95, 99])
    mean = float(t.mean())
    from .early_stop import early_stopping

    es = {f"p{round(q * 100)}": early_stopping(t, q) for q in (0.90, 0.99)}
    return LatencyStats(batch_size, warmup, int(t.size), mean, float(t.std(ddof=1)) if t.size > 1 else 0.0, float(t.min()),
                        float(p50), float(p90), float(p95), float(p99), batch_size * 1000.0 / mean if mean > 0 else float("inf"), seconds,
                        es)


def measure_latency(fn: Callable[[], object], batch_size: int, *, warmup: int = 20, min_iterations: int = 200,
                    min_seconds: float = 3.0, max_iterations: int = 100_000, sync: Callable[[], None] | None = None) -> LatencyStats:
    """Time ``fn()`` (one inference of a batch of ``batch_size``).

    ``sync``: called after each call before reading the clock (GPU runners synchronise the device).
    Stops after ``max_iterations`` even if ``min_seconds`` is not reached.
    """
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(min_seconds * 1e9)
    while True:
        t0 = clock()
        fn()
        if sync:
            sync()
        t1 = clock()
        times.append((t1 - t0) / 1e6)
        n = len(times)
        if (n >= min_iterations and t1 >= deadline) or n >= max_iterations:
            break
    return summarize(np.asarray(times), batch_size, warmup, (clock() - start) / 1e9)
