"""Power sensors of the boards the benchmark runs on: find one, read its rails in watts.

Sources, in the order they are tried (the first that has rails wins):

1. **INA3221 hwmon** (Jetson Linux 35/36 = JetPack 5/6: Orin Nano, AGX Orin, Xavier NX on JP5):
   ``/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon*/`` with ``in[123]_label`` (the rail
   name, read from the board), ``in[123]_input`` (bus voltage, mV) and ``curr[123]_input``
   (current, mA); watts = mV * mA / 1e6. Layout: Linux ``Documentation/hwmon/ina3221.rst``; rail
   names per module: NVIDIA Jetson Linux Developer Guide, "Platform Power and Performance" /
   "Software-Based Power Consumption Modeling" (Orin Nano/NX: ``VDD_IN``, ``VDD_CPU_GPU_CV``,
   ``VDD_SOC``; AGX Orin: ``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``, ``VDDQ_VDD2_1V8AO``).
   Channels labelled ``NC`` (not connected) or the shunt sum (``in7``/``curr4``) are skipped.
2. **INA3221x IIO** (L4T 32 = JetPack 4: Nano, TX2, Xavier NX on JP4):
   ``/sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device*/rail_name_<n>`` with
   ``in_power<n>_input`` (mW) (L4T 32 Developer Guide, "Power Monitoring": ``POM_5V_IN``,
   ``POM_5V_GPU``, ``POM_5V_CPU`` on the Nano).
3. **tegrastats** (any Jetson where sysfs is not readable): ``NAME CUR mW/AVG mW`` fields (JP5/6)
   or ``NAME CUR/AVG`` (JP4), current value taken (NVIDIA "tegrastats Utility").
4. **vcgencmd pmic_read_adc** (Raspberry Pi 5 firmware): ``NAME_A current(i)=XA`` and
   ``NAME_V volt(j)=YV`` per PMIC rail; watts = sum of V x A over rails reporting both. It
   UNDER-READS the board: the 5 V input has a voltage (``EXT5V_V``) but no current, so USB, fan,
   HATs and the PMIC's own conversion losses are missing (see the fixtures' README).

Which rails are summed (:func:`summed_rails`): a board-input rail (``VDD_IN``, ``POM_5V_IN``) alone
when there is one (it already contains the others); otherwise every connected rail.
Readers take ``root`` (a directory standing for ``/``) and ``run`` (a command runner), so they are
tested on recorded boards under ``tests/fixtures/boards/``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # a rail that measures the whole module's input
SKIP_LABELS = ("NC", "SUM OF SHUNT VOLTAGES")
PI_UNDER_READ = ("vcgencmd pmic_read_adc has no current for the 5 V input (EXT5V_V is a voltage only): the sum of the PMIC rails "
                 "misses USB, fan, HATs and conversion losses, so it under-reads the board's draw")

Runner = Callable[[list], "str | None"]


def run_command(argv: list) -> str | None:
    """Output of ``argv`` (stdout), or None when it is missing or fails (2 s limit)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _num(text: str | None) -> float | None:
    try:
        return float(str(text).strip())
    except (TypeError, ValueError):
        return None


def summed_rails(rails: list[str]) -> list[str]:
    """The rails whose sum is the reported power: one board-input rail when present, else all."""
    for name in INPUT_RAILS:
        if name in rails:
            return [name]
    return list(rails)


@dataclass
class PowerSource:
    """One sensor: ``read()`` -> {rail: watts} (empty when a read fails); ``total(reading)`` sums
    :attr:`summed`. ``interval_s``: how often to sample it (a command is slower than a file)."""

    kind: str
    rails: list[str]
    reader: Callable[[], dict[str, float]]
    note: str | None = None
    interval_s: float = 0.05
    summed: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.summed = self.summed or summed_rails(self.rails)

    def read(self) -> dict[str, float]:
        return self.reader()

    def total(self, reading: dict[str, float]) -> float | None:
        vals = [reading[r] for r in self.summed if r in reading]
        return sum(vals) if len(vals) == len(self.summed) else None

    def describe(self) -> dict:
        return {"sensor": self.kind, "rails": list(self.rails), "summed": list(self.summed), "note": self.note}

    def close(self) -> None:  # tegrastats: stop its process
        pass


