"""What state a board is in: release, power mode, clocks, CPU governor, temperatures, throttling.

Latency measured on a throttled or power-capped board is meaningless, so every remote result
carries a :class:`BoardState` taken before and after the run, and :func:`state_warnings` turns
it into warnings for the report.

Two steps, so the parsers can be tested on recorded copies of real boards' files:

1. a :class:`BoardSnapshot` — the raw text of the files and command outputs listed below,
   taken on the board by :func:`snapshot_script` (one constant ``sh`` script, no user input
   except the quoted work directory) or read back from a directory laid out like the board's
   file system (``tests/fixtures/boards/<board>/``, commands under ``_commands/``);
2. :meth:`BoardState.from_snapshot` — pure parsing.

Sources (Linux sysfs ABI, NVIDIA Jetson Linux developer guide, Raspberry Pi documentation):

* ``/etc/nv_tegra_release`` — ``# R35 (release), REVISION: 4.1, ...`` = L4T 35.4.1 (Jetson only);
* ``nvpmodel -q`` (``NV Power Mode: NAME`` then the mode id), ``/var/lib/nvpmodel/status``
  (``pmode:0001``) and ``/etc/nvpmodel.conf`` (``< POWER_MODEL ID=0 NAME=MAXN >``);
* ``/sys/devices/system/cpu/cpu*/cpufreq/{scaling_governor,scaling_{cur,min,max}_freq,cpuinfo_max_freq}`` (kHz);
  ``jetson_clocks`` pins every CPU's ``scaling_min_freq`` to its maximum and the GPU devfreq
  ``min_freq`` to ``max_freq`` (``/sys/class/devfreq/*/{cur,min,max}_freq``, Hz);
* ``/sys/class/thermal/thermal_zone*/{type,temp,trip_point_*_{temp,type}}`` (millidegrees C);
* ``vcgencmd get_throttled`` (Raspberry Pi firmware): ``throttled=0x50005``, bits 0-3 "now",
  bits 16-19 "has occurred since boot".
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .snapshot import COMMANDS_DIR, MARK, SNAPSHOT_COMMANDS, SNAPSHOT_FILES, BoardSnapshot, parse_snapshot, snapshot_script  # noqa: F401

# L4T (Jetson Linux) release -> JetPack, from NVIDIA's JetPack archive / release notes.
L4T_TO_JETPACK = {
    "32.4.3": "4.4", "32.4.4": "4.4.1", "32.5.0": "4.5", "32.5.1": "4.5.1", "32.5.2": "4.5.1", "32.6.1": "4.6",
    "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
}

# vcgencmd get_throttled bits (Raspberry Pi documentation, "vcgencmd" page).
THROTTLE_BITS = {
    0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit active",
    16: "under-voltage", 17: "ARM frequency capped", 18: "throttled", 19: "soft temperature limit",
}


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def parse_l4t(text: str | None) -> tuple[str | None, str | None]:
    """``/etc/nv_tegra_release`` -> (``"35.4.1"``, board ``"t186ref"``) or (None, None)."""
    if not text:
        return None, None
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    if not m:
        return None, None
    rev = m.group(2).strip(".")
    l4t = f"{m.group(1)}.{rev}" if rev.count(".") >= 1 else f"{m.group(1)}.{rev}.0"
    b = re.search(r"BOARD:\s*([^,\s]+)", text)
    return l4t, b.group(1) if b else None


def parse_os_release(text: str | None) -> str | None:
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def parse_nvpmodel_conf(text: str | None) -> dict[int, str]:
    """``< POWER_MODEL ID=0 NAME=MAXN >`` lines -> ``{0: "MAXN", ...}``."""
    if not text:
        return {}
    return {int(i): n for i, n in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)\s*>", text)}


def parse_nvpmodel_query(text: str | None) -> tuple[int | None, str | None]:
    """``nvpmodel -q`` output (``NV Power Mode: 15W`` then ``0``) -> (0, "15W")."""
    if not text:
        return None, None
    m = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)", text)
    if m:
        return int(m.group(2)), m.group(1)
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return (None, m.group(1)) if m else (None, None)


def _watts(name: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)\s*W", name, re.I)
    return float(m.group(1)) if m else None


def max_power_mode(modes: dict[int, str]) -> tuple[int, str] | None:
    """The maximum-performance mode of an nvpmodel.conf: the one named MAXN*, else the one with
    the highest wattage in its name; ``None`` when neither rule decides."""
    maxn = sorted(i for i, n in modes.items() if "MAXN" in n.upper())
    if maxn:
        return maxn[0], modes[maxn[0]]
    watts = {i: w for i, n in modes.items() if (w := _watts(n)) is not None}
    if watts:
        best = max(watts.values())
        i = min(i for i, w in watts.items() if w == best)
        return i, modes[i]
    return None


def parse_throttled(text: str | None) -> dict[str, Any] | None:
    """``throttled=0x50005`` -> raw, bits, flags now and since boot."""
    if not text:
        return None
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    if not m:
        return None
    v = int(m.group(1), 0)
    now = [THROTTLE_BITS[b] for b in (0, 1, 2, 3) if v >> b & 1]
    since = [THROTTLE_BITS[b] for b in (16, 17, 18, 19) if v >> b & 1]
    return {"raw": hex(v), "value": v, "now": now, "since_boot": since}


def parse_df(text: str | None) -> float | None:
    """``df -Pk`` output -> free MiB of the file system holding the directory."""
    if not text:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    parts = lines[-1].split()
    return int(parts[3]) / 1024 if len(parts) >= 5 and parts[3].isdigit() else None


@dataclass
class BoardState:
    """Parsed board state. Frequencies: CPU in kHz, devfreq (GPU) in Hz; temperatures in °C.

    ``clocks_pinned``: every CPU's minimum frequency equals its hardware maximum and every GPU
    devfreq's minimum equals its maximum (what ``jetson_clocks`` does); ``None`` when the
    cpufreq files are not readable. ``power_mode``: ``{"id", "name", "max_id", "max_name",
    "is_max"}`` on Jetson (``is_max`` None when undecidable)."""

    arch: str | None = None
    kernel: str | None = None
    os: str | None = None
    model: str | None = None
    l4t: str | None = None
    l4t_board: str | None = None
    jetpack: str | None = None
    power_mode: dict[str, Any] | None = None
    cpus: list[dict[str, Any]] = field(default_factory=list)
    governors: list[str] = field(default_factory=list)
    devfreq: list[dict[str, Any]] = field(default_factory=list)
    clocks_pinned: bool | None = None
    thermal: list[dict[str, Any]] = field(default_factory=list)
    max_temp_c: float | None = None
    throttled: dict[str, Any] | None = None
    free_disk_mib: float | None = None

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BoardState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_snapshot(cls, snap: BoardSnapshot) -> "BoardState":
        f, c = snap.files, snap.commands
        st = cls()
        st.arch = (c.get("uname -m") or "").strip() or None
        st.kernel = (c.get("uname -sr") or "").strip() or None
        st.os = parse_os_release(f.get("/etc/os-release"))
        st.model = (f.get("/proc/device-tree/model") or "").strip() or None
        st.l4t, st.l4t_board = parse_l4t(f.get("/etc/nv_tegra_release"))
        if st.l4t:
            st.jetpack = L4T_TO_JETPACK.get(st.l4t)
            st.power_mode = _power_mode(f, c)
        # cpufreq
        cpus: dict[int, dict[str, Any]] = {}
        for path, text in f.items():
            m = re.match(r"^/sys/devices/system/cpu/cpu(\d+)/cpufreq/(\w+)$", path)
            if m:
                d = cpus.setdefault(int(m.group(1)), {"cpu": int(m.group(1))})
                key = {"scaling_governor": "governor", "scaling_cur_freq": "cur_khz", "scaling_min_freq": "min_khz",
                       "scaling_max_freq": "max_khz", "cpuinfo_max_freq": "hw_max_khz"}.get(m.group(2))
                if key:
                    d[key] = text.strip() if key == "governor" else _int(text)
        st.cpus = [cpus[k] for k in sorted(cpus)]
        st.governors = sorted({d["governor"] for d in st.cpus if d.get("governor")})
        # devfreq (GPU and other accelerators)
        dev: dict[str, dict[str, Any]] = {}
        for path, text in f.items():
            m = re.match(r"^/sys/class/devfreq/([^/]+)/(cur|min|max)_freq$", path)
            if m:
                dev.setdefault(m.group(1), {"name": m.group(1)})[f"{m.group(2)}_hz"] = _int(text)
        st.devfreq = [dev[k] for k in sorted(dev)]
        cpu_ok = [d for d in st.cpus if d.get("min_khz") is not None and (d.get("hw_max_khz") or d.get("max_khz")) is not None]
        if cpu_ok:
            gpus = [d for d in st.devfreq if re.search(r"gpu|g[apv]\d+b", d["name"]) and d.get("min_hz") is not None]
            st.clocks_pinned = all(d["min_khz"] >= (d.get("hw_max_khz") or d["max_khz"]) for d in cpu_ok) and all(
                d["min_hz"] >= (d.get("max_hz") or 0) for d in gpus)
        # thermal zones
        zones: dict[int, dict[str, Any]] = {}
        trips: dict[tuple[int, int], dict[str, Any]] = {}
        for path, text in f.items():
            m = re.match(r"^/sys/class/thermal/thermal_zone(\d+)/(type|temp|trip_point_(\d+)_(temp|type))$", path)
            if not m:
                continue
            z = zones.setdefault(int(m.group(1)), {"zone": int(m.group(1)), "type": None, "temp_c": None, "trips": []})
            if m.group(2) == "type":
                z["type"] = text.strip() or None
            elif m.group(2) == "temp":
                v = _int(text)
                z["temp_c"] = v / 1000 if v is not None else None
            else:
                t = trips.setdefault((int(m.group(1)), int(m.group(3))), {"trip": int(m.group(3))})
                if m.group(4) == "temp":
                    v = _int(text)
                    t["temp_c"] = v / 1000 if v is not None else None
                else:
                    t["type"] = text.strip()
        for (zi, _), t in sorted(trips.items()):
            zones[zi]["trips"].append(t)
        st.thermal = [zones[k] for k in sorted(zones)]
        temps = [z["temp_c"] for z in st.thermal if z["temp_c"] is not None and -40 < z["temp_c"] < 200]
        st.max_temp_c = max(temps) if temps else None
        st.throttled = parse_throttled(c.get("vcgencmd get_throttled"))
        st.free_disk_mib = parse_df(c.get("df"))
        return st


def _power_mode(f: dict[str, str], c: dict[str, str]) -> dict[str, Any] | None:
    modes = parse_nvpmodel_conf(f.get("/etc/nvpmodel.conf"))
    mid, name = parse_nvpmodel_query(c.get("nvpmodel -q"))
    if mid is None:
        m = re.search(r"pmode:(\d+)", f.get("/var/lib/nvpmodel/status") or "")
        if m:
            mid = int(m.group(1))
    if name is None and mid is not None:
        name = modes.get(mid)
    if mid is None and name is None:
        return None
    best = max_power_mode(modes) if modes else None
    if name and "MAXN" in name.upper():
        is_max: bool | None = True
    elif best is not None and mid is not None:
        is_max = mid == best[0]
    elif best is not None and name is not None:
        is_max = name == best[1]
    else:
        is_max = None
    return {"id": mid, "name": name, "max_id": best[0] if best else None, "max_name": best[1] if best else None, "is_max": is_max,
            "modes": {str(k): v for k, v in sorted(modes.items())}}


def _passive_trip(zone: dict[str, Any]) -> float | None:
    ts = [t["temp_c"] for t in zone.get("trips", []) if t.get("type") in ("passive", "hot") and t.get("temp_c") is not None]
    return min(ts) if ts else None


def state_warnings(before: BoardState | None, after: BoardState | None) -> list[str]:
    """Warnings for the report: not in the maximum-performance mode, clocks not pinned / CPU
    governor not ``performance``, a thermal zone at or above its passive trip point, Raspberry Pi
    throttling (now, during the run, or earlier since boot)."""
    out: list[str] = []
    st = before or after
    if st is None:
        return ["the board state could not be read: latency figures come without power/thermal context"]
    if st.is_jetson:
        pm = st.power_mode
        if pm is None:
            out.append("power mode unknown (nvpmodel -q and /var/lib/nvpmodel/status not readable): check it with 'sudo nvpmodel -q'")
        elif pm["is_max"] is False:
            out.append(f"power mode {pm['name']} (nvpmodel {pm['id']}) is not the maximum-performance mode {pm['max_name']}: "
                       f"latency is not the board's best; set it with 'sudo nvpmodel -m {pm['max_id']}'")
        elif pm["is_max"] is None:
            out.append(f"power mode {pm['name']} (nvpmodel {pm['id']}): cannot tell whether it is the maximum-performance mode "
                       "(/etc/nvpmodel.conf not readable)")
        if st.clocks_pinned is False:
            out.append("jetson_clocks is off (CPU/GPU clocks scale with load): latency includes frequency ramp-up; "
                       "run 'sudo jetson_clocks' for stable numbers")
    elif st.governors and st.governors != ["performance"] and not st.clocks_pinned:
        out.append(f"CPU governor {', '.join(st.governors)} (not performance): latency includes frequency ramp-up; for stable "
                   "numbers run 'echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor'")
    seen = set()
    for when, s in (("before", before), ("after", after)):
        if s is None:
            continue
        for z in s.thermal:
            trip = _passive_trip(z)
            if trip is not None and z["temp_c"] is not None and z["temp_c"] >= trip and z["zone"] not in seen:
                seen.add(z["zone"])
                out.append(f"thermal zone {z['type'] or z['zone']} was at {z['temp_c']:.1f} °C {when} the run, at or above its "
                           f"passive trip point {trip:.1f} °C: the board throttles; cool it down and re-run")
    tb = before.throttled if before else None
    ta = after.throttled if after else None
    if ta and ta["now"]:
        out.append(f"vcgencmd get_throttled = {ta['raw']} after the run: {', '.join(ta['now'])} now — results are throttled; "
                   "check the power supply and cooling")
    if ta and tb is not None:
        new = [x for x in ta["since_boot"] if x not in tb["since_boot"]]
        if new:
            out.append(f"throttling occurred during the run ({', '.join(new)}; vcgencmd get_throttled {tb['raw']} -> {ta['raw']})")
    earlier = tb if tb is not None else ta
    if earlier and earlier["since_boot"]:
        out.append(f"the board had throttled since boot {'before this run' if tb is not None else ''} "
                   f"({', '.join(earlier['since_boot'])}; vcgencmd get_throttled {earlier['raw']}): check the power supply and cooling".replace("  ", " "))
    return out


def state_summary(st: BoardState | None) -> str:
    """One line for reports: model, release, power mode, clocks, governor, max temperature."""
    if st is None:
        return "board state unknown"
    parts = [st.model or st.arch or "?"]
    if st.l4t:
        parts.append(f"L4T {st.l4t}" + (f" (JetPack {st.jetpack})" if st.jetpack else ""))
    elif st.os:
        parts.append(st.os)
    if st.power_mode:
        parts.append(f"nvpmodel {st.power_mode['name']}")
    if st.is_jetson and st.clocks_pinned is not None:
        parts.append("jetson_clocks " + ("on" if st.clocks_pinned else "off"))
    if st.governors:
        parts.append("governor " + "/".join(st.governors))
    if st.max_temp_c is not None:
        parts.append(f"max {st.max_temp_c:.1f} °C")
    if st.throttled:
        parts.append(f"throttled={st.throttled['raw']}")
    if not st.cpus and not st.thermal and not st.is_jetson and not st.throttled:
        parts.append("no cpufreq/thermal data readable (a VM or container?)")
    return ", ".join(parts)
