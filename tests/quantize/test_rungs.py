"""The ladder's rungs where they must help, on tiny hand-built ONNX models (no torch, seconds):
cross-layer equalization on a badly scaled depthwise net, bias correction on a layer whose
per-tensor weight rounding shifts its channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

pytest.importorskip("onnxruntime.quantization", reason="the export extra (onnxruntime) is not installed")

from ..fixtures.onnx_models import SIZE, _head, _model, write_onnx  # noqa: E402

from edgetransfer.quantize.bias_correction import correct_biases  # noqa: E402
from edgetransfer.quantize.calibration import CalibrationRecipe  # noqa: E402
from edgetransfer.quantize.equalize import equalize, find_pairs  # noqa: E402
from edgetransfer.quantize.ort_qdq import op_types_to_quantize, preprocess, quantize_with_ranges  # noqa: E402
from edgetransfer.quantize.ranges import collect_histograms, write_ranges  # noqa: E402
from edgetransfer.runtime.ort import onnx_logits  # noqa: E402
from edgetransfer.targets import QuantizationPreset  # noqa: E402

PER_TENSOR = QuantizationPreset(per_channel=False)
# the 8-bit grid _shifted_net is built on (7-bit weights on an x86 CPU without VNNI would move its steps)
PER_TENSOR_8BIT = QuantizationPreset(per_channel=False, reduce_range=False)
RECIPE = CalibrationRecipe(num_samples=16, batch_size=8)


def _x(n=24, seed=0):
    return np.random.default_rng(seed).normal(0.5, 1.0, (n, 3, SIZE, SIZE)).astype(np.float32)


def _depthwise_net() -> onnx.ModelProto:
    """pointwise conv1 (3->8, output channel c scaled by s_c, s from 1 to 1e-3) -> Relu ->
    depthwise 3x3 conv2 (channel c scaled by 1 / s_c) -> Relu -> pointwise conv3 (8->4) -> head:
    the same function as an unscaled net, with 1000x weight ranges across channels."""
    rng = np.random.default_rng(3)
    s = np.logspace(0, -3, 8)
    w1 = rng.normal(0, 1, (8, 3, 1, 1)) * s[:, None, None, None]
    b1 = np.abs(rng.normal(0.2, 0.1, 8)) * s
    w2 = rng.normal(0, 1, (8, 1, 3, 3)) / s[:, None, None, None]
    w3 = rng.normal(0, 1, (4, 8, 1, 1))
    return _dw_net(rng, w1, b1, w2, w3)


def _dw_net(rng, w1, b1, w2, w3) -> onnx.ModelProto:
    """conv1 (3->8) -> Relu -> depthwise 3x3 (8 groups) -> Relu -> conv3 (8->4) -> head (fc weights from ``rng``)."""
    head, hinit = _head()
    hinit["w_fc"] = rng.normal(0, 1, (2, 4))
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["h"], name="conv3")] + head
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2, "b2": np.zeros(8), "w3": w3, "b3": np.zeros(4), **hinit})


def _quantize(float_path, tmp_path, x, name, preset=PER_TENSOR):
    ranges = tmp_path / f"{name}.ranges.json"
    write_ranges(collect_histograms(float_path, x, "input", op_types_to_quantize()), "minmax",
                 bool(preset.symmetric_activations), ranges)
    out = tmp_path / f"{name}.qdq.onnx"
    quantize_with_ranges(float_path, out, ranges, preset, RECIPE)
    return out, ranges


def test_equalization_keeps_fp32_logits_and_cuts_per_tensor_error_tenfold(tmp_path):
    src = tmp_path / "dw.onnx"
    write_onnx(_depthwise_net(), src)
    pre, eq = tmp_path / "pre.onnx", tmp_path / "eq.onnx"
    preprocess(src, pre)
    pairs, skipped = find_pairs(onnx.load(str(pre)))
    assert [(a.name, b.name) for a, _, b in pairs] == [("conv1", "dw"), ("dw", "conv3")] and skipped == 0
    summary = equalize(pre, eq)
    assert summary["pairs"] == 2 and summary["conv1_range_spread_before"] > 100 > 3 > summary["conv1_range_spread_after"]
    x = _x()
    ref = onnx_logits(pre, x)
    np.testing.assert_allclose(onnx_logits(eq, x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # high-bias absorption (conv1 -> Relu -> dw is not 1x1: nothing to absorb there; dw -> Relu -> conv3 is)
    from edgetransfer.quantize.equalize import channel_min

    hba = tmp_path / "hba.onnx"
    s2 = equalize(eq, hba, channel_min=channel_min(eq, x, "input"))
    np.testing.assert_allclose(onnx_logits(hba, x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert s2["high_bias_absorbed"] <= 1
    q0, _ = _quantize(pre, tmp_path, x, "plain")
    q1, _ = _quantize(eq, tmp_path, x, "equalized")
    e0 = float(np.mean((onnx_logits(q0, x) - ref) ** 2))
    e1 = float(np.mean((onnx_logits(q1, x) - ref) ** 2))
    assert e1 * 10 < e0, (e0, e1)


def _shifted_net() -> onnx.ModelProto:
    """conv1 (1x1, 3->4): channel 0's weight 10 sets the per-tensor INT8 weight step (10 / 127);
    the other channels' weights sit at k + 0.45 steps, so rounding moves each of them by -0.45
    steps: a systematic per-channel output shift."""
    step = 10.0 / 127
    w1 = np.zeros((4, 3, 1, 1))
    w1[0, 0] = 10.0
    for c in range(1, 4):
        w1[c, :, 0, 0] = (np.arange(3) + c + 0.45) * step
    head, hinit = _head()
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["h"], name="conv1")] + head
    return _model(nodes, {"w1": w1, "b1": np.zeros(4), **hinit})


def _mean_shift(qdq, float_path, x):
    """Per-channel mean over images and positions of conv1's output, QDQ (reference semantics) - float."""
    out = {}
    for name, p in (("q", qdq), ("f", float_path)):
        m = onnx.load(str(p))
        m.graph.output.append(helper.make_empty_tensor_value_info("h"))
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out[name] = s.run(["h"], {"input": x})[0].mean(axis=(0, 2, 3))
    return out["q"] - out["f"]


