"""TensorRT's Q/DQ placement (quantize/tensorrt_qdq.py), checked on the file: no TensorRT here.

A hand-built residual network has every pattern the rules are about: Conv+BN+Relu (a partition,
no Q/DQ inside), a residual Add (quantized on its skip input only), a Concat (one scale for its
inputs and its output), GlobalAveragePool -> Flatten -> Gemm (pooling quantized for its consumer).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgetransfer.quantize import tensorrt_qdq as T  # noqa: E402
from edgetransfer.quantize.calibration import CalibrationRecipe, compute_ranges  # noqa: E402
from edgetransfer.runtime.ort import onnx_logits  # noqa: E402
from edgetransfer.targets import QuantizationPreset, load_target  # noqa: E402

C, S = 32, 8
PRESET = QuantizationPreset.named("tensorrt")


def _resnetish() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def conv(name, cin, cout, x, y, k=3):
        inits.append(numpy_helper.from_array(rng.normal(0, (2 / (cin * k * k)) ** 0.5, (cout, cin, k, k)).astype(np.float32), f"{name}.w"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, cout).astype(np.float32), f"{name}.b"))
        return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[k // 2] * 4)

    inits: list = []
    bn = [numpy_helper.from_array(v.astype(np.float32), f"bn.{n}") for n, v in
          (("s", rng.uniform(0.5, 1.5, C)), ("b", rng.normal(0, 0.1, C)), ("m", rng.normal(0, 0.1, C)), ("v", rng.uniform(0.5, 2, C)))]
    inits += bn
    nodes = [
        conv("conv1", 3, C, "input", "c1"),
        helper.make_node("BatchNormalization", ["c1", "bn.s", "bn.b", "bn.m", "bn.v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["x1"], name="relu1"),
        conv("conv2", C, C, "x1", "c2"), helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        conv("conv3", C, C, "r2", "c3"),
        helper.make_node("Add", ["c3", "x1"], ["a"], name="add_residual"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        conv("conv4", C, C, "x1", "c4", k=1),
        helper.make_node("Concat", ["ra", "c4"], ["cat"], name="concat", axis=1),
        conv("conv5", 2 * C, C, "cat", "c5"),
        helper.make_node("GlobalAveragePool", ["c5"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, (2, C)).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(2, np.float32), "fc.b")]
    g = helper.make_graph(nodes, "resnetish", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, S, S])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """fp32 model, its ranges, and the TensorRT Q/DQ files with fp32 and fp16 remainders."""
    d = tmp_path_factory.mktemp("trt")
    onnx.save(_resnetish(), str(d / "fp32.onnx"))
    x = np.random.default_rng(1).normal(size=(32, 3, S, S)).astype(np.float32)
    compute_ranges(d / "fp32.onnx", x, "input", CalibrationRecipe(num_samples=32, batch_size=8), PRESET, d / "ranges.json",
                   ["Conv", "Add", "Concat", "GlobalAveragePool", "Gemm", "Relu", "Flatten"])
    info32 = T.quantize_tensorrt(d / "fp32.onnx", d / "q32.onnx", d / "ranges.json", PRESET)
    info16 = T.quantize_tensorrt(d / "fp32.onnx", d / "q16.onnx", d / "ranges.json",
                                 dataclasses.replace(PRESET, high_precision_dtype="fp16"))
    return {"dir": d, "x": x, "info32": info32, "info16": info16,
            "q32": onnx.load(str(d / "q32.onnx")), "q16": onnx.load(str(d / "q16.onnx"))}


def _maps(m):
    prod = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    return prod, inits, {n.name: n for n in m.graph.node}


def _src(prod, t):
    return prod[t].op_type if t in prod else "graph input"


def test_no_qdq_inside_conv_bn_act_and_every_weighted_input_quantized(made):
    prod, inits, nodes = _maps(made["q32"])
    assert _src(prod, nodes["bn1"].input[0]) == "Conv" and _src(prod, nodes["relu1"].input[0]) == "BatchNormalization"
    assert _src(prod, nodes["relu2"].input[0]) == "Conv"
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc"):
        assert _src(prod, nodes[name].input[0]) == "DequantizeLinear", name
        w = prod[nodes[name].input[1]]  # int8 initializer -> DequantizeLinear, per output channel
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].data_type == TensorProto.INT8
        assert len(inits[w.input[1]].dims) == 1 and inits[w.input[1]].dims[0] == (2 if name == "fc" else C)
        assert nodes[name].input[2] in inits and inits[nodes[name].input[2]].data_type == TensorProto.FLOAT  # float bias
    assert _src(prod, nodes["gap"].input[0]) == "DequantizeLinear"  # its consumer (Flatten -> Gemm) is quantized
    assert not any(i.data_type == TensorProto.FLOAT and len(i.dims) == 4 for i in made["q32"].graph.initializer)  # no float conv weight
    q = [n for n in made["q32"].graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].data_type == TensorProto.INT8 and not numpy_helper.to_array(inits[n.input[2]]).any() for n in q)
    assert len({n.output[0] for n in q}) == len(q)  # a dedicated pair per consumer


def test_residual_add_quantized_on_its_skip_input_only(made):
    prod, _, nodes = _maps(made["q32"])
    add = nodes["add_residual"]
    assert _src(prod, add.input[0]) == "Conv"  # conv3's output: fused into conv3 by TensorRT
    dq = prod[add.input[1]]
    assert dq.op_type == "DequantizeLinear" and prod[dq.input[0]].input[0] == "x1"  # the skip
    assert made["info32"]["residual_adds"] == {"add_residual": "x1"}


def test_concat_inputs_and_output_share_one_scale(made):
    prod, inits, nodes = _maps(made["q32"])
    cat = nodes["concat"]
    dqs = [prod[t] for t in cat.input] + [prod[nodes["conv5"].input[0]]]
    assert all(d.op_type == "DequantizeLinear" for d in dqs)
    scales = {float(numpy_helper.to_array(inits[d.input[1]])) for d in dqs}
    assert len(scales) == 1
    assert sorted(made["info32"]["concat_groups"][0]) == ["c4", "cat", "ra"]


def test_int8_weights_make_the_file_about_a_quarter(made):
    d = made["dir"]
    ratio = (d / "q32.onnx").stat().st_size / (d / "fp32.onnx").stat().st_size
    assert 0.25 <= ratio < 0.32, ratio  # int8 weights + float biases, per-channel scales, graph overhead
    float_pairs = T.quantize_tensorrt(d / "fp32.onnx", d / "pairs.onnx", d / "ranges.json", load_target("jetson-xavier-nx").quantization)
    assert float_pairs["weights"] == "float behind Q->DQ"  # TensorRT 8.x targets keep float weights
    assert (d / "pairs.onnx").stat().st_size > (d / "fp32.onnx").stat().st_size


def test_qdq_file_tracks_fp32(made):
    d, x = made["dir"], made["x"]
    ref = onnx_logits(d / "fp32.onnx", x)
    q = onnx_logits(d / "q32.onnx", x, optimize=False)
    assert np.abs(q - ref).max() < 0.05 * np.abs(ref).max() and (q.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_fp16_remainder_dtypes_with_fp32_io(made):
    m = made["q16"]
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.node[0].op_type == "Cast" and m.graph.node[-1].op_type == "Cast"
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 19
    types = {i.data_type for i in m.graph.initializer}
    assert TensorProto.FLOAT not in types and {TensorProto.FLOAT16, TensorProto.INT8} <= types
    vi = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.output)}
    inner = [t for n in m.graph.node[1:-1] for t in n.output if n.op_type != "QuantizeLinear"]
    assert inner and all(vi[t] == TensorProto.FLOAT16 for t in inner)
    assert made["info16"]["high_precision_dtype"] == "fp16"


def test_fp16_remainder_parity_under_onnxruntime(made):
    """Graph optimisations off: ORT's WeightBiasQuantization optimizer mis-scales fp16 biases."""
    d, x = made["dir"], made["x"]
    q32 = onnx_logits(d / "q32.onnx", x, optimize=False)
    q16 = onnx_logits(d / "q16.onnx", x, optimize=False)
    assert q16.dtype == np.float32
    # fp16 rounding before a QuantizeLinear moves a value across an INT8 rounding boundary now and
    # then (one step of that scale): a few % at worst on one logit, much less on average
    diff = np.abs(q16 - q32)
    assert diff.max() < 0.05 * np.abs(q32).max() and diff.mean() < 0.02 * np.abs(q32).mean()
    assert (q16.argmax(1) == q32.argmax(1)).mean() >= 0.95
    from edgetransfer.artifacts import Manifest
    from edgetransfer.runtime.ort import OnnxRuntimeRunner

    m = Manifest(format="onnx", precision="int8", file="q16.onnx", details={"preset": {"high_precision_dtype": "fp16"}})
    assert OnnxRuntimeRunner.options_for(load_target("x86-nvidia-gpu"), m)["optimize"] is False


