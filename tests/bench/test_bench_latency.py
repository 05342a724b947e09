"""Latency statistics: percentiles on a known sample, the stopping rule, e2e helpers, memory."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgetransfer.bench.e2e import softmax, top_k
from edgetransfer.bench.latency import measure_latency, summarize
from edgetransfer.bench.memory import PeakMemory


def test_percentiles_on_known_sample():
    # 1..100 ms: linear interpolation between order statistics (numpy 'linear', Hyndman & Fan type 7):
    # p = 1 + (n - 1) * q / 100 -> p50 = 50.5, p90 = 90.1, p95 = 95.05, p99 = 99.01
    t = np.arange(1, 101, dtype=np.float64)[::-1].copy()  # order must not matter
    s = summarize(t, batch_size=4, warmup=3, seconds=5.05)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.min_ms == 1.0
    assert s.std_ms == pytest.approx(29.011491975882016)  # sample std (ddof=1) of 1..100
    assert s.throughput_ips == pytest.approx(4 * 1000 / 50.5)
    assert (s.iterations, s.warmup, s.batch_size) == (100, 3, 4)


def test_percentiles_small_sample_and_empty():
    s = summarize(np.array([2.0, 4.0]), 1, 0, 0.0)
    assert (s.p50_ms, s.p99_ms, s.std_ms) == (pytest.approx(3.0), pytest.approx(3.98), pytest.approx(np.sqrt(2)))
    with pytest.raises(ValueError):
        summarize(np.array([]), 1, 0, 0.0)


def test_stops_only_when_count_and_duration_are_both_reached():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    s = measure_latency(fn, 1, warmup=3, min_iterations=5, min_seconds=0.06)
    assert s.iterations >= 5 and s.seconds >= 0.06  # duration decided: ~30 iterations of 2 ms
    assert s.iterations > 5
    assert len(calls) == s.iterations + 3
    s = measure_latency(lambda: None, 1, warmup=0, min_iterations=50, min_seconds=0.0)
    assert s.iterations == 50  # count decided
    synced = []
    measure_latency(lambda: None, 1, warmup=2, min_iterations=4, min_seconds=0.0, sync=lambda: synced.append(1))
    assert len(synced) == 1 + 4  # once after warm-up, then before every clock read


def test_softmax_top_k():
    logits = np.array([[1.0, 3.0, 2.0, -1.0], [0.0, 0.0, 5.0, 1.0]], np.float32)
    p = softmax(logits)
    assert np.allclose(p.sum(1), 1.0, atol=1e-6)
    e = np.exp(logits[0] - 3.0)
    assert np.allclose(p[0], e / e.sum(), atol=1e-7)
    idx, val = top_k(p, 3)
    assert idx.tolist() == [[1, 2, 0], [2, 3, 0]] or idx.tolist() == [[1, 2, 0], [2, 3, 1]]
    assert np.all(np.diff(val, axis=1) <= 0)
    assert top_k(p, 10)[0].shape == (2, 4)
    assert np.isfinite(softmax(np.array([[1000.0, 0.0]]))).all()


def test_peak_memory_sees_a_transient_allocation():
    with PeakMemory() as pm:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del a
    st = pm.stats
    if st.method == "unavailable":
        pytest.skip("no /proc on this platform")
    assert st.growth_mib >= 60, st  # freed before the end: only a peak measurement sees it
    assert st.peak_rss_mib >= st.rss_before_mib + 60
