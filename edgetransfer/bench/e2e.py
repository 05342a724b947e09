"""End-to-end classification of encoded images (JPEG bytes in, top-k out) and its latency.

``ImageClassifier`` is what an application on the device runs: decode (Pillow, by the manifest's
image policy: EXIF orientation, 16-bit scaling, alpha over the stated background) -> the manifest's
preprocessing (:func:`edgetransfer.data.preprocess_image`, the same function training, calibration
and the accuracy pass use) -> the runner -> softmax -> top-k. The benchmark times it next to the
compute-only figure (prepared tensor in, logits out) because on small devices pre- and
post-processing can take as long as the network.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..data import PreprocessSpec, Sample, decode_rgb, preprocess_image
from ..imagepolicy import ImagePolicy
from .latency import LatencyStats, measure_latency


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float logits (B, C) -> float32 probabilities (B, C) (max-subtracted)."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices int64 (B, k) and values (B, k) of the ``k`` largest entries per row, descending."""
    k = min(k, probs.shape[-1])
    idx = np.argpartition(-probs, k - 1, axis=-1)[:, :k]
    vals = np.take_along_axis(probs, idx, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(idx, order, axis=-1), np.take_along_axis(vals, order, axis=-1)


class ImageClassifier:
    """Encoded image bytes -> ``[(class_name, probability)]`` (top-k, descending).

    ``runner``: an activated :class:`~edgetransfer.runtime.Runner`; ``spec``: the artifact
    manifest's preprocessing; ``class_names``: the manifest's class order.
    """

    def __init__(self, runner, spec: PreprocessSpec, class_names: Sequence[str], k: int = 5):
        self.runner, self.spec, self.class_names, self.k = runner, spec, list(class_names), k

    def preprocess(self, data: bytes) -> np.ndarray:
        """float32 (1, 3, S, S)."""
        return preprocess_image(decode_rgb(io.BytesIO(data), self.spec.image), self.spec)[None]

    def __call__(self, data: bytes) -> list[tuple[str, float]]:
        idx, p = top_k(softmax(self.runner(self.preprocess(data))), self.k)
        return [(self.class_names[i], float(v)) for i, v in zip(idx[0], p[0])]


def encoded_payloads(samples: Sequence[Sample], n: int = 16, quality: int = 95, policy: ImagePolicy | None = None) -> list[bytes]:
    """Up to ``n`` evenly spaced samples as JPEG bytes: a JPEG file's own bytes (EXIF included: the
    timed decode applies the image policy), any other format decoded by ``policy`` and re-encoded
    as JPEG (``quality``) once, before timing."""
    if not samples:
        return []
    step = max(1, len(samples) // n)
    out = []
    for s in list(samples)[::step][:n]:
        raw = s.path.read_bytes()
        if raw[:3] == b"\xff\xd8\xff":
            out.append(raw)
        else:
            buf = io.BytesIO()
            decode_rgb(s.path, policy).save(buf, format="JPEG", quality=quality)
            out.append(buf.getvalue())
    return out


@dataclass
class EndToEndStats:
    """``latency``: per image, JPEG bytes in -> top-k out (batch 1); ``*_p50_ms``: medians of the
    phases of the same iterations (they add up to about ``latency.p50_ms``); ``num_payloads``:
    distinct images cycled through; ``mean_bytes``: their mean encoded size."""

    latency: LatencyStats
    decode_p50_ms: float
    preprocess_p50_ms: float
    infer_p50_ms: float
    postprocess_p50_ms: float
    num_payloads: int
    mean_bytes: float

    def to_dict(self):
        d = asdict(self)
        d.update(d.pop("latency"))
        return d


def measure_end_to_end(runner, spec: PreprocessSpec, class_names: Sequence[str], payloads: Sequence[bytes], *, warmup: int,
                       min_iterations: int, min_seconds: float, k: int = 5) -> EndToEndStats:
    """Time :class:`ImageClassifier` on ``payloads`` (cycled), with the same stopping rule as the
    compute-only figure; records per-phase times of every timed iteration."""
    if not payloads:
        raise ValueError("no images to time end to end")
    clf = ImageClassifier(runner, spec, class_names, k)
    clock = time.perf_counter_ns
    phases: list[tuple[int, int, int, int]] = []
    state = {"i": 0}
    sync = runner.synchronize

    def once():
        data = payloads[state["i"] % len(payloads)]
        state["i"] += 1
        t0 = clock()
        img = decode_rgb(io.BytesIO(data), spec.image)
        t1 = clock()
        x = preprocess_image(img, spec)[None]
        t2 = clock()
        logits = runner(x)
        sync()
        t3 = clock()
        top_k(softmax(logits), clf.k)
        t4 = clock()
        phases.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))

    stats = measure_latency(once, 1, warmup=warmup, min_iterations=min_iterations, min_seconds=min_seconds, sync=sync)
    timed = np.asarray(phases[warmup:], dtype=np.float64) / 1e6
    med = np.median(timed, axis=0) if len(timed) else np.zeros(4)
    return EndToEndStats(stats, float(med[0]), float(med[1]), float(med[2]), float(med[3]), len(payloads),
                         float(np.mean([len(p) for p in payloads])))
