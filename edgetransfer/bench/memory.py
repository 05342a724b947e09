"""Peak resident memory of this process while a runner is loaded and running.

Linux: the kernel's high-water mark ``VmHWM`` (``/proc/self/status``) is reset by writing ``5``
to ``/proc/self/clear_refs`` (Linux >= 4.0, Documentation/filesystems/proc.rst), so the peak of
one phase is read exactly, with no sampling thread competing with the timed loop. Where the
reset is refused, a daemon thread samples the resident set every ``interval_s`` instead (the
method is recorded). Elsewhere (no /proc) the figures are ``None``.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib() -> float | None:
    """Current resident set size of this process in MiB (``VmRSS``; None without /proc)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else None


def _reset_hwm() -> bool:
    try:
        with open(_CLEAR, "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryStats:
    """MiB. ``rss_before_mib``: resident set before loading the runner; ``peak_rss_mib``: highest
    resident set while it was loaded and running; ``growth_mib`` = peak - before (what loading and
    running the artifact cost); ``method``: ``vmhwm`` or ``sampled`` (or ``unavailable``)."""

    rss_before_mib: float | None
    peak_rss_mib: float | None
    growth_mib: float | None
    method: str

    def to_dict(self):
        return asdict(self)


class PeakMemory:
    """``with PeakMemory() as pm: ...``; then ``pm.stats`` (a :class:`MemoryStats`)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.stats: MemoryStats | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_kib = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            k = _status_kib("VmRSS") or 0
            self._peak_kib = max(self._peak_kib, k)

    def __enter__(self) -> "PeakMemory":
        self._before = _status_kib("VmRSS")
        self._method = "unavailable" if self._before is None else ("vmhwm" if _reset_hwm() else "sampled")
        if self._method == "sampled":
            self._peak_kib = self._before or 0
            self._thread = threading.Thread(target=self._sample, name="edgetransfer-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        now = _status_kib("VmRSS")
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self._method == "unavailable":
            self.stats = MemoryStats(None, None, None, "unavailable")
            return
        peak = _status_kib("VmHWM") if self._method == "vmhwm" else self._peak_kib
        peak = max(peak or 0, now or 0)
        before = self._before or 0
        self.stats = MemoryStats(before / 1024, peak / 1024, max(0, peak - before) / 1024, self._method)
