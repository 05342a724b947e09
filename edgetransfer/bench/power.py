"""Energy per inference: sample a board's power sensor (:mod:`.power_sensors`) during a timed
loop, measure idle power before the run, turn both into the report's figures.

Figures per timed loop (one batch size of one artifact):

* ``mean_power_w`` — mean of the summed rails over the samples taken while the loop ran (W);
* ``mj_per_inference`` — ``mean_power_w * mean_ms / batch_size`` (W x ms = mJ, per image);
* ``mj_per_inference_above_idle`` — the same with ``mean_power_w - idle_w``: the energy the
  inference adds to a board that would be on anyway.

Sampling runs in a daemon thread of the benchmark process (a sysfs read every 50 ms, a command
every 100-200 ms); a loop shorter than two sampling intervals gets no figure (``samples`` says how
many it rests on). Without a sensor, :func:`power_setup` returns ``{"sensor": None, "reason":
"no power sensor ..."}`` and no row carries a number.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from .power_sensors import PowerSource, find_power_source

NO_SENSOR = "no power sensor"
MIN_SAMPLES = 2


class Sampler:
    """Read ``source`` every ``source.interval_s`` in a thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, source: PowerSource):
        self.source = source
        self.watts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            w = self.source.total(self.source.read())
            if w is not None:
                self.watts.append(w)
            self._stop.wait(self.source.interval_s)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.watts


@contextmanager
def sampling(source: PowerSource | None) -> Iterator[Sampler | None]:
    """``with sampling(src) as s: loop()`` -> ``s.watts`` (W) holds the samples taken during the loop."""
    if source is None:
        yield None
        return
    s = Sampler(source).start()
    try:
        yield s
    finally:
        s.stop()


def measure_idle(source: PowerSource, seconds: float = 2.0) -> float | None:
    """Mean power (W) over ``seconds`` with nothing of ours running (None: no usable sample)."""
    with sampling(source) as s:
        time.sleep(seconds)
    w = s.watts if s else []
    return sum(w) / len(w) if w else None


def power_setup(enabled: bool = True, idle_seconds: float = 2.0, source: PowerSource | None = None,
                root: str = "/") -> tuple[PowerSource | None, dict[str, Any]]:
    """(source or None, the report's ``power`` section: sensor, rails, summed, idle_w, note)."""
    if not enabled:
        return None, {"sensor": None, "reason": "power sampling switched off (--no-power)"}
    src = source or find_power_source(root)
    if src is None:
        return None, {"sensor": None, "reason": f"{NO_SENSOR}: no INA3221 rails in sysfs, no tegrastats, no vcgencmd pmic_read_adc"}
    info = src.describe()
    info["idle_w"] = measure_idle(src, idle_seconds)
    info["idle_seconds"] = idle_seconds
    info["interval_s"] = src.interval_s
    return src, info


def energy_figures(watts: list[float], mean_ms: float, batch_size: int, idle_w: float | None) -> dict[str, Any]:
    """The three figures of one timed loop from its power samples (W) and its mean latency (ms)."""
    n = len(watts)
    if n < MIN_SAMPLES:
        return {"mean_power_w": None, "mj_per_inference": None, "mj_per_inference_above_idle": None, "samples": n,
                "reason": f"{n} power sample(s) during the loop (need {MIN_SAMPLES}): run it longer (--min-seconds)"}
    mean_w = sum(watts) / n
    per = mean_ms / max(1, batch_size)
    return {"mean_power_w": mean_w, "mj_per_inference": mean_w * per,
            "mj_per_inference_above_idle": (mean_w - idle_w) * per if idle_w is not None else None, "samples": n}
