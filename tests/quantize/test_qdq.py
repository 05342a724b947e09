"""The Q/DQ check reads the graph itself: a file quantized with the TensorRT preset passes,
one quantized for x86 CPUs (uint8 asymmetric activations, int32 biases) is named for each rule
it breaks, and the opset ceiling is enforced."""

from __future__ import annotations

import pytest

from ..fixtures.bundles import bundles_with_presets
from edgetransfer.onnx_inspect import check_qdq_for_target, inspect_qdq, tensorrt_violations
from edgetransfer.targets import load_target

pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return bundles_with_presets(tmp_path_factory.mktemp("qdq"))


def test_tensorrt_preset_gives_signed_symmetric_qdq(bundles):
    s = inspect_qdq(bundles["tensorrt"] / "model.int8.qdq.onnx")
    # Conv-Relu-GAP-Flatten-Gemm, TensorRT placement (quantize/tensorrt_qdq.py): Q/DQ on the conv's
    # input, the GAP's input (relu out: Conv+Relu is one partition) and the Gemm's input (flatten
    # out); both weights INT8 initializers -> DQ; nothing on Conv/Gemm outputs, none on the biases
    assert (s.num_quantize, s.num_dequantize) == (3, 5)
    assert s.zero_point_types == {"int8": 8}
    assert s.nonzero_zero_points == [] and s.dequantized_types == {"int8": 2} and s.integer_ops == {}
    assert s.per_channel_weights == 2 and s.per_channel_activations == []
    orin = load_target("jetson-orin-nano")
    assert check_qdq_for_target(bundles["tensorrt"] / "model.int8.qdq.onnx", orin.quantization, orin.opset_max, tensorrt=True) == []


def test_x86_preset_breaks_the_tensorrt_rules(bundles):
    s = inspect_qdq(bundles["x86"] / "model.int8.qdq.onnx")
    assert s.zero_point_types.get("uint8", 0) > 0 and s.zero_point_types.get("int32") == 2
    assert s.nonzero_zero_points and s.dequantized_types.get("int32") == 2
    problems = tensorrt_violations(s, opset_max=20)
    text = " ".join(problems)
    assert "uint8" in text and "non-zero zero point" in text and "int32" in text
    assert len(problems) == 3
    # and it still meets its own (x86-cpu) preset
    x86 = load_target("x86-cpu")
    assert check_qdq_for_target(bundles["x86"] / "model.int8.qdq.onnx", x86.quantization, x86.opset_max) == []


def test_opset_ceiling_and_non_qdq_files(bundles):
    s = inspect_qdq(bundles["tensorrt"] / "model.int8.qdq.onnx")
    assert s.opset == 17
    assert any("opset 17 exceeds the target's ceiling 13" in p for p in tensorrt_violations(s, opset_max=13))
    fp32 = inspect_qdq(bundles["tensorrt"] / "model.onnx")
    assert any("no QuantizeLinear" in p for p in tensorrt_violations(fp32, opset_max=20))
