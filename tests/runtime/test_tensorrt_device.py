"""TensorRT on a real device: these run only where ``import tensorrt`` works, Polygraphy is
installed and a CUDA GPU is visible (a Jetson with JetPack 6, or an x86 machine with an NVIDIA
GPU and TensorRT 10+); everywhere else they skip with that reason."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from ..fixtures.bundles import make_bundle, quantize, tiny_onnx
from edgetransfer.artifacts import read_manifest, write_manifest
from edgetransfer.errors import ConfigError, EngineMismatchError, TargetError
from edgetransfer.runtime.tensorrt import TensorRTRunner, cuda_device, device_facts, installed_tensorrt_version
from edgetransfer.targets import load_target

HAVE = importlib.util.find_spec("polygraphy") is not None and installed_tensorrt_version() is not None and cuda_device() is not None
pytestmark = pytest.mark.skipif(not HAVE, reason="needs TensorRT's Python bindings, Polygraphy and a CUDA GPU "
                                                 "(TensorRT engines are built and tested on the device; not available here)")


@pytest.fixture(scope="module")
def target():
    from edgetransfer.builders.tensorrt import check_device_for_target, tensorrt_targets

    dev = device_facts()
    for name in tensorrt_targets():
        t = load_target(name)
        try:
            check_device_for_target(dev, t)
            return t
        except TargetError:
            continue
    pytest.skip(f"no target profile matches this device ({dev.describe()}); add one to targets/")


def _ort(path, x):
    from edgetransfer.runtime.ort import make_session

    return make_session(path).run(None, {"input": x})[0]


def test_fp16_engine_runs_and_matches_onnx(tmp_path, target):
    from edgetransfer.builders.tensorrt import build_engine

    b = make_bundle(tmp_path, opset=min(17, target.opset_max), target=target.name)
    m, reused = build_engine(b, target, "fp16")
    assert not reused and m.details["tensorrt"]["compute_capability"] == device_facts().compute_capability
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner(b / m.file, read_manifest(b / m.file)) as r:
        y = r(x)
        r.synchronize()
        with pytest.raises(ConfigError, match="optimisation profile"):
            r(np.zeros((target.profile_batch.max + 1, 3, 16, 16), np.float32))
    ref = _ort(b / "model.onnx", x)
    assert y.shape == ref.shape and np.abs(y - ref).max() < 2e-2
    assert build_engine(b, target, "fp16")[1] is True  # current: reused
    tiny_onnx(b / "model.onnx", opset=min(16, target.opset_max))  # re-export -> new sha256 -> rebuilt
    write_manifest(b / "model.onnx", read_manifest(b / "model.onnx", verify=False))
    m2, reused = build_engine(b, target, "fp16")
    assert not reused and m2.parent_sha256 != m.parent_sha256
    caches = sorted(p.name for p in (b / ".trt-cache").glob("timing-*.cache"))
    assert len(caches) == 2 and all(f"sm{device_facts().compute_capability.replace('.', '')}" in c for c in caches)


def test_int8_engine_from_the_tensorrt_qdq(tmp_path, target):
    from edgetransfer.builders.tensorrt import build_engine

    if not target.supports("int8"):
        pytest.skip(f"{target.name} has no INT8")
    b = make_bundle(tmp_path, opset=min(17, target.opset_max), target=target.name)
    quantize(b, target.quantization, target.name)
    m, _ = build_engine(b, target, "int8")
    assert m.precision == "int8" and m.parent_file == "model.int8.qdq.onnx"
    x = np.random.default_rng(1).normal(size=(8, 3, 16, 16)).astype(np.float32)
    with TensorRTRunner(b / m.file, read_manifest(b / m.file)) as r:
        y = r(x)
    q = _ort(b / "model.int8.qdq.onnx", x)
    assert np.abs(y - q).max() < 0.1 and (y.argmax(1) == q.argmax(1)).mean() >= 0.75


def test_tampered_manifest_is_refused(tmp_path, target):
    from edgetransfer.builders.tensorrt import build_engine

    b = make_bundle(tmp_path, opset=min(17, target.opset_max), target=target.name)
    m, _ = build_engine(b, target, "fp16")
    mp = b / (m.file + ".json")
    d = json.loads(mp.read_text())
    d["details"]["tensorrt"]["version"] = "7.0.0.11"
    mp.write_text(json.dumps(d))
    with pytest.raises(EngineMismatchError, match="TensorRT 7.0.0.11 \\(engine\\)"):
        TensorRTRunner(b / m.file, read_manifest(b / m.file)).activate()


def test_benchmark_measures_the_engine(tmp_path, target):
    from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
    from edgetransfer.builders.tensorrt import build_engine

    b = make_bundle(tmp_path, opset=min(17, target.opset_max), target=target.name)
    build_engine(b, target, "fp16")
    report = benchmark_bundle(b, target, settings=BenchSettings(batch_sizes=(1,), warmup=5, min_iterations=20, min_seconds=0))
    row = next(r for r in report["results"] if r["format"] == "engine" and r["precision"] == "fp16")
    assert row["status"] == "ok", row["error"]
    assert row["latency"][0]["iterations"] >= 20 and row["accuracy"]["agreement_with_fp32"] >= 0.75
