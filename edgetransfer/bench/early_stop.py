"""MLPerf LoadGen's early-stopping percentile estimate for a single-stream run: a latency
percentile that holds at a stated confidence given how many samples were taken, and the number of
samples a run needs before it can report that percentile at all.

LoadGen (mlcommons/inference, ``loadgen/early_stopping.cc`` and ``results.cc``,
``PerformanceSummary::EarlyStopping``, SingleStream, tolerance 0, confidence 0.99): with ``n``
queries sorted ascending, ``t`` is the largest count such that ``n >= h(t) + t``, where ``h(t)`` is
the fewest under-latency queries for which P(at most ``t`` over-latency queries among ``h + t`` |
over-latency rate ``1 - p``) < ``1 - c`` (a binomial tail, LoadGen's regularized incomplete beta
``I_p(h, t + 1)``). The estimate is ``sorted[n - t]``: LoadGen prints "would discard ``t - 1``
highest latency queries". A run needs at least ``h(1) + 1`` queries (64 for p90, 662 for p99).
Since the odds fall as ``h`` grows, ``n >= h(t) + t`` is the same as ``P(Binom(n, 1 - p) <= t) <
1 - c``, which is what :func:`discard_count` evaluates.
"""

from __future__ import annotations

from functools import lru_cache
from math import exp, lgamma, log
from typing import Any, Sequence

import numpy as np

CONFIDENCE = 0.99


def binom_cdf(t: int, n: int, q: float) -> float:
    """P(X <= t) for X ~ Binomial(n, q), summed in log space (exact to float precision)."""
    if t < 0:
        return 0.0
    if t >= n:
        return 1.0
    lq, lp = log(q), log(1.0 - q)
    base = lgamma(n + 1)
    return min(1.0, sum(exp(base - lgamma(k + 1) - lgamma(n - k + 1) + k * lq + (n - k) * lp) for k in range(t + 1)))


def _passes(n: int, t: int, p: float, c: float) -> bool:
    return binom_cdf(t, n, 1.0 - p) < 1.0 - c


@lru_cache(maxsize=64)
def min_samples(p: float, c: float = CONFIDENCE) -> int:
    """Fewest queries for which the p-percentile can be reported: ``h(1) + 1`` (64 for p90 at 99 %)."""
    n = 2
    while not _passes(n, 1, p, c):
        n *= 2
    lo, hi = n // 2, n
    while lo < hi:
        mid = (lo + hi) // 2
        if _passes(mid, 1, p, c):
            hi = mid
        else:
            lo = mid + 1
    return lo


def discard_count(n: int, p: float, c: float = CONFIDENCE) -> int | None:
    """``t - 1``, the highest latencies LoadGen discards for ``n`` samples (2048 samples, p90:
    172); None when ``n`` < :func:`min_samples`."""
    if n < min_samples(p, c):
        return None
    lo, hi = 1, n - 1  # largest t that passes (passing is monotone: smaller t passes too)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _passes(n, mid, p, c):
            lo = mid
        else:
            hi = mid - 1
    return lo - 1


def early_stopping(latencies_ms: Sequence[float], p: float, c: float = CONFIDENCE) -> dict[str, Any]:
    """``{"percentile", "confidence", "samples", "min_samples", "discarded", "estimate_ms"}``;
    ``estimate_ms`` is None (with ``min_samples`` saying how many are needed) for a short run."""
    x = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    n = int(x.size)
    d = discard_count(n, p, c) if n else None
    return {"percentile": p, "confidence": c, "samples": n, "min_samples": min_samples(p, c), "discarded": d,
            "estimate_ms": float(x[n - (d + 1)]) if d is not None else None}
