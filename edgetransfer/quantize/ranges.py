"""Per-tensor activation ranges from ONE histogram pass: minmax, percentile, entropy and
MSE-optimal, written in ONNX Runtime's calibration cache format.

One pass of the calibration images through the float model (every tensor ORT's calibrators would
calibrate exposed as an output, :func:`tensors_to_calibrate`) fills, per tensor, the observed
[min, max] and a ``num_bins``-bin histogram on the symmetric grid [-R, R]. R starts at the first
batch's max |x| and doubles when a later batch exceeds it; doubling merges bin pairs exactly (bin
edges stay on the grid), so the pass is single and its memory is one batch of activations.
Every estimator then reads the same histograms (:func:`estimate_range`):

- ``minmax``: the observed [min, max] (ORT's MinMax calibrator).
- ``percentile``: the ``percentile`` quantile of |x| (symmetric) or the two tail quantiles.
- ``entropy``: the clipping threshold minimising the KL divergence between the histogram and its
  ``num_quantized_bins``-level quantization (Migacz, "8-bit inference with TensorRT", GTC 2017;
  ONNX Runtime's implementation, ``HistogramCollector.get_entropy_threshold``).
- ``mse``: the range minimising the expected squared quantization error of the tensor, clipping
  plus rounding (rounding noise step^2 / 12 inside the range, squared distance to the bound
  outside), over 100 candidate ranges shrunk from the observed one; MQBench's MSE observer
  (Li et al., "MQBench", NeurIPS 2021 datasets track) and NNCF/AIMET's MSE range setting.

Units: ranges are in the tensor's own float units; histograms count values (int64).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, require

ESTIMATORS = ("minmax", "percentile", "entropy", "mse")


@dataclass
class TensorHistogram:
    """Histogram of one tensor: ``hist`` int64 (num_bins,) on [-half, half]; ``lo``/``hi`` the
    observed min / max."""

    hist: np.ndarray
    half: float = 0.0
    lo: float = float("inf")
    hi: float = float("-inf")

    def add(self, v: np.ndarray) -> None:
        v = np.asarray(v, np.float32).ravel()
        if not v.size:
            return
        lo, hi = float(v.min()), float(v.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        amax = max(abs(lo), abs(hi))
        n = len(self.hist)
        if self.half == 0.0:
            self.half = amax if amax > 0 else 1e-8
        while amax > self.half:  # double R: bin pairs merge exactly, the old grid lands in the middle half
            merged = self.hist.reshape(-1, 2).sum(1)
            self.hist = np.zeros_like(self.hist)
            self.hist[n // 4: n // 4 + n // 2] = merged
            self.half *= 2.0
        idx = ((v + self.half) * (n / (2.0 * self.half))).astype(np.int64)
        np.clip(idx, 0, n - 1, out=idx)
        self.hist += np.bincount(idx, minlength=n)

    def centers(self) -> np.ndarray:
        n = len(self.hist)
        w = 2.0 * self.half / n
        return -self.half + (np.arange(n) + 0.5) * w

    def edges(self) -> np.ndarray:
        return np.linspace(-self.half, self.half, len(self.hist) + 1).astype(np.float32)


def tensors_to_calibrate(model, op_types: Sequence[str] | None) -> list[str]:
    """The float tensors ORT's calibrators calibrate (inputs and outputs of nodes whose op type is in
    ``op_types``, initializers excluded): ``CalibraterBase.select_tensors_to_calibrate``'s rule."""
    from onnx import TensorProto

    vis = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.output, model.graph.input)}
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, None] = {}
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for t in itertools.chain(node.input, node.output):
            vi = vis.get(t)
            if vi is not None and t not in inits and vi.type.HasField("tensor_type") and \
                    vi.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
                out[t] = None
    return list(out)


def collect_histograms(model_path: Path, x: np.ndarray, input_name: str, op_types: Sequence[str] | None = None,
                       num_bins: int = 2048, batch: int = 8) -> dict[str, TensorHistogram]:
    """Run float32 images ``x`` (N, 3, S, S) through the float ONNX ``model_path`` once, ``batch``
    images at a time, with every tensor to calibrate as an extra output; return one
    :class:`TensorHistogram` per tensor. Raises :class:`ConfigError` for an odd ``num_bins``."""
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    if num_bins < 16 or num_bins % 4:
        raise ConfigError(f"num_bins must be a multiple of 4 and >= 16 (got {num_bins})")
    m = onnx.load(str(model_path))
    if not m.graph.value_info:  # not pre-processed: the tensor types come from shape inference
        m = onnx.shape_inference.infer_shapes(m)
    names = tensors_to_calibrate(m, op_types)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    hists = {t: TensorHistogram(np.zeros(num_bins, np.int64)) for t in names}
    for i in range(0, len(x), batch):
        outs = sess.run(names, {input_name: np.ascontiguousarray(x[i: i + batch], np.float32)})
        for t, v in zip(names, outs):
            hists[t].add(v)
    return hists