# -- 1. INA3221 hwmon -------------------------------------------------------------------------------
def hwmon_channels(root: str = "/") -> list[tuple[str, str, str]]:
    """(label, voltage file, current file) of every connected INA3221 hwmon channel under root."""
    out = []
    pattern = os.path.join(root, "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*")
    for d in sorted(glob.glob(pattern)):
        for ch in (1, 2, 3):
            label = _read(os.path.join(d, f"in{ch}_label"))
            v, c = os.path.join(d, f"in{ch}_input"), os.path.join(d, f"curr{ch}_input")
            if not label or label.upper() in SKIP_LABELS or not (os.path.exists(v) and os.path.exists(c)):
                continue
            out.append((label, v, c))
    return out


def hwmon_source(root: str = "/") -> PowerSource | None:
    chans = hwmon_channels(root)
    if not chans:
        return None

    def read() -> dict[str, float]:
        res = {}
        for label, v, c in chans:
            mv, ma = _num(_read(v)), _num(_read(c))
            if mv is not None and ma is not None:
                res[label] = mv * ma / 1e6
        return res

    return PowerSource("ina3221 hwmon", [c[0] for c in chans], read)


# -- 2. INA3221x IIO (JetPack 4) ------------------------------------------------------------------
def iio_channels(root: str = "/") -> list[tuple[str, str]]:
    """(rail name, power file in mW) of every INA3221x IIO channel under root (JetPack 4)."""
    out = []
    for d in sorted(glob.glob(os.path.join(root, "sys/bus/i2c/drivers/ina3221x/*/iio:device*"))):
        for name_file in sorted(glob.glob(os.path.join(d, "rail_name_*"))):
            n = name_file.rsplit("_", 1)[1]
            label, p = _read(name_file), os.path.join(d, f"in_power{n}_input")
            if label and label.upper() not in SKIP_LABELS and os.path.exists(p):
                out.append((label, p))
    return out


def iio_source(root: str = "/") -> PowerSource | None:
    chans = iio_channels(root)
    if not chans:
        return None

    def read() -> dict[str, float]:
        return {label: mw / 1e3 for label, p in chans if (mw := _num(_read(p))) is not None}

    return PowerSource("ina3221x iio", [c[0] for c in chans], read)


# -- 3. tegrastats -----------------------------------------------------------------------------------
_TEGRA_RAIL = re.compile(r"\b((?:VDD|POM|VIN)_[A-Z0-9_]+)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")


def parse_tegrastats(line: str) -> dict[str, float]:
    """One tegrastats line -> {rail: watts} (the current value of each ``NAME CUR/AVG`` field)."""
    return {m.group(1): int(m.group(2)) / 1e3 for m in _TEGRA_RAIL.finditer(line or "")}


class _Tegrastats:
    """``tegrastats --interval MS`` in the background; :meth:`read` returns its latest line's rails."""

    def __init__(self, interval_ms: int = 100):
        self.proc = subprocess.Popen(["tegrastats", "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.latest: dict[str, float] = {}
        self.first = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            rails = parse_tegrastats(line)
            if rails:
                self.latest = rails
                self.first.set()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def tegrastats_source() -> PowerSource | None:
    if shutil.which("tegrastats") is None:
        return None
    t = _Tegrastats()
    if not t.first.wait(3.0):
        t.close()
        return None
    src = PowerSource("tegrastats", sorted(t.latest), lambda: dict(t.latest), interval_s=0.1,
                      note="tegrastats prints every 100 ms; each sample is its latest line")
    src.close = t.close  # type: ignore[method-assign]
    return src


# -- 4. Raspberry Pi 5 PMIC ---------------------------------------------------------------------
_PMIC = re.compile(r"^\s*(\S+?)_([AV])\s+(?:current|volt)\(\d+\)=([0-9.eE+-]+)[AV]\s*$")


def parse_pmic_adc(text: str) -> dict[str, float]:
    """``vcgencmd pmic_read_adc`` output -> {rail: watts} for rails with both a current and a
    voltage line (``EXT5V`` and ``BATT`` have only a voltage and are left out)."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in (text or "").splitlines():
        m = _PMIC.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    return {r: amps[r] * volts[r] for r in amps if r in volts}


def pmic_source(run: Runner = run_command) -> PowerSource | None:
    first = run(["vcgencmd", "pmic_read_adc"])
    rails = parse_pmic_adc(first or "")
    if not rails:
        return None
    return PowerSource("vcgencmd pmic_read_adc", sorted(rails), lambda: parse_pmic_adc(run(["vcgencmd", "pmic_read_adc"]) or ""),
                       note=PI_UNDER_READ, interval_s=0.2)


def find_power_source(root: str = "/", run: Runner = run_command, tegrastats: bool = True) -> PowerSource | None:
    """The first power sensor of this board (see the module docstring), or None ("no power sensor")."""
    return hwmon_source(root) or iio_source(root) or pmic_source(run) or (tegrastats_source() if tegrastats else None)
