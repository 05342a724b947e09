"""Paired INT8-vs-fp32 timing (edgetransfer.bench.paired): the ratio of interleaved rounds on a fake
clock (no timing is asserted on the real one), the judgement deciding not_faster on it, and the
benchmark writing it for a real INT8 row."""

from __future__ import annotations

import json
import time

import pytest

from edgetransfer.bench.judgement import judge_rows
from edgetransfer.bench.paired import paired_ratio

from .test_bench_judgement import _data, _row


def test_a_slow_spell_cancels_in_the_per_round_ratio(monkeypatch):
    """The fp32 call takes 2 ms and the INT8 call 1 ms on a fake clock; in rounds 2-3 the host is 3x slower for
    both. Rows timed one after another could read 6 ms vs 1 ms; every round's ratio is 0.5."""
    now, state = [0], {"syncs": 0, "round": 0}
    monkeypatch.setattr(time, "perf_counter_ns", lambda: now[0])

    def make(ms):
        def call():
            now[0] += int(ms * (3 if state["round"] in (2, 3) else 1) * 1e6)
        return call

    def parent_sync():  # measure_latency syncs once after the warm-up, then after each of the 10 timed calls
        state["syncs"] += 1
        if state["syncs"] % 11 == 1:  # the parent's warm-up is over: a new round starts (parent first, then child)
            state["round"] += 1

    r = paired_ratio(make(1.0), make(2.0), 1, rounds=5, calls=10, warmup=2, parent_sync=parent_sync)
    assert state["round"] == 5
    assert r["ratio"] == pytest.approx(0.5) and r["ratio_iqr"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert r["parent_p50_ms"] == pytest.approx(2.0) and r["p50_ms"] == pytest.approx(1.0)  # medians over rounds
    assert r["rounds"] == 5 and r["calls_per_round"] == 10
    with pytest.raises(ValueError, match="rounds and calls must be >= 1"):
        paired_ratio(make(1.0), make(2.0), 1, rounds=0)


def test_not_faster_is_decided_on_the_paired_ratio_when_there_is_one():
    ref, y = _data()
    rows = [_row("model.onnx", "fp32", 1.0, ref, reference=True), _row("model.int8.qdq.onnx", "int8", 2.19, ref + 0.01)]
    rows[1]["speed_paired"] = {"ratio": 0.5, "ratio_iqr": [0.48, 0.52], "p50_ms": 0.6, "parent_p50_ms": 1.2, "rounds": 9,
                               "calls_per_round": 25, "batch_size": 1, "vs": "model.onnx"}
    splits = {"test": slice(0, 200)}
    judge_rows(rows, {}, y, splits, 0.005, ["a", "b"], host_is_target=True)
    sp = rows[1]["speed_vs_fp32"]
    assert rows[1]["not_faster"] is False and sp["ratio"] == 0.5 and sp["method"].startswith("paired, 9 interleaved")
    assert sp["ratio_iqr"] == [0.48, 0.52]
    # no paired figure (e.g. its runner failed): the sequential rows decide, and the reason says so
    rows[1]["speed_paired"] = {"error": "RuntimeError: boom"}
    judge_rows(rows, {}, y, splits, 0.005, ["a", "b"], host_is_target=True)
    assert rows[1]["not_faster"] is True and "(sequential rows)" in rows[1]["not_faster_reason"]
    assert rows[1]["speed_vs_fp32"]["ratio"] == pytest.approx(2.19) and "ratio_iqr" not in rows[1]["speed_vs_fp32"]


def test_the_benchmark_times_each_int8_row_against_its_parent(tiny_bundle):
    """The session's real bundle (tiny model; fp32 + INT8 ONNX on ONNX Runtime, and OpenVINO when installed):
    every measured INT8 row carries a paired ratio over 9 rounds against the fp32 ONNX on its runtime, the
    judgement used it, and report.md says what the speed column is."""
    report = json.loads((tiny_bundle / "report.json").read_text())
    int8 = [r for r in report["results"] if r["precision"] == "int8" and r["status"] == "ok"]
    assert int8
    for r in int8:
        sp = r["speed_paired"]
        assert sp["vs"] == "model.onnx" and sp["rounds"] == 9 and sp["calls_per_round"] == 25 and sp["batch_size"] == 1
        assert sp["ratio"] > 0 and sp["ratio_iqr"][0] <= sp["ratio"] <= sp["ratio_iqr"][1]
        assert r["speed_vs_fp32"]["ratio"] == sp["ratio"] and r["speed_vs_fp32"]["method"].startswith("paired")
    assert "interleaved rounds of 25 calls each" in (tiny_bundle / "report.md").read_text()
