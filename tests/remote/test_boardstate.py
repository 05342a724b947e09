"""Board-state readers on recorded copies of Jetson and Raspberry Pi files (tests/fixtures/boards)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetransfer.remote.boardstate import (BoardSnapshot, BoardState, L4T_TO_JETPACK, max_power_mode, parse_l4t, parse_nvpmodel_query,
                                            parse_snapshot, parse_throttled, snapshot_script, state_summary, state_warnings)

from ..fixtures import BOARDS  # noqa: E402


def state(name: str) -> BoardState:
    return BoardState.from_snapshot(BoardSnapshot.from_directory(BOARDS / name))


def test_jetson_orin_nano_7w_not_max_and_clocks_off():
    st = state("jetson-orin-nano-jp512-7w")
    assert (st.l4t, st.jetpack, st.l4t_board) == ("35.4.1", "5.1.2", "t186ref")
    assert st.model == "NVIDIA Orin Nano Developer Kit" and st.arch == "aarch64" and st.os == "Ubuntu 20.04.6 LTS"
    assert st.power_mode["id"] == 1 and st.power_mode["name"] == "7W"
    assert (st.power_mode["max_id"], st.power_mode["max_name"], st.power_mode["is_max"]) == (0, "15W", False)
    assert [c["cpu"] for c in st.cpus] == [0, 1, 2, 3]  # cores 4-5 offline in 7W
    assert st.cpus[0] == {"cpu": 0, "governor": "schedutil", "cur_khz": 806400, "min_khz": 115200, "max_khz": 806400, "hw_max_khz": 1510400}
    assert st.devfreq == [{"name": "17000000.ga10b", "cur_hz": 306000000, "min_hz": 306000000, "max_hz": 408000000}]
    assert st.clocks_pinned is False
    assert len(st.thermal) == 6 and st.thermal[0]["type"] == "cpu-thermal" and st.thermal[0]["temp_c"] == pytest.approx(47.218)
    assert st.thermal[0]["trips"] == [{"trip": 0, "temp_c": 99.0, "type": "passive"}, {"trip": 1, "temp_c": 104.5, "type": "critical"}]
    assert st.max_temp_c == pytest.approx(47.218)
    assert st.free_disk_mib == pytest.approx(186467308 / 1024)
    w = state_warnings(st, st)
    assert len(w) == 2
    assert "7W (nvpmodel 1) is not the maximum-performance mode 15W" in w[0] and "sudo nvpmodel -m 0" in w[0]
    assert "jetson_clocks is off" in w[1]
    assert "L4T 35.4.1 (JetPack 5.1.2)" in state_summary(st) and "jetson_clocks off" in state_summary(st)


def test_jetson_agx_orin_maxn_with_clocks_has_no_warning():
    st = state("jetson-agx-orin-jp62-maxn-clocks")
    assert (st.l4t, st.jetpack) == ("36.4.3", "6.2")
    # no `nvpmodel -q` output (it needs root on this release): the mode comes from /var/lib/nvpmodel/status
    assert st.power_mode["id"] == 0 and st.power_mode["name"] == "MAXN" and st.power_mode["is_max"] is True
    assert len(st.cpus) == 12 and st.clocks_pinned is True
    assert st.max_temp_c == pytest.approx(52.125)
    assert state_warnings(st, st) == []


def test_jetson_thermal_trip_warns():
    snap = BoardSnapshot.from_directory(BOARDS / "jetson-agx-orin-jp62-maxn-clocks")
    snap.files["/sys/class/thermal/thermal_zone1/temp"] = "99500\n"  # gpu-thermal at its passive trip point
    hot = BoardState.from_snapshot(snap)
    w = state_warnings(state("jetson-agx-orin-jp62-maxn-clocks"), hot)
    assert len(w) == 1 and "gpu-thermal was at 99.5 °C after the run" in w[0] and "passive trip point 99.0 °C" in w[0]


def test_raspberry_pi_5_governor_and_throttling():
    cool, hot = state("raspberry-pi-5-cool"), state("raspberry-pi-5-hot")
    assert cool.model == "Raspberry Pi 5 Model B Rev 1.0" and cool.l4t is None and cool.power_mode is None
    assert cool.governors == ["ondemand"] and cool.clocks_pinned is False
    assert cool.throttled == {"raw": "0x0", "value": 0, "now": [], "since_boot": []}
    assert hot.throttled["now"] == ["soft temperature limit active"] and hot.throttled["since_boot"] == ["soft temperature limit"]
    assert hot.max_temp_c == pytest.approx(85.15) and hot.cpus[0]["cur_khz"] == 1500000
    w = state_warnings(cool, hot)
    assert len(w) == 3
    assert w[0].startswith("CPU governor ondemand (not performance)") and "scaling_governor" in w[0]
    assert "0x80008 after the run: soft temperature limit active now" in w[1]
    assert "throttling occurred during the run (soft temperature limit; vcgencmd get_throttled 0x0 -> 0x80008)" in w[2]
    # the same hot state before and after: it had throttled before this run
    w2 = state_warnings(hot, hot)
    assert any("had throttled since boot before this run" in x for x in w2)
    assert not any("during the run" in x for x in w2)


def test_parsers_edge_cases():
    assert parse_throttled("throttled=0x50005") == {"raw": "0x50005", "value": 0x50005, "now": ["under-voltage", "throttled"],
                                                    "since_boot": ["under-voltage", "throttled"]}
    assert parse_throttled("VCHI initialization failed") is None
    assert parse_l4t("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022") == ("32.7.1", "t210ref")
    assert L4T_TO_JETPACK["32.7.1"] == "4.6.1"
    assert parse_l4t("garbage") == (None, None)
    assert parse_nvpmodel_query("NV Power Mode: MAXN\n0\n") == (0, "MAXN")
    assert parse_nvpmodel_query("NVPM ERROR: failed to read PARAM ...") == (None, None)
    # no MAXN mode: the highest wattage in the names is the maximum (Xavier NX style names)
    assert max_power_mode({0: "MODE_15W_2CORE", 1: "MODE_10W_4CORE", 8: "MODE_20W_6CORE"}) == (8, "MODE_20W_6CORE")
    assert max_power_mode({0: "A", 1: "B"}) is None
    # nothing readable (a container): no warning invented, the summary says what is known
    st = BoardState.from_snapshot(BoardSnapshot(commands={"uname -m": "x86_64\n"}))
    assert st.clocks_pinned is None and st.max_temp_c is None and state_warnings(st, st) == []


def test_snapshot_output_round_trip(tmp_path):
    snap = BoardSnapshot.from_directory(BOARDS / "raspberry-pi-5-hot")
    # what the snapshot script prints on the board
    text = "Welcome banner\n" + "".join(f"@@edgetransfer:file:{p}\n{t}\n" for p, t in snap.files.items()) + \
        "".join(f"@@edgetransfer:cmd:{c}\n{t}\n" for c, t in snap.commands.items()) + "@@edgetransfer:end\n"
    parsed = parse_snapshot(text)
    assert BoardState.from_snapshot(parsed) == BoardState.from_snapshot(snap)
    again = BoardSnapshot.from_directory(parsed.write_directory(tmp_path / "rec"))
    assert BoardState.from_snapshot(again) == BoardState.from_snapshot(snap)
    script = snapshot_script("it's; rm -rf ~")
    assert "d='it'\"'\"'s; rm -rf ~'" in script  # the workdir is quoted, never interpolated


def test_snapshot_script_runs_here(tmp_path):
    """The constant sh script, run on this machine: parses into the facts this machine has."""
    import platform
    import subprocess

    out = subprocess.run(["sh", "-c", snapshot_script(str(tmp_path))], capture_output=True, text=True, timeout=60, check=True).stdout
    st = BoardState.from_snapshot(parse_snapshot(out))
    assert st.arch == platform.machine()
    assert st.free_disk_mib is not None and st.free_disk_mib > 0
    if Path("/etc/os-release").is_file():
        assert st.os
    if Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").is_file():
        assert st.governors


def test_board_not_matching_its_target_is_a_warning():
    from dataclasses import replace

    from edgetransfer.remote.bench import target_warnings
    from edgetransfer.targets import load_target

    x86 = load_target("x86-cpu")
    orin = state("jetson-orin-nano-jp512-7w")
    w = target_warnings(x86, orin)
    assert len(w) == 1 and "the board is aarch64 but its target x86-cpu describes x86_64" in w[0]
    jp6 = replace(x86, name="jetson-orin-nano", arch="aarch64", l4t="36.4")
    w = target_warnings(jp6, orin)
    assert len(w) == 1 and "L4T 35.4.1, its target jetson-orin-nano is for L4T 36.4" in w[0]
    assert target_warnings(replace(jp6, l4t="35.4.1"), orin) == [] and target_warnings(replace(jp6, l4t="35.4"), orin) == []
