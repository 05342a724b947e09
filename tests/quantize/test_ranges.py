"""Range estimators of quantize/ranges.py on known distributions: one histogram pass, MSE-optimal
ranges beat minmax on heavy tails, and the ranges file is the one ORT's quantize_static reads."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization", reason="the export extra (onnxruntime) is not installed")

from edgetransfer.errors import ConfigError  # noqa: E402
from edgetransfer.quantize.ranges import TensorHistogram, collect_histograms, estimate_range, write_ranges  # noqa: E402


def _fake_quant_mse(v: np.ndarray, lo: float, hi: float, steps: int = 255) -> float:
    s = (hi - lo) / steps
    zp = np.round(-lo / s)
    q = np.clip(np.round(v / s) + zp, 0, steps)
    return float(np.mean(((q - zp) * s - v) ** 2))


def _hist(v: np.ndarray, chunks: int = 4) -> TensorHistogram:
    h = TensorHistogram(np.zeros(2048, np.int64))
    for part in np.array_split(v, chunks):
        h.add(part)
    return h


@pytest.mark.parametrize("dist", ["laplace", "student_t4"])
def test_mse_beats_minmax_on_heavy_tailed_activations(dist):
    rng = np.random.default_rng(0)
    v = (rng.laplace(size=200_000) if dist == "laplace" else rng.standard_t(df=4, size=200_000)).astype(np.float32)
    h = _hist(v)  # 4 batches: the grid grows as batches arrive
    assert h.lo == float(v.min()) and h.hi == float(v.max()) and h.hist.sum() == v.size
    got = {m: estimate_range(h, m, symmetric=False, percentile=99.99) for m in ("minmax", "mse", "percentile", "entropy")}
    assert got["minmax"] == (float(v.min()), float(v.max()))
    err = {m: _fake_quant_mse(v, *r) for m, r in got.items()}
    # measured: laplace 8.3e-4 -> 6.2e-4, t(4) 7.3e-3 -> 5.2e-3; MSE is the best of the four
    assert err["mse"] < 0.8 * err["minmax"], err
    assert err["mse"] == min(err.values()), err
    for m in ("mse", "percentile", "entropy"):  # the clipping estimators keep 0 inside and clip the tails
        lo, hi = got[m]
        assert got["minmax"][0] < lo <= 0.0 <= hi < got["minmax"][1], (m, got[m])
    lo, hi = estimate_range(h, "mse", symmetric=True)
    assert lo == -hi and hi > 0


def test_growing_grid_merges_bins_exactly():
    h = TensorHistogram(np.zeros(16, np.int64))
    h.add(np.array([0.5, -0.5, 1.0], np.float32))  # R = 1: bins of width 0.125
    h.add(np.array([3.9], np.float32))  # R doubles twice to 4
    assert h.half == 4.0 and h.hist.sum() == 4
    assert h.hist[np.searchsorted(np.linspace(-4, 4, 17), 3.9) - 1] == 1
    with pytest.raises(ConfigError, match="unknown range estimator"):
        estimate_range(h, "kl", symmetric=False)


def test_one_pass_over_a_model_gives_a_ranges_file_ort_reads(tmp_path):
    from onnxruntime.quantization.calibrate import load_tensors_data

    from ..fixtures.onnx_models import SIZE, sensitive_model, write_onnx

    p = tmp_path / "m.onnx"
    write_onnx(sensitive_model(outlier=100.0), p)
    x = np.random.default_rng(1).random((10, 3, SIZE, SIZE), np.float32)
    hists = collect_histograms(p, x, "input", ["Conv", "Gemm", "Mul", "GlobalAveragePool", "Flatten"], batch=4)
    assert {"input", "c1", "m", "h", "logits"} <= set(hists)
    assert hists["m"].hi == pytest.approx(100.0) and hists["input"].hist.sum() == x.size
    summary = write_ranges(hists, {"m": "mse"}, False, tmp_path / "r.json")
    assert summary["estimators"] == {"mse": 1, "minmax": len(hists) - 1}
    got = load_tensors_data(tmp_path / "r.json").data
    assert float(got["input"].range_value[1]) == pytest.approx(float(x.max()))
