"""Accuracy figures on hand-checked logits: top-1, top-5 (only with more than 5 classes),
agreement with the fp32 reference, per-class accuracy, confusion matrix."""

from __future__ import annotations

import numpy as np

from edgetransfer.bench.accuracy import accuracy


def test_accuracy_figures():
    names = [f"c{i}" for i in range(7)]
    logits = np.full((4, 7), -1.0, np.float32)
    logits[0, 0] = 5  # true 0, predicted 0
    logits[1, [2, 1]] = [5, 4]  # true 1, predicted 2, 1 in top-5
    logits[2, 3] = 5  # true 2, predicted 3; class 2 ranks last -> not in top-5
    logits[2, 2] = -9
    logits[3, 3] = 5  # true 3, predicted 3
    labels = np.array([0, 1, 2, 3])
    acc = accuracy(logits, labels, names, reference_pred=np.array([0, 1, 3, 3]))
    assert acc.top1 == 0.5 and acc.top5 == 0.75 and acc.num_samples == 4
    assert acc.agreement_with_fp32 == 0.75
    assert acc.per_class == {"c0": 1.0, "c1": 0.0, "c2": 0.0, "c3": 1.0}
    conf = np.asarray(acc.confusion)
    assert conf.shape == (7, 7) and conf.sum() == 4
    assert conf[0, 0] == conf[1, 2] == conf[2, 3] == conf[3, 3] == 1
    two = accuracy(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), ["a", "b"])
    assert two.top5 is None and two.agreement_with_fp32 is None and two.top1 == 0.5
