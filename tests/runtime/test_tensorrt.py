"""The TensorRT runner without TensorRT: registry, lazy imports, the refusal of an engine built
for another TensorRT version or GPU (checked on the manifest, before the engine is read), and
the benchmark rows a host without GPU reports for engines — never a number."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..fixtures.bundles import make_bundle
from edgetransfer.artifacts import Manifest, atomic_write_json, write_manifest
from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
from edgetransfer.runtime.ort import OnnxRuntimeRunner
from edgetransfer.errors import EngineMismatchError, MissingExtraError
from edgetransfer.runtime import get_runner_class
from edgetransfer.runtime import tensorrt as trt_mod
from edgetransfer.runtime.ort import make_session
from edgetransfer.runtime.tensorrt import DeviceFacts, TensorRTRunner, check_engine_compatible, same_tensorrt_version
from edgetransfer.targets import load_target
from edgetransfer.types import Format, Runtime, Status

REPO = Path(__file__).resolve().parents[2]


def fake_engine(d: Path, version="10.3.0.30", cc="8.7", name="model.jetson-orin-nano.fp16.engine", details=True) -> tuple[Path, Manifest]:
    p = d / name
    p.write_bytes(b"not a real engine")
    tensorrt = {"version": version, "compute_capability": cc, "device_name": "Orin", "requested_precision": "fp16",
                "profile": {"input": "input", "min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [16, 3, 16, 16]}, "dla_core": None}
    m = write_manifest(p, Manifest(format="engine", precision="fp16", file=p.name, target="jetson-orin-nano", class_names=["a", "b"],
                                   inputs=[{"name": "input", "shape": ["batch", 3, 16, 16], "dtype": "float32"}],
                                   details={"tensorrt": tensorrt} if details else {}))
    return p, m


def test_registered_and_lazy():
    assert get_runner_class(Format.ENGINE, Runtime.TENSORRT) is TensorRTRunner
    code = ("import sys, edgetransfer.runtime, edgetransfer.bench.benchmark, edgetransfer.builders.tensorrt; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'polygraphy', 'torch', 'onnx')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("a,b,same", [("10.3.0.30", "10.3.0", True), ("10.3.0.30", "10.3.0.26", False), ("8.5.2.2", "8.5.2", True),
                                      ("8.5.2", "8.6.1", False), ("10.3", "10.3.0.30", False), (None, "10.3.0", False)])
def test_same_tensorrt_version(a, b, same):
    assert same_tensorrt_version(a, b) is same


@pytest.mark.parametrize("device,words", [
    (DeviceFacts("Xavier", "7.2", "8.5.2.2"), ["TensorRT 10.3.0.30 (engine) vs 8.5.2.2 (this device)", "compute capability 8.7 (engine) vs 7.2"]),
    (DeviceFacts("Orin", "8.7", "10.4.0.26"), ["TensorRT 10.3.0.30 (engine) vs 10.4.0.26 (this device)"]),
    (DeviceFacts("NVIDIA H200", "9.0", "10.3.0.30"), ["compute capability 8.7 (engine) vs 9.0 (this device)"]),
])
def test_mismatched_engine_is_refused_before_it_is_read(tmp_path, monkeypatch, device, words):
    p, m = fake_engine(tmp_path)
    touched = []
    monkeypatch.setattr(trt_mod, "require", lambda *a, **k: touched.append(a) or (_ for _ in ()).throw(AssertionError("imported")))
    monkeypatch.setattr(Path, "read_bytes", lambda self: touched.append(self) or b"")
    runner = TensorRTRunner(p, m, options={"device": device})
    with pytest.raises(EngineMismatchError) as e:
        runner.activate()
    msg = str(e.value)
    for w in words:
        assert w in msg
    assert "rebuild it on this device" in msg and "--precision fp16" in msg and "--target jetson-orin-nano" in msg
    assert touched == []  # neither TensorRT nor the engine file was touched


def test_matching_engine_goes_on_to_tensorrt(tmp_path):
    p, m = fake_engine(tmp_path)
    check_engine_compatible(m, DeviceFacts("Orin", "8.7", "10.3.0.30"))
    runner = TensorRTRunner(p, m, options={"device": DeviceFacts("Orin", "8.7", "10.3.0.30")})
    if trt_mod.installed_tensorrt_version() is None:  # this host: the check passed, TensorRT itself is missing
        with pytest.raises(MissingExtraError, match=r"edgetransfer\[tensorrt\]"):
            runner.activate()


def test_engine_of_a_rebuilt_onnx_is_refused(tmp_path):
    b = make_bundle(tmp_path)
    p, m = fake_engine(b)
    m.parent_file, m.parent_sha256 = "model.onnx", "0" * 64  # built from an older model.onnx
    with pytest.raises(EngineMismatchError, match="built from an older model.onnx"):
        TensorRTRunner(p, m, options={"device": DeviceFacts("Orin", "8.7", "10.3.0.30")}).activate()


def test_engine_without_device_facts_is_refused(tmp_path):
    p, m = fake_engine(tmp_path, details=False)
    with pytest.raises(EngineMismatchError, match="cannot be matched to this device"):
        TensorRTRunner(p, m, options={"device": DeviceFacts("Orin", "8.7", "10.3.0.30")}).activate()


def test_ort_providers_from_the_target(tmp_path):
    m = Manifest(format="onnx", precision="int8", file="model.int8.qdq.onnx", sha256="ab" * 32)
    cache = tmp_path / ".trt-cache" / "ort" / m.sha256[:16]
    opts = OnnxRuntimeRunner.options_for(load_target("jetson-orin-nano"), m, cache)
    trt_ep, cuda, cpu = opts["providers"]
    assert trt_ep[0] == "TensorrtExecutionProvider" and trt_ep[1]["trt_int8_enable"] is True
    assert trt_ep[1]["trt_engine_cache_path"].endswith(".trt-cache/ort/" + "ab" * 8) and trt_ep[1]["trt_fp16_enable"] is False
    assert (cuda, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert OnnxRuntimeRunner.options_for(load_target("x86-cpu"), m, cache) == {"providers": ["CPUExecutionProvider"]}
    b = make_bundle(tmp_path / "b")
    sess = make_session(b / "model.onnx", providers=opts["providers"])  # EPs not installed here are dropped
    assert sess.get_providers()[-1] == "CPUExecutionProvider"


def test_report_rows_for_engines_on_a_host_without_gpu(tmp_path):
    pytest.importorskip("onnxruntime")
    b = make_bundle(tmp_path)
    shutil.copy(b / "model.onnx", b / "model.int8.qdq.onnx")  # any second ONNX: the rows are what is checked
    shutil.copy(b / "model.onnx.json", b / "model.int8.qdq.onnx.json")
    man = json.loads((b / "model.onnx.json").read_text())
    man.update(file="model.int8.qdq.onnx", precision="int8")
    atomic_write_json(b / "model.int8.qdq.onnx.json", man)
    p, _ = fake_engine(b)  # an engine built on a board, copied back with the bundle
    info = json.loads((b / "bundle.json").read_text())
    info["artifacts"] += [{"file": "model.int8.qdq.onnx"}, {"file": p.name}]
    atomic_write_json(b / "bundle.json", info)
    settings = BenchSettings(batch_sizes=(1,), warmup=0, min_iterations=3, min_seconds=0)
    report = benchmark_bundle(b, load_target("jetson-orin-nano"), settings=settings)
    rows = {r["name"]: r for r in report["results"]}
    assert rows["model.onnx"]["status"] == "ok" and rows["model.onnx"]["execution_provider"] == "CPUExecutionProvider"
    assert rows["model.onnx"]["latency"][0]["iterations"] >= 3
    for name in ("model.jetson-orin-nano.fp16.engine", "model.jetson-orin-nano.int8.engine"):
        r = rows[name]
        assert r["status"] == str(Status.NOT_RUNNABLE) and r["error"].startswith("not built on this host")
        assert r["latency"] == [] and r["accuracy"] is None
    assert "bash build_engine.sh int8" in rows["model.jetson-orin-nano.int8.engine"]["error"]
    assert report["host_is_target"] is False
    md = (b / "report.md").read_text()
    assert "not built on this host" in md and "a host measurement, not the target device" in md