def test_excluded_node_stays_float(made):
    d = made["dir"]
    m = onnx.load(str(d / "fp32.onnx"))
    p = T.place(m, T.load_ranges(d / "ranges.json"), exclude=["conv2", "add_residual"])
    assert not any(n == "conv2" for n, _, _ in p.inputs) and "conv2" not in [w[0] for w in p.weights]
    assert "add_residual" not in p.residual and any(n == "conv3" for n, _, _ in p.inputs)


def test_targets_use_the_tensorrt_placement():
    for name in ("jetson-orin-nano", "jetson-agx-orin", "x86-nvidia-gpu", "jetson-xavier-nx", "jetson-nano"):
        q = load_target(name).quantization
        assert q.placement == "tensorrt", name
    assert load_target("x86-nvidia-gpu").quantization.high_precision_dtype == "fp16"
    assert load_target("jetson-orin-nano").quantization.high_precision_dtype == "fp32"
    assert load_target("x86-cpu").quantization.placement == "ort"
    from edgetransfer.errors import TargetError

    with pytest.raises(TargetError, match="placement: tensorrt"):
        QuantizationPreset(high_precision_dtype="fp16")


def test_quantize_stage_for_x86_nvidia_gpu_writes_the_fp16_remainder(tmp_path):
    """The real INT8 stage dispatches to the TensorRT placement; the engine plan follows the file."""
    from edgetransfer.artifacts import read_manifest
    from edgetransfer.builders.tensorrt import plan_engine_build
    from edgetransfer.onnx_inspect import check_qdq_for_target

    from ..fixtures.bundles import make_bundle, quantize

    gpu = load_target("x86-nvidia-gpu")
    b = make_bundle(tmp_path, target=gpu.name)
    out = quantize(b, gpu.quantization, gpu.name)
    m = read_manifest(out)
    assert m.details["tensorrt_placement"]["high_precision_dtype"] == "fp16"
    q = onnx.load(str(out))
    assert {i.data_type for i in q.graph.initializer} >= {TensorProto.FLOAT16, TensorProto.INT8}
    assert TensorProto.FLOAT not in {i.data_type for i in q.graph.initializer}
    assert check_qdq_for_target(out, gpu.quantization, gpu.opset_max, tensorrt=True) == []
    assert plan_engine_build(b, gpu, "int8", tensorrt_version="10.8.0").builder_flags == ("int8", "fp16")
    assert plan_engine_build(b, gpu, "int8", tensorrt_version="11.0.0").builder_flags == ()
