"""``--sustained SECONDS``: one artifact at batch 1, called back to back for SECONDS, with the
board's temperature, clocks, throttle flags (and power, where a sensor exists) sampled every
second during the run, not only before and after.

What the report states (``report["sustained"]``):

* ``first_p50_ms`` / ``last_p50_ms`` — p50 of the calls in the first and in the last window;
  the window is one minute, or a quarter of the run when it is shorter than 4 minutes;
* ``drift_pct`` = (last - first) / first x 100 (positive: the board got slower);
* ``events`` — throttle events, consecutive samples with the same reason merged, by these rules:

  1. ``firmware``: ``vcgencmd get_throttled`` has a "now" bit set (0 under-voltage, 1 ARM
     frequency capped, 2 throttled, 3 soft temperature limit; Raspberry Pi documentation);
  2. ``cpu clock``: the highest ``scaling_cur_freq`` of the CPUs is below 90 % of the highest
     seen in the first window (the governor or the thermal driver lowered it under load);
  3. ``thermal trip``: a thermal zone is at or above one of its ``passive`` trip points
     (Linux thermal sysfs ABI: the kernel starts cooling by throttling there).

Sensors are read from files under ``root`` (``/`` on the board; a recorded tree in the tests)
and ``vcgencmd`` through ``run``; none is required (missing ones are ``None`` in the samples).
"""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .power_sensors import PowerSource, Runner, run_command

CLOCK_DROP = 0.90  # rule 2: below 90 % of the first window's highest CPU clock
FIRMWARE_NOW_BITS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit"}
RULES = [
    "firmware: vcgencmd get_throttled reports under-voltage, ARM frequency capped, throttled or soft temperature limit now (bits 0-3)",
    f"cpu clock: the highest CPU scaling_cur_freq below {CLOCK_DROP:.0%} of the highest in the first window",
    "thermal trip: a thermal zone at or above one of its passive trip points",
]


def _read_num(path: str) -> float | None:
    try:
        with open(path) as fh:
            return float(fh.read().strip())
    except (OSError, ValueError):
        return None


@dataclass
class BoardSensors:
    """The files a sustained run samples (found once under ``root``)."""

    root: str = "/"
    run: Runner = run_command
    zones: list[tuple[str, str, list[float]]] = field(default_factory=list)  # (type, temp file, passive trips °C)
    cpu_files: list[str] = field(default_factory=list)
    gpu_files: list[str] = field(default_factory=list)
    has_vcgencmd: bool = False

    def __post_init__(self):
        j = lambda *p: os.path.join(self.root, *p)  # noqa: E731
        for z in sorted(glob.glob(j("sys/class/thermal/thermal_zone[0-9]*"))):
            try:
                kind = open(os.path.join(z, "type")).read().strip()
            except OSError:
                kind = os.path.basename(z)
            trips = []
            for tf in glob.glob(os.path.join(z, "trip_point_*_type")):
                try:
                    if open(tf).read().strip() == "passive" and (t := _read_num(tf[:-5] + "_temp")) is not None:
                        trips.append(t / 1000)
                except OSError:
                    pass
            if os.path.exists(os.path.join(z, "temp")):
                self.zones.append((kind, os.path.join(z, "temp"), sorted(trips)))
        self.cpu_files = sorted(glob.glob(j("sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")))
        self.gpu_files = [f for f in sorted(glob.glob(j("sys/class/devfreq/*/cur_freq")))
                          if any(k in f for k in ("gpu", "ga10b", "gv11b", "gp10b", "gm20b"))]
        self.has_vcgencmd = self.run(["vcgencmd", "get_throttled"]) is not None

    def sample(self) -> dict[str, Any]:
        """temp_c (max over zones), zone at/over a passive trip, cpu_mhz (max), gpu_mhz, throttled."""
        temps = [(k, t / 1000, trips) for k, f, trips in self.zones if (t := _read_num(f)) is not None]
        cpus = [v for f in self.cpu_files if (v := _read_num(f)) is not None]
        gpus = [v for f in self.gpu_files if (v := _read_num(f)) is not None]
        out: dict[str, Any] = {"temp_c": max((t for _, t, _ in temps), default=None),
                               "tripped": next((f"{k} {t:.1f} °C >= passive {trips[0]:.1f} °C" for k, t, trips in temps
                                                if trips and t >= trips[0]), None),
                               "cpu_mhz": max(cpus) / 1000 if cpus else None, "gpu_mhz": max(gpus) / 1e6 if gpus else None,
                               "throttled": None}
        if self.has_vcgencmd:
            text = self.run(["vcgencmd", "get_throttled"]) or ""
            if "=" in text:
                try:
                    out["throttled"] = int(text.strip().split("=", 1)[1], 16)
                except ValueError:
                    pass
        return out


