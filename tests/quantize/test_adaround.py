"""Rung d, AdaRound (edgetransfer/quantize/adaround.py), on a tiny depthwise net where nearest
rounding is coarse: one large weight per depthwise channel sets a step of 3/127, the other eight
weights (sigma 0.2) round with errors that do not cancel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("onnxruntime.quantization", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("torch", reason="AdaRound needs the train extra (torch)")

from ..fixtures.onnx_models import write_onnx  # noqa: E402
from .test_rungs import RECIPE, _dw_net, _quantize, _x  # noqa: E402

from edgetransfer.errors import ConfigError  # noqa: E402
from edgetransfer.quantize.adaround import adaround  # noqa: E402
from edgetransfer.quantize.int8 import AccuracyBudget, qdq_int8_from_onnx  # noqa: E402
from edgetransfer.quantize.ladder import LadderConfig  # noqa: E402
from edgetransfer.quantize.ort_qdq import preprocess, quantize_with_ranges, weight_qrange  # noqa: E402
from edgetransfer.runtime.ort import onnx_logits  # noqa: E402
from edgetransfer.targets import QuantizationPreset  # noqa: E402

PER_CHANNEL = QuantizationPreset()
# 7-bit weights on an x86 CPU without VNNI (ORT's u8s8 kernels saturate 8-bit ones there), else 8-bit
QMAX = weight_qrange(PER_CHANNEL)[1]


def _coarse_dw_net() -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    w1, b1 = rng.normal(0, 0.5, (8, 3, 1, 1)), np.full(8, 0.5)
    w2 = rng.normal(0, 0.2, (8, 1, 3, 3))
    w2[:, 0, 0, 0] = 3.0  # sets each channel's symmetric step to 3 / 127 (3 / 64 with 7-bit weights)
    w3 = rng.normal(0, 0.5, (4, 8, 1, 1))
    return _dw_net(rng, w1, b1, w2, w3)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("adaround")
    src, pre = d / "s.onnx", d / "pre.onnx"
    write_onnx(_coarse_dw_net(), src)
    preprocess(src, pre)
    return src, pre


def test_adaround_cuts_the_depthwise_reconstruction_error_and_ort_stores_its_rounding(net, tmp_path):
    _, pre = net
    x, xv = _x(32, 1), _x(64, 2)  # calibration images / held-out images
    q0, ranges = _quantize(pre, tmp_path, x, "plain", PER_CHANNEL)
    out = tmp_path / "ar.onnx"
    s = adaround(pre, q0, x, "input", out, layers=["dw", "conv3"], weight_range=weight_qrange(PER_CHANNEL))
    by = {layer["node"]: layer for layer in s["layers"]}
    assert set(by) == {"dw", "conv3"} and s["layers_not_reached"] == []
    dw = by["dw"]
    assert dw["flipped_share"] > 0.02 and dw["recon_adaround"] < 0.9 * dw["recon_nearest"], dw  # measured 0.84x
    # the weights written back are grid values: ORT's symmetric per-channel int8 quantization stores them exactly
    w = numpy_helper.to_array(next(i for i in onnx.load(str(out)).graph.initializer if i.name == "w2"))
    w0 = numpy_helper.to_array(next(i for i in onnx.load(str(pre)).graph.initializer if i.name == "w2"))
    scale = np.abs(w0).reshape(8, -1).max(1) / QMAX
    qint = w / scale[:, None, None, None]
    assert np.abs(qint - np.rint(qint)).max() < 1e-3
    assert np.abs(qint - w0 / scale[:, None, None, None]).max() < 1.0  # floor or ceil of the float weight, never further
    assert (np.rint(qint) != np.rint(w0 / scale[:, None, None, None])).mean() == pytest.approx(dw["flipped_share"])
    q1 = tmp_path / "ar.qdq.onnx"
    quantize_with_ranges(out, q1, ranges, PER_CHANNEL, RECIPE)
    stored = [numpy_helper.to_array(i) for i in onnx.load(str(q1)).graph.initializer
              if numpy_helper.to_array(i).dtype == np.int8 and numpy_helper.to_array(i).shape == (8, 1, 3, 3)]
    assert len(stored) == 1 and np.array_equal(stored[0].astype(np.int64), np.rint(qint).astype(np.int64))
    # on held-out images the re-rounded model is closer to fp32 (measured 0.00080 -> 0.00068)
    ref = onnx_logits(pre, xv)
    e0, e1 = (float(((onnx_logits(q, xv) - ref) ** 2).mean()) for q in (q0, q1))
    assert e1 < 0.95 * e0, (e0, e1)


def test_ladder_rung_d_is_opt_in_and_recorded_with_its_figures(net, tmp_path):
    src, pre = net
    x, xv = _x(32, 1), _x(48, 2)
    yv = onnx_logits(pre, xv).argmax(1)  # labels = fp32 decisions: the budget is about INT8 vs fp32
    budget = AccuracyBudget(0.005, max_steps=0)
    off = qdq_int8_from_onnx(src, tmp_path / "off.onnx", x, PER_CHANNEL, RECIPE, parity_x=xv, parity_y=yv, budget=budget,
                             ladder=LadderConfig(qat="off"))
    d = next(r for r in off.details["ladder"] if r["rung"] == "d:adaround")
    assert d["skipped"].startswith("off (opt-in")
    on = qdq_int8_from_onnx(src, tmp_path / "on.onnx", x, PER_CHANNEL, RECIPE, parity_x=xv, parity_y=yv, budget=budget,
                            ladder=LadderConfig(qat="off", adaround="on", adaround_layers=2, adaround_iters=200))
    d = next(r for r in on.details["ladder"] if r["rung"] == "d:adaround")
    assert len(d["adaround"]["layers"]) == 2 and d["adaround"]["selected"] == "the 2 most sensitive weights"
    assert d["seconds"] > 0 and "top1_int8" in d and "bias_correction" in d and d["based_on"].startswith(("a:", "c:"))
    with pytest.raises(ConfigError, match="adaround must be auto, on or off"):
        LadderConfig(adaround="yes")
