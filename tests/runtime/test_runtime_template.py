"""The runner template (public infer() checks the feeds, then infer_impl()) and the registry as
the only runtime list: a toy runtime registered from this test is benchmarked into the report,
accepted in a target profile (``targets show``) and checked by the remote device probe."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ..fixtures.cli import cli
from ..fixtures.colour import write_colour_onnx
from ..fixtures.images import colour_folder
from edgetransfer.artifacts import read_manifest
from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
from edgetransfer.errors import ConfigError, TargetError
from edgetransfer.runtime import Runner, known_runtimes, probe_modules, register_runner, runtime_names, unregister_runner
from edgetransfer.runtime.ort import OnnxRuntimeRunner, onnx_logits
from edgetransfer.targets import load_target
from edgetransfer.types import Format

pytest.importorskip("onnxruntime")


class ToyRunner(Runner):
    """A plug-in runtime in a few lines: ONNX Runtime underneath, logits scaled by 1 (same top-1)."""

    backend_module = "json"  # always importable: the probe must report it as installed
    extra = "toy"
    calls = 0

    def activate(self) -> None:
        self.active = True

    def infer_impl(self, feeds):
        type(self).calls += 1
        return {"logits": onnx_logits(self.path, feeds["input"]).astype(np.float32)}


@pytest.fixture
def toy():
    register_runner(Format.ONNX, "toy")(ToyRunner)
    yield ToyRunner
    unregister_runner(Format.ONNX, "toy")


def test_a_registered_toy_runtime_reaches_the_report_the_target_and_the_probe(tmp_path, toy, capsys):
    assert "toy" in runtime_names() and "toy" in known_runtimes() and probe_modules()["toy"] == "json"
    yaml = tmp_path / "toy-box.yaml"
    yaml.write_text("name: toy-box\ndescription: a board with the toy runtime\narch: x86_64\n"
                    "runtimes: [toy, onnxruntime]\nprecisions: [fp32]\n")
    # targets show: the profile loads with the new runtime and prints it
    assert cli(["targets", "show", str(yaml)]) == 0
    assert json.loads(capsys.readouterr().out)["runtimes"] == ["toy", "onnxruntime"]
    # the report: one row per artifact x runtime, the toy measured like any other
    write_colour_onnx(tmp_path / "b")
    val = colour_folder(tmp_path / "val", per_class=2)
    rep = benchmark_bundle(tmp_path / "b", load_target(yaml), data=val, write=True,
                           settings=BenchSettings(batch_sizes=(1,), warmup=0, min_iterations=3, min_seconds=0.0, e2e=False))
    rows = {r["runtime"]: r for r in rep["results"]}
    assert set(rows) == {"toy", "onnxruntime"}
    assert rows["toy"]["status"] == "ok" and rows["toy"]["accuracy"]["top1"] == rows["onnxruntime"]["accuracy"]["top1"] == 1.0
    assert rows["toy"]["latency"][0]["iterations"] >= 3 and ToyRunner.calls >= 6 + 3
    assert "| toy |" in (tmp_path / "b" / "report.md").read_text()
    # the device probe (the script the remote benchmark runs on a board) checks the toy's module
    from edgetransfer.remote.bench import probe_script

    out = subprocess.run([sys.executable, "-c", probe_script()], capture_output=True, text=True, timeout=60).stdout
    probe = json.loads(out.split("@@edgetransfer:probe ", 1)[1])
    assert probe["modules"]["json"] == "installed"


def test_an_unregistered_runtime_in_a_profile_names_the_known_ones(tmp_path):
    yaml = tmp_path / "bad.yaml"
    yaml.write_text("name: bad\ndescription: t\narch: x86_64\nruntimes: [nosuch]\nprecisions: [fp32]\n")
    with pytest.raises(TargetError, match=r"'nosuch' is not a runtime; known runtimes: .*onnxruntime.*litert"):
        load_target(yaml)


def test_infer_checks_feeds_before_the_runtime_sees_them(tmp_path):
    path = write_colour_onnx(tmp_path)
    r = OnnxRuntimeRunner(path, read_manifest(path))
    x = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(ConfigError, match="not active; call activate"):
        r.infer({"input": x})
    with r:
        assert r.infer({"input": x})["logits"].shape == (2, 3)
        with pytest.raises(ConfigError, match=r"NHWC; the model takes NCHW .*transpose\(0, 3, 1, 2\)"):
            r(np.zeros((2, 16, 16, 3), np.float32))
        with pytest.raises(ConfigError, match=r"dtype float64, expected float32; pass x.astype\(np.float32\)"):
            r(x.astype(np.float64))
        with pytest.raises(ConfigError, match=r"3 dimensions .* add the batch axis with x\[None\]"):
            r(x[0])
        with pytest.raises(ConfigError, match="dimension 2 is 8, the model's is fixed to 16"):
            r(np.zeros((1, 3, 8, 16), np.float32))
        with pytest.raises(ConfigError, match="not C-contiguous"):
            r(np.asfortranarray(x))
        with pytest.raises(ConfigError, match="is a list, not a numpy array"):
            r.infer({"input": x.tolist()})
        with pytest.raises(ConfigError, match=r"unknown input\(s\) \['extra'\]"):
            r.infer({"input": x, "extra": x})
        # the latency loop checks once, then times infer_impl alone
        call = r.timed_call(np.ascontiguousarray(x[:1]))
        assert call()["logits"].shape == (1, 3)
    assert not r.active
