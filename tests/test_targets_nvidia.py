"""Jetson / NVIDIA GPU target profiles: the facts they state, and the validation that rejects
profiles TensorRT could not honour."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from edgetransfer.cli import app
from edgetransfer.errors import TargetError
from edgetransfer.targets import _parse, load_target, targets_dir, tensorrt_version_matches
from edgetransfer.types import Precision, Runtime

GPU_TARGETS = ["jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-agx-orin", "x86-nvidia-gpu"]


# (name, tensorrt_version, compute_capability, dla_cores, opset_max, int8?) from NVIDIA's support
# matrices and onnx-tensorrt's operator docs (sources in each YAML)
FACTS = [
    ("jetson-nano", "8.2", "5.3", 0, 13, False),
    ("jetson-xavier-nx", "8.5", "7.2", 2, 17, True),
    ("jetson-orin-nano", "10.3", "8.7", 0, 20, True),
    ("jetson-agx-orin", "10.3", "8.7", 2, 20, True),
    ("x86-nvidia-gpu", ">=10", None, 0, 20, True),
]


@pytest.mark.parametrize("name,trt,cc,dla,opset,int8", FACTS)
def test_gpu_target_facts(name, trt, cc, dla, opset, int8):
    t = load_target(name)
    assert Runtime.TENSORRT in t.runtimes and "engine" in t.formats
    assert (t.tensorrt_version, t.compute_capability, t.dla_cores, t.opset_max) == (trt, cc, dla, opset)
    assert t.supports(Precision.INT8) is int8
    assert t.supports(Precision.FP16)
    q = t.quantization  # TensorRT consumes symmetric signed INT8, zero point 0, per-channel weights
    assert (q.activation_type, q.weight_type, q.symmetric_activations, q.symmetric_weights, q.per_channel) == ("int8", "int8", True, True, True)
    assert q.quantize_bias is False and q.dedicated_qdq_pair and q.placement == "tensorrt"
    # INT8 weight initializers behind DequantizeLinear from TensorRT 10; 8.x quantizes float weights itself
    assert q.qdq_pair_on_weights is trt.startswith("8.")
    p = t.profile_batch
    assert p.min == 1 and p.min <= p.opt <= p.max and all(p.min <= b <= p.max for b in t.benchmark.batch_sizes)
    assert t.workspace_mib and t.workspace_mib >= 256
    if name.startswith("jetson"):
        assert t.arch == "aarch64" and t.jetpack and t.l4t
    else:
        assert t.min_compute_capability == "7.5" and t.arch == "x86_64"


@pytest.mark.parametrize("name", GPU_TARGETS)
def test_non_obvious_values_carry_a_reason(name):
    text = (targets_dir() / f"{name}.yaml").read_text()
    assert "Source" in text or "support matrix" in text.lower()
    lines = {ln.split(":", 1)[0].strip(): ln for ln in text.splitlines() if ":" in ln and not ln.lstrip().startswith("#")}
    for key in ("precisions", "opset_max", "workspace_mib", "activation_type", "warmup"):
        if key in lines:
            assert "#" in lines[key], f"{name}: {key} has no why-comment"


def _raw(name):
    return yaml.safe_load((targets_dir() / f"{name}.yaml").read_text())


def test_int8_on_compute_capability_53_is_rejected():
    raw = _raw("jetson-nano")
    raw["precisions"] = ["fp32", "fp16", "int8"]
    with pytest.raises(TargetError, match="5.3 has no INT8"):
        _parse("bad", raw, "bad.yaml")


def test_tensorrt_target_needs_symmetric_signed_preset():
    raw = _raw("jetson-orin-nano")
    raw["quantization"].update(activation_type="uint8", symmetric_activations=False)
    with pytest.raises(TargetError, match="symmetric signed INT8"):
        _parse("bad", raw, "bad.yaml")
    raw = _raw("jetson-orin-nano")
    raw["quantization"]["quantize_bias"] = True
    with pytest.raises(TargetError, match="quantize_bias"):
        _parse("bad", raw, "bad.yaml")


@pytest.mark.parametrize("change,match", [
    ({"profile_batch": {"min": 1, "opt": 1, "max": 4}}, r"batch sizes \[8\] are outside profile_batch"),
    ({"profile_batch": {"min": 2, "opt": 1, "max": 4}}, "min <= opt <= max"),
    ({"compute_capability": "sm87"}, "major.minor"),
    ({"tensorrt_version": "ten"}, "tensorrt_version"),
    ({"tensorrt_version": None}, "does not set tensorrt_version"),
    ({"workspace_mib": 0}, "workspace_mib"),
    ({"dla_cores": -1}, "dla_cores"),
    ({"formats": ["onnx"]}, "add 'engine'"),
    ({"profile_batch": {"min": 1, "opt": 1, "max": 8, "extra": 3}}, "extra"),
])
def test_bad_gpu_profiles_are_rejected(change, match):
    raw = {**_raw("jetson-orin-nano"), **change}
    with pytest.raises(TargetError, match=match):
        _parse("bad", raw, "bad.yaml")


@pytest.mark.parametrize("spec,version,ok", [
    ("10.3", "10.3.0.30", True), ("10.3", "10.30.1", False), ("8.5", "8.5.2.2", True), ("8.2", "8.5.2", False),
    (">=10", "10.3.0", True), (">=10", "11.0.1.2", True), (">=10", "8.6.1", False), (">=10.8", "10.3.0", False),
])
def test_tensorrt_version_spec(spec, version, ok):
    assert tensorrt_version_matches(spec, version) is ok


def test_cli_targets_list_and_show():
    r = CliRunner().invoke(app, ["targets", "list"], terminal_width=250)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["targets", "show", "jetson-agx-orin"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["dla_cores"] == 2 and d["compute_capability"] == "8.7" and d["profile_batch"] == {"min": 1, "opt": 1, "max": 32}
    assert d["quantization"]["activation_type"] == "int8" and d["quantization"]["no_output_qdq_ops"] == ["Conv", "Gemm", "MatMul"]
    r = CliRunner().invoke(app, ["targets", "show", "jetson-tx2"])
    assert isinstance(r.exception, TargetError)
    assert "jetson-orin-nano" in str(r.exception) and "jetson-nano" in str(r.exception)
