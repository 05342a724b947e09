"""Runners: registry, input validation, execution providers from the target, OpenVINO vs ORT."""

from __future__ import annotations

import numpy as np
import pytest

from ..fixtures.colour import write_colour_onnx
from edgetransfer.artifacts import read_manifest
from edgetransfer.errors import ConfigError, TargetError
from edgetransfer.runtime import get_runner_class, registered, runtimes_for
from edgetransfer.runtime.ort import OnnxRuntimeRunner, resolve_providers, tensorrt_ep_options
from edgetransfer.targets import load_target
from edgetransfer.types import Format, Runtime


def test_registry_has_one_runner_per_runtime():
    keys = registered()
    assert (Format.ONNX, Runtime.ONNXRUNTIME) in keys
    assert (Format.ONNX, Runtime.OPENVINO) in keys
    assert (Format.CHECKPOINT, Runtime.TORCH) in keys
    assert get_runner_class("onnx", "openvino").extra == "openvino"
    assert get_runner_class("checkpoint", "torch").extra == "train"
    assert set(runtimes_for(Format.ONNX)) >= {Runtime.ONNXRUNTIME, Runtime.OPENVINO}
    with pytest.raises(ConfigError, match="registered"):
        get_runner_class("tflite", "onnxruntime")


def test_ort_runner_validates_inputs(tmp_path):
    path = write_colour_onnx(tmp_path)
    with OnnxRuntimeRunner(path, read_manifest(path)) as r:
        x = np.zeros((2, 3, 16, 16), np.float32)
        r.validate({"input": x})
        with pytest.raises(ConfigError, match=r"expected \['batch', 3, 16, 16\]"):
            r.validate({"input": np.zeros((2, 3, 8, 8), np.float32)})
        with pytest.raises(ConfigError, match="dtype float64, expected float32"):
            r.validate({"input": x.astype(np.float64)})
        with pytest.raises(ConfigError, match="missing input 'input'"):
            r.validate({"x": x})
        with pytest.raises(ConfigError, match="C-contiguous"):
            r.validate({"input": np.asfortranarray(x)})
        assert r(x).shape == (2, 3)


def test_providers_come_from_the_target_and_a_missing_one_is_reported(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    avail = ort.get_available_providers()
    chain, missing = resolve_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert chain == ["CPUExecutionProvider"] and missing == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert resolve_providers(["CUDAExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]  # CPU always closes the chain

    yaml = tmp_path / "gpu.yaml"
    yaml.write_text("name: gpu-test\ndescription: t\narch: x86_64\nruntimes: [onnxruntime]\nprecisions: [fp32, fp16, int8]\n"
                    "execution_providers: [TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]\n")
    tgt = load_target(yaml)
    path = write_colour_onnx(tmp_path / "b")
    m = read_manifest(path)
    opts = OnnxRuntimeRunner.options_for(tgt, m, tmp_path / "cache")
    names = [p[0] if isinstance(p, tuple) else p for p in opts["providers"]]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts["providers"][0][1]["trt_engine_cache_path"] == str(tmp_path / "cache")
    with OnnxRuntimeRunner(path, m, options=opts) as r:
        info = r.runtime_info()
        assert info["requested_providers"] == names
        assert info["providers"] == r.session.get_providers()
        if "CUDAExecutionProvider" not in avail:
            assert info["execution_provider"] == "CPUExecutionProvider"
            assert "CUDAExecutionProvider" in info["fallback"]  # never a silent CPU figure under a GPU name
    with pytest.raises(TargetError, match="execution_providers"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.read_text().replace("CUDAExecutionProvider,", "cuda,"))
        load_target(bad)


def test_tensorrt_ep_options_follow_precision():
    assert tensorrt_ep_options("fp16", None) == {"trt_fp16_enable": True, "trt_int8_enable": False}
    o = tensorrt_ep_options("int8", None)
    assert o["trt_int8_enable"] and not o["trt_fp16_enable"]
    assert not any(tensorrt_ep_options("fp32", None).values())


def test_openvino_runner_matches_onnxruntime(tmp_path):
    pytest.importorskip("openvino")
    path = write_colour_onnx(tmp_path)
    m = read_manifest(path)
    x = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    ov_cls = get_runner_class("onnx", "openvino")
    assert ov_cls.is_available()
    with ov_cls(path, m, threads=1) as ov, OnnxRuntimeRunner(path, m, threads=1) as ort:
        a, b = ov(x), ort(x)
        assert a.shape == (5, 3)
        assert np.abs(a - b).max() < 1e-5
        assert ov(x[:1]).shape == (1, 3)  # dynamic batch
        info = ov.runtime_info()
        assert info["execution_provider"] == "OpenVINO CPU (f32)"  # fp32 artifact: no silent bf16
        assert info["threads"] == 1
        assert ov.input_specs[0]["shape"][1:] == [3, 16, 16] and ov.input_specs[0]["dtype"] == "float32"
