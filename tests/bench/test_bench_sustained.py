"""--sustained: sensors sampled during the run on a recorded board tree that heats up, the
first/last-window p50 and drift, throttle events by the stated rules, and the report/PNG."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from ..fixtures import BOARDS
from ..fixtures.bundles import FAST
from ..fixtures.colour import write_colour_onnx
from ..fixtures.images import colour_folder
from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
from edgetransfer.bench.sustained import BoardSensors, run_sustained, summarize_sustained, throttle_events, window_seconds
from edgetransfer.targets import load_target


def test_windows_drift_and_p50():
    t = np.arange(1, 601, dtype=float)  # 600 calls, one per second
    ms = np.where(t <= 60, 10.0, np.where(t >= 540, 12.5, 11.0))
    s = summarize_sustained(t, ms, [], 600)
    assert s["window_s"] == 60 and s["first_p50_ms"] == 10.0 and s["last_p50_ms"] == 12.5
    assert s["drift_pct"] == pytest.approx(25.0) and s["calls"] == 600
    assert window_seconds(100) == 25  # runs under 4 minutes use a quarter of the run


def test_throttle_rules():
    samples = [{"t": float(i), "cpu_mhz": 2400.0 if i < 5 else 1500.0, "throttled": 0x80008 if i in (6, 7) else 0x80000,
                "tripped": None} for i in range(1, 10)]
    ev = throttle_events(samples, window_s=4)
    assert [(e["rule"], e["start_s"], e["end_s"]) for e in ev] == [("cpu clock", 5.0, 9.0), ("firmware", 6.0, 7.0)]
    assert "soft temperature limit" in ev[1]["reason"]  # bit 3 now; bit 19 (since boot) alone is not an event
    assert "1500 MHz" in ev[0]["reason"]


def test_run_samples_a_board_that_heats_and_throttles(tmp_path):
    """The recorded Orin Nano tree: after 0.6 s its thermal zone passes the passive trip and the CPUs drop to half clock."""
    root = tmp_path / "orin"
    shutil.copytree(BOARDS / "jetson-orin-nano-jp512-7w", root)
    sensors = BoardSensors(str(root), run=lambda argv: None)
    assert sensors.zones and sensors.cpu_files
    kind, temp_file, trips = sensors.zones[0]
    assert trips, "the fixture has a passive trip point"
    cpu_max = max(float(open(f).read()) for f in sensors.cpu_files)

    def heat():
        time.sleep(0.6)
        open(temp_file, "w").write(f"{int((trips[0] + 2) * 1000)}\n")
        for f in sensors.cpu_files:
            open(f, "w").write(f"{int(cpu_max / 2)}\n")

    th = threading.Thread(target=heat)
    th.start()
    out = run_sustained(lambda: time.sleep(0.002), 1.6, sensors=sensors, every_s=0.1)
    th.join()
    rules = {e["rule"] for e in out["events"]}
    assert rules == {"cpu clock", "thermal trip"}
    assert all(e["start_s"] >= 0.5 for e in out["events"])
    assert out["samples"][0]["temp_c"] < trips[0] <= out["samples"][-1]["temp_c"]
    assert out["calls"] > 100 and out["first_p50_ms"] >= 2.0


def test_benchmark_sustained_section_and_plot(tmp_path):
    write_colour_onnx(tmp_path / "b", ("red", "green", "blue"))
    val = colour_folder(tmp_path / "val", ("red", "green", "blue"), per_class=2)
    rep = benchmark_bundle(tmp_path / "b", load_target("x86-cpu"), data=val,
                           settings=BenchSettings(**FAST, e2e=False, sustained=2.0, power=False), write=True)
    s = rep["sustained"]
    assert s["name"] == "model.onnx" and s["batch_size"] == 1 and s["seconds"] >= 2.0 and s["calls"] > 10
    assert s["first_p50_ms"] > 0 and s["last_p50_ms"] > 0 and len(s["rules"]) == 3
    assert len(s["samples"]) >= 1
    md = (tmp_path / "b" / "report.md").read_text()
    assert "Sustained run (model.onnx [onnxruntime], batch 1" in md and "drift" in md
    pytest.importorskip("matplotlib")
    assert s["plot"] == "sustained.png" and (tmp_path / "b" / "sustained.png").read_bytes()[:4] == b"\x89PNG"
