"""LoadGen early stopping: the published counts (64 / 662 minimum queries for p90 / p99 at 99 %
confidence; 2048 queries -> 172 discarded, 7469 -> 685 for p90), and the estimate on a sample."""

from __future__ import annotations

import numpy as np

from edgetransfer.bench.early_stop import binom_cdf, discard_count, early_stopping, min_samples
from edgetransfer.bench.latency import summarize


def test_published_loadgen_counts():
    assert min_samples(0.90) == 64 and min_samples(0.99) == 662
    assert discard_count(2048, 0.90) == 172 and discard_count(7469, 0.90) == 685
    assert discard_count(63, 0.90) is None and discard_count(64, 0.90) == 0


def test_binomial_tail_and_estimate():
    assert abs(binom_cdf(1, 10, 0.5) - 11 / 1024) < 1e-12
    x = np.arange(1, 2049, dtype=float)  # 1..2048 ms
    e = early_stopping(np.random.default_rng(0).permutation(x), 0.90)
    assert e["discarded"] == 172 and e["estimate_ms"] == 1876.0  # sorted[n - t] with t = 173: the 173rd largest of 1..2048
    assert e["estimate_ms"] > np.percentile(x, 90)  # more conservative than the plain p90
    short = early_stopping(x[:50], 0.90)
    assert short["estimate_ms"] is None and short["min_samples"] == 64


def test_latency_stats_carry_it():
    s = summarize(np.linspace(1, 2, 700), 1, 0, 1.0).to_dict()
    assert s["early_stopping"]["p90"]["samples"] == 700 and s["early_stopping"]["p99"]["estimate_ms"] is not None