def _levels(symmetric: bool) -> int:
    # ORT: symmetric INT8 uses [-127, 127] (254 steps), asymmetric UINT8 [0, 255] (255 steps)
    return 254 if symmetric else 255


def expected_mse(h: TensorHistogram, lo: np.ndarray, hi: np.ndarray, steps: int) -> np.ndarray:
    """Expected squared quantization error per value (tensor units^2) of quantizing the histogram
    ``h`` to ``steps`` steps on each candidate range [lo[k], hi[k]] (arrays (K,)): step^2 / 12 for
    values inside, the squared distance to the nearest bound for values outside."""
    c = h.centers()[None, :]
    lo, hi = np.asarray(lo, np.float64)[:, None], np.asarray(hi, np.float64)[:, None]
    step = (hi - lo) / steps
    clipped = np.clip(c, lo, hi)
    err = np.where((c >= lo) & (c <= hi), step ** 2 / 12.0, (c - clipped) ** 2)
    total = max(int(h.hist.sum()), 1)
    return (err * h.hist[None, :]).sum(1) / total


def mse_range(h: TensorHistogram, symmetric: bool, candidates: int = 100) -> tuple[float, float]:
    """The MSE-optimal range among ``candidates`` ranges shrunk from the observed one (factors
    1/candidates ... 1): symmetric [-T, T] from max |x|, else [f * min(lo, 0), f * max(hi, 0)]."""
    f = np.arange(1, candidates + 1) / candidates
    if symmetric:
        t = max(abs(h.lo), abs(h.hi)) * f
        lo, hi = -t, t
    else:
        lo, hi = min(h.lo, 0.0) * f, max(h.hi, 0.0) * f
    k = int(np.argmin(expected_mse(h, lo, hi, _levels(symmetric))))
    return float(lo[k]), float(hi[k])


def _quantile(h: TensorHistogram, q: float, absolute: bool) -> float:
    c, n = h.centers(), h.hist.astype(np.float64)
    if absolute:
        order = np.argsort(np.abs(c), kind="stable")
        c, n = np.abs(c)[order], n[order]
    cdf = np.cumsum(n) / max(n.sum(), 1.0)
    return float(c[min(int(np.searchsorted(cdf, q)), len(c) - 1)])


def estimate_range(h: TensorHistogram, method: str, symmetric: bool, *, percentile: float = 99.999,
                   num_quantized_bins: int = 128) -> tuple[float, float]:
    """(lo, hi) of one tensor by ``method`` (one of :data:`ESTIMATORS`); always contains 0 and
    never exceeds the observed [min, max]. Raises :class:`ConfigError` for an unknown method."""
    if method not in ESTIMATORS:
        raise ConfigError(f"unknown range estimator {method!r}; known: {', '.join(ESTIMATORS)}")
    if h.lo > h.hi:  # never observed
        return 0.0, 0.0
    if method == "minmax":
        lo, hi = h.lo, h.hi
    elif method == "mse":
        lo, hi = mse_range(h, symmetric)
    elif method == "percentile":
        if symmetric:
            t = _quantile(h, percentile / 100.0, True)
            lo, hi = -t, t
        else:
            tail = (100.0 - percentile) / 100.0
            lo, hi = _quantile(h, tail, False), _quantile(h, 1.0 - tail, False)
    else:
        from onnxruntime.quantization.calibrate import HistogramCollector

        with contextlib.redirect_stdout(io.StringIO()):
            t_lo, t_hi = HistogramCollector.get_entropy_threshold(
                None, (h.hist, h.edges(), np.float32(h.lo), np.float32(h.hi)), num_quantized_bins)
        lo, hi = float(t_lo), float(t_hi)
    lo, hi = max(min(lo, 0.0), min(h.lo, 0.0)), min(max(hi, 0.0), max(h.hi, 0.0))
    if symmetric:
        t = max(abs(lo), abs(hi))
        lo, hi = -t, t
    return float(lo), float(hi)


def write_ranges(hists: dict[str, TensorHistogram], method: str | dict[str, str], symmetric: bool, out: Path, *,
                 percentile: float = 99.999, num_quantized_bins: int = 128) -> dict:
    """Write the ranges of every tensor to ``out`` in ORT's calibration cache format (atomically);
    ``method``: one estimator for all tensors or a {tensor: estimator} map (unlisted tensors:
    minmax). Returns a summary: estimator counts, seconds, and the mean fraction of the observed
    range kept (1.0 = nothing clipped)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    t0 = time.perf_counter()
    data, kept, used = {}, [], {}
    for t, h in hists.items():
        meth = method if isinstance(method, str) else method.get(t, "minmax")
        lo, hi = estimate_range(h, meth, symmetric, percentile=percentile, num_quantized_bins=num_quantized_bins)
        data[t] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        full = max(h.hi, 0.0) - min(h.lo, 0.0)
        if full > 0:
            kept.append((hi - lo) / full)
        used[meth] = used.get(meth, 0) + 1
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), out)
    return {"estimators": used, "num_tensors": len(data), "mean_range_kept": float(np.mean(kept)) if kept else 1.0,
            "seconds": time.perf_counter() - t0}
