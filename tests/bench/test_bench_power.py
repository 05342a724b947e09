"""Power readers on recorded Jetson and Raspberry Pi file layouts (tests/fixtures/boards/*-power,
sources in its README), the sampler's figures, and the benchmark's power section."""

from __future__ import annotations

import shutil

import pytest

from ..fixtures import BOARDS
from ..fixtures.bundles import FAST
from ..fixtures.colour import write_colour_onnx
from ..fixtures.images import colour_folder
from edgetransfer.bench import benchmark as bench_mod
from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
from edgetransfer.bench.power import energy_figures, power_setup
from edgetransfer.bench.power_sensors import find_power_source, hwmon_source, parse_tegrastats
from edgetransfer.bench.report import to_markdown
from edgetransfer.targets import load_target


def recorded(board: str):
    """(root, run): the board's files and its recorded command outputs (``_commands/``)."""
    root = BOARDS / board

    def run(argv):
        p = root / "_commands" / ("+".join(argv) + ".txt")
        return p.read_text() if p.exists() else None

    return str(root), run


@pytest.mark.parametrize("board, kind, rails, summed, watts", [
    ("jetson-orin-nano-power", "ina3221 hwmon", ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"], ["VDD_IN"], 5.064 * 1.020),
    ("jetson-xavier-nx-jp5-power", "ina3221 hwmon", ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"], ["VDD_IN"], 5.032 * 0.980),
    # AGX Orin has no module-input rail: the four connected rails of its two INA3221s are summed, the NC channels skipped
    ("jetson-agx-orin-power", "ina3221 hwmon", ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"],
     ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"], 4.984 * .780 + 4.992 * .200 + 5.000 * .410 + 4.996 * .060),
    ("jetson-nano-jp46-power", "ina3221x iio", ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"], ["POM_5V_IN"], 1.890),
])
def test_jetson_rails_labels_come_from_the_board(board, kind, rails, summed, watts):
    root, run = recorded(board)
    src = find_power_source(root, run, tegrastats=False)
    assert (src.kind, src.rails, src.summed) == (kind, rails, summed)
    assert src.total(src.read()) == pytest.approx(watts, rel=1e-9)


def test_pi5_pmic_sums_rails_and_says_it_under_reads():
    root, run = recorded("raspberry-pi-5-power")
    src = find_power_source(root, run, tegrastats=False)
    assert src.kind == "vcgencmd pmic_read_adc" and len(src.rails) == 12
    assert "EXT5V" not in src.rails and "BATT" not in src.rails  # voltage only: no current to multiply
    r = src.read()
    assert r["VDD_CORE"] == pytest.approx(0.67664 * 0.72549)
    assert src.total(r) == pytest.approx(1.60637, abs=1e-5)
    assert "under-reads" in src.note


def test_tegrastats_lines_jetpack6_and_jetpack4():
    orin = parse_tegrastats((BOARDS / "jetson-orin-nano-power/_commands/tegrastats.txt").read_text())
    assert orin == {"VDD_IN": 5.136, "VDD_CPU_GPU_CV": 0.601, "VDD_SOC": 1.441}  # current value, not the running average
    nano = parse_tegrastats((BOARDS / "jetson-nano-jp46-power/_commands/tegrastats.txt").read_text())
    assert nano == {"POM_5V_IN": 1.890, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.336}


def test_this_host_and_a_bare_tree_have_no_power_sensor(tmp_path):
    assert find_power_source(str(tmp_path), lambda argv: None, tegrastats=False) is None
    if shutil.which("tegrastats") or shutil.which("vcgencmd"):
        pytest.skip("this host has tegrastats or vcgencmd")
    src, info = power_setup(True, 0.1, root=str(tmp_path))
    assert src is None and info["sensor"] is None and info["reason"].startswith("no power sensor")


def test_energy_figures():
    f = energy_figures([5.0, 6.0, 7.0], mean_ms=20.0, batch_size=4, idle_w=2.0)
    assert f["mean_power_w"] == 6.0 and f["mj_per_inference"] == pytest.approx(6.0 * 5.0)
    assert f["mj_per_inference_above_idle"] == pytest.approx(4.0 * 5.0) and f["samples"] == 3
    assert energy_figures([5.0], 20.0, 1, 2.0)["mj_per_inference"] is None


def test_benchmark_reports_energy_per_artifact(tmp_path, monkeypatch):
    """A recorded Orin Nano whose VDD_IN current doubles between the idle measurement and the run."""
    board = tmp_path / "board"
    shutil.copytree(BOARDS / "jetson-orin-nano-power", board)
    curr = board / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr1_input"

    def setup(enabled, idle_seconds):
        src, info = power_setup(enabled, 0.2, source=hwmon_source(str(board)))
        curr.write_text("2040\n")
        return src, info

    monkeypatch.setattr(bench_mod, "power_setup", setup)
    write_colour_onnx(tmp_path / "b", ("red", "green", "blue"))
    val = colour_folder(tmp_path / "val", ("red", "green", "blue"), per_class=2)
    rep = benchmark_bundle(tmp_path / "b", load_target("x86-cpu"), data=val,
                           settings=BenchSettings(**{**FAST, "min_seconds": 0.4}, e2e=False), write=False)
    assert rep["power"]["sensor"] == "ina3221 hwmon" and rep["power"]["summed"] == ["VDD_IN"]
    assert rep["power"]["idle_w"] == pytest.approx(5.064 * 1.020)
    row = next(r for r in rep["results"] if r["name"] == "model.onnx")
    lat = row["latency"][0]
    p = row["power"]
    assert p["samples"] >= 2 and p["mean_power_w"] == pytest.approx(5.064 * 2.040)
    assert p["mj_per_inference"] == pytest.approx(p["mean_power_w"] * lat["mean_ms"] / lat["batch_size"])
    assert p["mj_per_inference_above_idle"] == pytest.approx(5.064 * 1.020 * lat["mean_ms"] / lat["batch_size"])
    md = to_markdown(rep)
    assert "sensor `ina3221 hwmon`" in md and "summed: VDD_IN" in md


def test_report_without_sensor_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_mod, "power_setup", lambda enabled, idle: power_setup(enabled, idle, root=str(tmp_path / "no-sysfs")))
    if shutil.which("tegrastats") or shutil.which("vcgencmd"):
        pytest.skip("this host has tegrastats or vcgencmd")
    write_colour_onnx(tmp_path / "b", ("red", "green", "blue"))
    val = colour_folder(tmp_path / "val", ("red", "green", "blue"), per_class=2)
    rep = benchmark_bundle(tmp_path / "b", load_target("x86-cpu"), data=val, settings=BenchSettings(**FAST, e2e=False), write=False)
    assert all("power" not in r for r in rep["results"])
    assert "Power: no power sensor" in to_markdown(rep)
