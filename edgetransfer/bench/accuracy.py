"""Accuracy of an artifact on a labelled set, and agreement with the fp32 reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np


@dataclass
class AccuracyStats:
    """Fractions in [0, 1]. ``top5`` only when there are more than 5 classes.
    ``agreement_with_fp32``: fraction of samples whose top-1 equals the fp32 reference's."""

    top1: float
    num_samples: int
    top5: float | None = None
    agreement_with_fp32: float | None = None
    per_class: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)  # rows: true class, cols: predicted

    def to_dict(self):
        return asdict(self)


def predict(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits (N, C) of ``fn`` over ``x`` (N, 3, S, S) in batches."""
    outs = [np.asarray(fn(np.ascontiguousarray(x[i : i + batch_size])), dtype=np.float32) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray, class_names: list[str], reference_pred: np.ndarray | None = None) -> AccuracyStats:
    """Top-1/top-5, per-class accuracy and confusion matrix from logits (N, C) and labels (N,)."""
    n, c = logits.shape
    pred = logits.argmax(1)
    top1 = float((pred == labels).mean()) if n else 0.0
    top5 = None
    if c > 5:
        top5_idx = np.argsort(-logits, axis=1)[:, :5]
        top5 = float((top5_idx == labels[:, None]).any(1).mean())
    conf = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(conf, (labels, pred), 1)
    per_class = {name: float(conf[i, i] / conf[i].sum()) for i, name in enumerate(class_names) if conf[i].sum()}
    agree = float((pred == reference_pred).mean()) if reference_pred is not None and n else None
    return AccuracyStats(top1, int(n), top5, agree, per_class, conf.tolist())
