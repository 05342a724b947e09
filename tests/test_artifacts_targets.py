import json

import numpy as np
import pytest

from edgetransfer.artifacts import Manifest, atomic_path, read_manifest, sha256_file, write_manifest
from edgetransfer.bench.latency import measure_latency, summarize
from edgetransfer.errors import ArtifactError, TargetError
from edgetransfer.targets import list_targets, load_target


def test_manifest_sha256_matches_and_tamper_is_refused(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"abc" * 100)
    m = write_manifest(f, Manifest(format="onnx", precision="fp32", file=""))
    import hashlib

    assert m.sha256 == hashlib.sha256(b"abc" * 100).hexdigest() == sha256_file(f)
    assert json.loads((tmp_path / "m.bin.json").read_text())["sha256"] == m.sha256
    assert read_manifest(f).size_bytes == 300
    f.write_bytes(b"abd" * 100)
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        read_manifest(f)


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert f.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_x86_cpu_target_fields():
    t = load_target("x86-cpu")
    assert "x86-cpu" in list_targets()
    assert t.quantization.activation_type == "uint8" and t.quantization.per_channel
    assert t.benchmark.batch_sizes == (1, 8) and t.max_top1_drop == 0.005
    assert not t.supports("fp16")
    with pytest.raises(TargetError, match="does not support fp16"):
        t.require_precision("fp16")


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError, match="known targets: .*x86-cpu"):
        load_target("no-such-board")


def test_bad_target_values_are_rejected(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\ndescription: d\narch: x\nruntimes: [onnxruntime]\nprecisions: [fp8]\n")
    with pytest.raises(TargetError, match="fp8"):
        load_target(p)
    p.write_text("name: t\ndescription: d\narch: x\nruntimes: [onnxruntime]\nprecisions: [int8]\n"
                 "quantization: {activation_type: uint8, symmetric_activations: true}\n")
    with pytest.raises(TargetError, match="symmetric_activations needs activation_type: int8"):
        load_target(p)


def test_percentiles_on_known_sample():
    s = summarize(np.arange(1, 101, dtype=float), batch_size=4, warmup=0, seconds=1.0)
    assert s.p50_ms == pytest.approx(50.5) and s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5) and s.min_ms == 1.0
    assert s.throughput_ips == pytest.approx(4 * 1000 / 50.5)


def test_measure_latency_honours_min_iterations_and_seconds():
    import time

    calls = []
    s = measure_latency(lambda: (calls.append(1), time.sleep(0.001)), 1, warmup=3, min_iterations=20, min_seconds=0.1)
    assert s.iterations >= 20 and s.seconds >= 0.1 and len(calls) == s.iterations + 3
    assert s.p50_ms >= 1.0
    # a very fast call stops at max_iterations even before min_seconds
    s = measure_latency(lambda: None, 1, warmup=0, min_iterations=5, min_seconds=10.0, max_iterations=100)
    assert s.iterations == 100