def test_bias_correction_cuts_a_per_channel_shift_fivefold(tmp_path):
    src, pre, fixed = tmp_path / "s.onnx", tmp_path / "pre.onnx", tmp_path / "fixed.onnx"
    write_onnx(_shifted_net(), src)
    preprocess(src, pre)
    x = _x(32, seed=1)
    q0, ranges = _quantize(pre, tmp_path, x, "plain", PER_TENSOR_8BIT)
    before = _mean_shift(q0, pre, x)  # reference semantics (optimisations off): no kernel saturates
    summary = correct_biases(pre, q0, x, "input", fixed)
    assert summary["layers"] == 2  # conv1 and the Gemm
    q1 = tmp_path / "fixed.qdq.onnx"
    quantize_with_ranges(fixed, q1, ranges, PER_TENSOR_8BIT, RECIPE)  # same ranges, corrected float bias
    after = _mean_shift(q1, pre, x)  # against the ORIGINAL float model
    assert np.abs(before[1:]).min() > 0.02  # the shift is there: 0.45 steps x 3 weights x mean input
    assert np.abs(after[1:]).max() * 5 < np.abs(before[1:]).min(), (before, after)


def test_set_scorer_of_a_bias_corrected_model_measures_against_fp32(tmp_path):
    """UnitScorer(base_path=...) on a bias-corrected model (rung e scores its sets so): the reference
    is the fp32 model, not the corrected one, and with every unit on the error is the QDQ file's own
    error against fp32; without base_path both are off by the corrections (what mis-ranked rung e's
    sets on digits, 2026-12-08)."""
    from edgetransfer.quantize.sensitivity import UnitScorer

    src, pre, fixed = tmp_path / "s.onnx", tmp_path / "pre.onnx", tmp_path / "fixed.onnx"
    write_onnx(_shifted_net(), src)
    preprocess(src, pre)
    x = _x(32, seed=1)
    q0, ranges = _quantize(pre, tmp_path, x, "plain", PER_TENSOR_8BIT)
    correct_biases(pre, q0, x, "input", fixed)
    q1 = tmp_path / "fixed.qdq.onnx"
    quantize_with_ranges(fixed, q1, ranges, PER_TENSOR_8BIT, RECIPE)
    f32, file = (onnx_logits(p, x).astype(np.float64) for p in (pre, q1))
    true = float(np.mean((file - f32) ** 2))  # 7.0e-4 when written
    new, old = UnitScorer(fixed, q1, x, "input", base_path=pre), UnitScorer(fixed, q1, x, "input")
    assert np.abs(new.ref - f32).max() < 1e-5 and np.abs(old.ref - f32).max() > 0.02
    on = np.ones(len(new.units), np.float32)
    assert new.error(on)[0] == pytest.approx(true, rel=0.25)  # 6.3e-4: the int32 bias rounding is not gated
    assert old.error(on)[0] > 3 * true  # 3.3e-3: the corrected float's logits are not fp32's
    # every unit off: the fp32 model itself, whose biases are the base's
    assert new.error(np.zeros(len(new.units), np.float32))[0] < 1e-10
