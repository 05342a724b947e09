"""Export and INT8 on the real model and data: EfficientNet-Lite0 fine-tuned on hymenoptera
(the shared ``bees_bundle`` of the main job). The variants are written to tmp_path; the bundle
itself is not modified."""

from __future__ import annotations

import dataclasses

import pytest

from edgetransfer.artifacts import read_manifest
from edgetransfer.data import PreprocessSpec, load_arrays
from edgetransfer.bundle import Bundle
from edgetransfer.pipeline import quantization_preset
from edgetransfer.quantize.calibration import load_recipe, select_calibration_set
from edgetransfer.quantize.int8 import qdq_int8_from_onnx
from edgetransfer.onnx_inspect import inspect_qdq, tensorrt_violations
from edgetransfer.targets import load_target


@pytest.fixture(scope="module")
def real(bees_bundle):
    out, _ = bees_bundle
    b = Bundle.open(out)
    spec = PreprocessSpec.from_dict(read_manifest(out / "model.onnx").preprocessing)
    vx, vy = load_arrays(b.folder("val").samples, spec)
    recipe = dataclasses.replace(load_recipe("default"), num_samples=32)  # 32 images keep it quick
    cx, _ = load_arrays(select_calibration_set(b.folder("train"), recipe), spec)
    return {"bundle": out, "vx": vx, "vy": vy, "cx": cx, "recipe": recipe, "target": load_target("x86-cpu")}


@pytest.mark.slow
def test_export_manifest_on_the_real_model(bees_bundle):
    out, _ = bees_bundle
    d = read_manifest(out / "model.onnx").details
    assert d["exporter"] == "torch.onnx.export(dynamo=True)" and d["opset"] == 18
    assert d["parity"]["num_samples"] == 76 and d["parity"]["agreement"] == 1.0  # val: 153 less the 77 carved for test
    assert d["parity"]["max_abs"] <= 1e-3 and d["parity"]["mean_abs"] <= 1e-4
    assert d["graph"]["value_info"] > 100  # shape inference kept in the file


@pytest.mark.slow
def test_per_channel_never_notably_worse_than_per_tensor_and_opt_on_off(real, tmp_path):
    """EfficientNet-Lite0 is a depthwise-convolution network: per-channel weight scales must not
    lose to per-tensor ones (agreement within 1 image, logit error not larger)."""
    res = {}
    for pc in (True, False):
        preset = quantization_preset(real["target"], None, pc)
        m = qdq_int8_from_onnx(real["bundle"] / "model.onnx", tmp_path / f"{pc}.onnx", real["cx"], preset, real["recipe"],
                               parity_x=real["vx"], parity_y=real["vy"], cache_dir=tmp_path / "cache")
        res[pc] = m.details
        # graph optimisations on (fused u8s8 kernels) and off (reference Q/DQ) compute the same function
        oo = m.details["optimizations_on_off"]
        assert oo["rel_logit_diff"] <= 0.05 and oo["decisive_flips"] <= oo["allowed_flips"]  # edgetransfer.gates
        assert abs(oo["top1_on"] - oo["top1_off"]) <= 2 / 76 and oo["passed"]
        assert isinstance(m.details["cpu"]["cpu_features"], list)  # recorded with the INT8 result
    assert res[False]["calibration_cache"]["reused"]  # per-tensor shares the per-channel ranges
    pc, pt = res[True]["parity"], res[False]["parity"]
    assert pc["agreement"] >= pt["agreement"] - 1 / 76
    assert pc["mean_abs"] <= pt["mean_abs"]
    assert res[True]["val_top1_drop"] <= 2 / 76 + 1e-9 and pc["agreement"] >= 0.97  # at most 2 of val's 76 images


@pytest.mark.slow
def test_tensorrt_preset_on_the_real_model(real, tmp_path):
    preset = quantization_preset(real["target"], "tensorrt")
    m = qdq_int8_from_onnx(real["bundle"] / "model.onnx", tmp_path / "trt.onnx", real["cx"], preset, real["recipe"],
                           parity_x=real["vx"], parity_y=real["vy"], opset_max=real["target"].opset_max)
    s = inspect_qdq(tmp_path / "trt.onnx")
    assert set(s.zero_point_types) == {"int8"} and not s.nonzero_zero_points
    assert tensorrt_violations(s, opset_max=real["target"].opset_max) == []
    assert m.details["opset"] <= real["target"].opset_max
    # TensorRT placement (quantize/tensorrt_qdq.py): one Q per quantized input, a DQ per Q and per INT8 weight
    pl, counts = m.details["tensorrt_placement"], m.details["node_counts"]
    assert m.details["preset"]["name"] == "tensorrt" and counts["QuantizeLinear"] == pl["num_quantized_inputs"] > 40
    assert counts["DequantizeLinear"] == pl["num_quantized_inputs"] + pl["num_int8_weights"] and pl["residual_adds"]
    assert (tmp_path / "trt.onnx").stat().st_size < 0.3 * (real["bundle"] / "model.onnx").stat().st_size
    assert m.details["parity"]["agreement"] >= 0.95
