"""ONNX export on a tiny torch model: eval graph from a train-mode model, dynamic batch,
names/metadata, shape inference, exporter fallback, onnxslim parity, opset from the target."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")

from edgetransfer.errors import ConfigError, EdgeTransferError, ParityError  # noqa: E402
from edgetransfer.export import onnx as ex  # noqa: E402
from edgetransfer.export.onnx import ExportConfig, choose_opset, export_module, graph_opset, onnx_logits  # noqa: E402
from edgetransfer.parity import ParityStats, check_parity  # noqa: E402

SIZE = 16
PRE = {"input_size": SIZE, "resize_size": SIZE, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3,
       "channel_order": "RGB", "layout": "NCHW", "dtype": "float32"}


def tiny_net():
    """Conv -> BatchNorm -> ReLU -> Dropout(0.5) -> pool -> Linear, with non-trivial BN statistics,
    handed over in TRAIN mode (BatchNorm would use batch statistics, dropout would drop)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Dropout(0.5),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return net.train()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((6, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, x):
    net = tiny_net()
    path = tmp_path_factory.mktemp("exp") / "m.onnx"
    details = export_module(net, path, input_size=SIZE, class_names=["ants", "bees"], preprocessing=PRE, parity_x=x, opset=18)
    return net, path, details


def test_train_mode_model_exports_the_eval_graph(exported, x):
    net, path, details = exported
    assert net.training  # the caller's mode is restored
    with torch.inference_mode():
        ref = net.eval()(torch.from_numpy(x)).numpy()
        train_out = net.train()(torch.from_numpy(x)).numpy()
    assert np.abs(train_out - ref).max() > 1e-2  # train mode really behaves differently on these inputs
    a, b = onnx_logits(path, x), onnx_logits(path, x)
    assert np.array_equal(a, b)  # deterministic: no dropout sampling
    assert np.abs(a - ref).max() < 1e-5  # equal to eval-mode PyTorch: running BN statistics
    m = onnx.load(str(path))
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"Dropout", "Bernoulli", "RandomUniformLike", "RandomNormalLike"}
    assert all(len([o for o in n.output if o]) == 1 for n in m.graph.node if n.op_type == "BatchNormalization")
    assert details["parity"]["max_abs"] < 1e-5 and details["parity"]["mean_abs"] < 1e-6


def test_dynamic_batch_names_metadata_one_file(exported, x):
    _, path, details = exported
    for b in (1, 3, 8):
        xb = np.resize(x, (b, 3, SIZE, SIZE)).astype(np.float32)
        assert onnx_logits(path, xb).shape == (b, 2)
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["class_names"]) == ["ants", "bees"] and json.loads(meta["preprocessing"]) == PRE
    assert meta["exporter"] == details["exporter"] == "torch.onnx.export(dynamo=True)"
    assert not list(path.parent.glob("*.data")) and not any(i.data_location == 1 for i in m.graph.initializer)
    assert len(m.graph.value_info) == details["graph"]["value_info"] > 0  # shape inference kept in the file
    assert details["dynamic_batch_verified"] == [1, 3, 8] and details["opset"] == graph_opset(m) == 18


def test_torchscript_fallback_is_recorded_and_opset_follows_the_target(tmp_path, x, monkeypatch):
    real = ex._export

    def failing_dynamo(model, xx, path, opset, dynamo):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real(model, xx, path, opset, dynamo)

    monkeypatch.setattr(ex, "_export", failing_dynamo)
    opset = choose_opset(None, 17)  # a target whose runtime accepts at most opset 17
    d = export_module(tiny_net(), tmp_path / "m.onnx", input_size=SIZE, class_names=["a", "b"], preprocessing=PRE,
                      parity_x=x, opset=opset)
    assert d["exporter"] == "torch.onnx.export(dynamo=False, TorchScript)"
    assert d["exporter_errors"] and "simulated dynamo failure" in d["exporter_errors"][0]
    assert graph_opset(onnx.load(str(tmp_path / "m.onnx"))) == 17
    assert choose_opset(None, 21) == 18 and choose_opset(13, 21) == 13
    with pytest.raises(ConfigError, match="exceeds the target's ceiling 17"):
        choose_opset(18, 17)


def test_simplification_is_parity_checked(tmp_path, x, monkeypatch):
    d = export_module(tiny_net(), tmp_path / "m.onnx", input_size=SIZE, class_names=["a", "b"], preprocessing=PRE,
                      parity_x=x, opset=18, cfg=ExportConfig(simplify=True))
    s = d["simplified"]
    assert s["tool"] == "onnxslim" and s["nodes_after"] <= s["nodes_before"]
    assert s["parity_vs_unsimplified"]["max_abs"] < 1e-5

    def broken_slim(src, dst):  # a simplifier that changes the model: the fc bias moves by 0.1
        m = onnx.load(str(src))
        gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
        b = next(i for i in m.graph.initializer if i.name == gemm.input[2])
        b.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(b) + np.float32(0.1), b.name))
        onnx.save_model(m, str(dst))

    monkeypatch.setattr(ex, "_simplify", broken_slim)
    with pytest.raises(ParityError, match="onnxslim simplification.*max .diff. 0.1"):
        export_module(tiny_net(), tmp_path / "m2.onnx", input_size=SIZE, class_names=["a", "b"], preprocessing=PRE,
                      parity_x=x, opset=18, cfg=ExportConfig(simplify=True, dynamo=False))
    assert not (tmp_path / "m2.slim.onnx").exists()


def test_training_graph_is_refused():
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"], name="drop")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("train", TensorProto.BOOL, [], [True])])
    with pytest.raises(EdgeTransferError, match="Dropout 'drop' in training mode"):
        ex.assert_inference_graph(helper.make_model(g))
    g.initializer[1].CopyFrom(helper.make_tensor("train", TensorProto.BOOL, [], [False]))
    ex.assert_inference_graph(helper.make_model(g))  # inference-mode dropout is the identity: accepted


def test_parity_holds_max_and_mean():
    ok = dict(max_abs=1e-3, mean_abs=1e-4, min_agreement=0.99)
    check_parity(ParityStats(5e-4, 5e-5, 1.0, 10), output="logits", what="t", **ok)
    with pytest.raises(ParityError, match="mean .diff. 0.0005 > 0.0001"):
        check_parity(ParityStats(9e-4, 5e-4, 1.0, 10), output="logits", what="t", **ok)
    with pytest.raises(ParityError, match="max .diff. 0.002 > 0.001"):
        check_parity(ParityStats(2e-3, 5e-5, 1.0, 10), output="logits", what="t", **ok)
    with pytest.raises(ParityError, match="NaN or inf"):
        check_parity(ParityStats(0.0, 0.0, 1.0, 10, has_nonfinite=True), output="logits", what="t", **ok)