def window_seconds(seconds: float) -> float:
    return 60.0 if seconds >= 240 else seconds / 4


def throttle_events(samples: list[dict[str, Any]], window_s: float) -> list[dict[str, Any]]:
    """Events by the three :data:`RULES`; each {rule, reason, start_s, end_s, samples}."""
    first = [s["cpu_mhz"] for s in samples if s["t"] <= window_s and s.get("cpu_mhz")]
    ref = max(first) if first else None
    events: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for s in samples:
        now: dict[str, str] = {}
        bits = s.get("throttled")
        if bits:
            flags = [n for b, n in FIRMWARE_NOW_BITS.items() if bits & (1 << b)]
            if flags:
                now["firmware"] = ", ".join(flags)
        if ref and s.get("cpu_mhz") and s["cpu_mhz"] < CLOCK_DROP * ref:
            now["cpu clock"] = f"CPU clock {s['cpu_mhz']:.0f} MHz < {CLOCK_DROP:.0%} of {ref:.0f} MHz"
        if s.get("tripped"):
            now["thermal trip"] = s["tripped"]
        for rule in list(open_):
            if rule not in now:
                events.append(open_.pop(rule))
        for rule, reason in now.items():
            if rule in open_:
                open_[rule].update(end_s=s["t"], samples=open_[rule]["samples"] + 1)
            else:
                open_[rule] = {"rule": rule, "reason": reason, "start_s": s["t"], "end_s": s["t"], "samples": 1}
    events += open_.values()
    return sorted(events, key=lambda e: e["start_s"])


def summarize_sustained(call_t: np.ndarray, call_ms: np.ndarray, samples: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The report's figures from call end times (s from the start), call latencies (ms) and sensor samples."""
    w = window_seconds(seconds)
    end = float(call_t[-1]) if call_t.size else 0.0
    first, last = call_ms[call_t <= w], call_ms[call_t >= end - w]
    f50 = float(np.percentile(first, 50)) if first.size else None
    l50 = float(np.percentile(last, 50)) if last.size else None
    return {"seconds": end, "calls": int(call_ms.size), "window_s": w, "first_p50_ms": f50, "last_p50_ms": l50,
            "drift_pct": (l50 - f50) / f50 * 100 if f50 and l50 is not None else None,
            "p50_ms": float(np.percentile(call_ms, 50)) if call_ms.size else None,
            "events": throttle_events(samples, w), "rules": list(RULES)}


def run_sustained(call: Callable[[], object], seconds: float, *, sensors: BoardSensors | None = None,
                  power: PowerSource | None = None, every_s: float = 1.0, sync: Callable[[], None] | None = None) -> dict[str, Any]:
    """Call ``call()`` back to back for ``seconds``; sample ``sensors`` (and ``power``) every
    ``every_s`` in a thread. Returns :func:`summarize_sustained`'s dict plus ``samples`` (each:
    t s, temp_c, cpu_mhz, gpu_mhz, throttled, power_w, p50_ms of the calls since the last sample)."""
    sensors = sensors or BoardSensors()
    samples: list[dict[str, Any]] = []
    ends: list[float] = []
    lat: list[float] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sampler() -> None:
        seen = 0
        while not stop.wait(every_s):
            s = {"t": time.perf_counter() - t0, **sensors.sample()}
            s["power_w"] = power.total(power.read()) if power is not None else None
            n = len(lat)
            s["p50_ms"] = float(np.percentile(lat[seen:n], 50)) if n > seen else None
            seen = n
            samples.append(s)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    clock = time.perf_counter
    try:
        while True:
            a = clock()
            call()
            if sync:
                sync()
            b = clock()
            lat.append((b - a) * 1e3)
            ends.append(b - t0)
            if b - t0 >= seconds:
                break
    finally:
        stop.set()
        th.join(timeout=5)
    out = summarize_sustained(np.asarray(ends), np.asarray(lat), samples, seconds)
    out["samples"] = samples
    out["sample_every_s"] = every_s
    return out
