"""Paired speed of an INT8 artifact against its fp32 parent on the same runtime: both loaded at
once and timed in interleaved rounds (parent, artifact, parent, artifact, ...); the ratio is
taken per round and the report gives its median with the quartiles beside it.

Why. The report's latency rows are measured one artifact after another, seconds to minutes apart,
and on a shared, throttled or virtualised host a slow spell lands on one row and not on the next:
measured 2026-12-04 on the 2-CPU AMD EPYC host, the same hymenoptera INT8 file (byte-identical)
ran OpenVINO b1 p50 2.03 ms in one report (0.65x its fp32 parent: p90 2.38 ms) and 1.08 ms in the
next (0.38x); a subset run sharing the CPUs with another job flagged its ONNX Runtime INT8 row
``not_faster`` at 2.19x. Two figures taken milliseconds apart see the same host state, so the
drift cancels in their ratio; ``not_faster`` and ``speed_vs_fp32`` are decided on it. The same
method as ``benchmarks/quant_peers.py`` (interleaved rounds, median of the per-round ratios) and the
INT8 ladder's placement check (:func:`edgetransfer.quantize.placement.b1_pair_ms`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..runtime import get_runner_class
from ..runtime.base import deactivate_quietly
from ..targets import Target
from ..types import Precision, Status
from .judgement import fp32_parent
from .latency import measure_latency

ROUNDS = 9  # interleaved rounds; the median of 9 per-round ratios ignores up to 4 disturbed rounds
CALLS = 25  # timed calls per artifact and round (after WARMUP), the p50 of which is the round's figure
WARMUP = 5


def paired_ratio(call: Callable[[], object], parent_call: Callable[[], object], batch_size: int, *, rounds: int = ROUNDS,
                 calls: int = CALLS, warmup: int = WARMUP, sync: Callable[[], None] | None = None,
                 parent_sync: Callable[[], None] | None = None) -> dict[str, Any]:
    """``rounds`` interleaved rounds of ``calls`` timed calls (after ``warmup``) of ``parent_call``
    then ``call`` (each one batch of ``batch_size``). Returns ``ratio`` (median over rounds of the
    artifact's p50 / the parent's p50, dimensionless), ``ratio_iqr`` [q25, q75], ``p50_ms`` and
    ``parent_p50_ms`` (medians over rounds of the per-round p50s, ms per call), ``rounds``,
    ``calls_per_round``. Raises ValueError for ``rounds`` or ``calls`` < 1."""
    if rounds < 1 or calls < 1:
        raise ValueError(f"rounds and calls must be >= 1 (got {rounds}, {calls})")
    mine, theirs = [], []
    for _ in range(rounds):
        for fn, s, out in ((parent_call, parent_sync, theirs), (call, sync, mine)):
            out.append(measure_latency(fn, batch_size, warmup=warmup, min_iterations=calls, min_seconds=0,
                                       max_iterations=calls, sync=s).p50_ms)
    ratios = np.asarray(mine) / np.maximum(np.asarray(theirs), 1e-12)
    return {"ratio": float(np.median(ratios)), "ratio_iqr": [float(v) for v in np.percentile(ratios, [25, 75])],
            "p50_ms": float(np.median(mine)), "parent_p50_ms": float(np.median(theirs)), "rounds": rounds,
            "calls_per_round": calls}


def _runner(path: Path, manifest, runtime, target: Target, threads: int, cache_dir: Path):
    cls = get_runner_class(manifest.format, runtime)
    return cls(path, manifest, threads=threads, options=cls.options_for(target, manifest, cache_dir))


def measure_paired(results: list[dict[str, Any]], order: list[tuple], x: np.ndarray, target: Target, threads: int,
                   trt_cache: Path) -> None:
    """Add ``speed_paired`` to every measured INT8 row that has an fp32 parent measured on its
    runtime (:func:`.judgement.fp32_parent`): :func:`paired_ratio` at the row's smallest measured
    batch size, with ``batch_size`` and ``vs``; ``{"error": ...}`` when either runner fails (the
    row keeps its sequential figures). ``order``: the benchmark's (path, manifest, runtime) items;
    ``x`` float32 (N, 3, S, S)."""
    items = {(str(p), str(rt)): (p, m, rt) for p, m, rt in order}
    for r in results:
        if r["precision"] != str(Precision.INT8) or r["status"] == str(Status.FAILED) or not r.get("latency"):
            continue
        parent = fp32_parent(r, results)
        if parent is None or parent["runtime"] != r["runtime"]:
            continue
        b = min(s["batch_size"] for s in r["latency"])
        if not any(s["batch_size"] == b for s in parent.get("latency") or []):
            continue
        xb = np.ascontiguousarray(np.resize(x, (b,) + x.shape[1:]))
        runners = []
        try:
            for row in (r, parent):
                p, m, rt = items[(row["path"], row["runtime"])]
                runners.append(_runner(p, m, rt, target, threads, trt_cache / "ort" / (m.sha256 or "unknown")[:16]))
                runners[-1].activate()
            mine, theirs = runners
            r["speed_paired"] = {**paired_ratio(mine.timed_call(xb), theirs.timed_call(xb), b, sync=mine.synchronize,
                                                parent_sync=theirs.synchronize), "batch_size": b, "vs": parent["name"]}
        except Exception as exc:  # the sequential figures stay; the report says why there is no paired one
            r["speed_paired"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            for run in runners:
                deactivate_quietly(run)
