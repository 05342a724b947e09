"""One agreement gate sized to its sample, for every "same function?" check of a reduced-precision
artifact: ONNX Runtime graph optimisations on vs off (INT8), mobile conversion parity (.tflite /
.pte / .ort INT8 vs fp32) and ``selftest`` on a device.

A fixed top-1 agreement bar (e.g. 98 %) is a coin toss on a small split: one borderline image of
24 is 4 %. :func:`flip_gate` counts a flip only where the reference was decisive (its softmax
top-1 minus top-2 probability >= ``decisive_margin``): rounding moves images that sit on a class
boundary, which says nothing about the kernels. It passes when the decisive flips stay within
``max_flip_share`` of the decisive images (at least ``min_allowed_flips`` allowed), OR when the
logits agree within ``max_rel_logit_diff`` (mean |candidate - reference| / mean |reference|):
two implementations of one function may move a borderline image, never the logits as a whole.

A failing gate never aborts a job: the caller writes the artifact with status ``gate_failed``
and :attr:`GateResult.reason`, the report says why, and the job exits 3 after the report
(:class:`~edgetransfer.errors.BudgetExceededError`'s code).

The ONNX Runtime on/off check does not apply to TensorRT-preset artifacts
(:func:`is_tensorrt_preset`): TensorRT never runs ONNX Runtime's CPU kernels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .stats import decisive_mask

GATE_FAILED = "gate_failed"  # the artifact status a failing gate writes (edgetransfer.types.Status.GATE_FAILED)


@dataclass(frozen=True)
class GateSpec:
    """Thresholds of :func:`flip_gate` (see the module docstring)."""

    decisive_margin: float = 0.1
    max_flip_share: float = 0.01
    min_allowed_flips: int = 0
    max_rel_logit_diff: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_GATE = GateSpec()


@dataclass
class GateResult:
    """``passed``; ``reason`` (one sentence naming the figures and the sample size);
    ``figures``: images, decisive images, flips, decisive flips, allowed flips, rel. logit diff."""

    name: str
    passed: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.name, "passed": self.passed, "reason": self.reason, **self.figures}


def flip_gate(reference: np.ndarray, candidate: np.ndarray, *, name: str, spec: GateSpec = DEFAULT_GATE) -> GateResult:
    """Whether ``candidate`` logits (float (N, C)) compute the same function as ``reference``'s
    on the same N inputs (rule in the module docstring). Never raises for a failing candidate;
    :class:`ValueError` on a shape mismatch."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f"{name}: logits of different shapes ({ref.shape} vs {cand.shape})")
    n = len(ref)
    if not np.isfinite(cand).all():
        return GateResult(name, False, f"{name}: NaN or inf in the candidate's outputs on {n} images",
                          {"images": n, "spec": spec.to_dict()})
    decisive = decisive_mask(ref, spec.decisive_margin) if n else np.zeros(0, bool)
    flips = ref.argmax(1) != cand.argmax(1) if n else np.zeros(0, bool)
    nd, df = int(decisive.sum()), int((flips & decisive).sum())
    allowed = max(spec.min_allowed_flips, int(np.floor(spec.max_flip_share * nd + 1e-9)))
    rel = float(np.abs(cand - ref).mean() / max(float(np.abs(ref).mean()), 1e-12)) if n else 0.0
    fig = {"images": n, "decisive_images": nd, "flips": int(flips.sum()), "decisive_flips": df, "allowed_flips": allowed,
           "rel_logit_diff": rel, "spec": spec.to_dict()}
    sizes = (f"{int(flips.sum())} flip(s) of {n} images, {df} of {nd} decisive (fp32 margin >= {spec.decisive_margin}; "
             f"{allowed} allowed), mean |logit diff| {rel:.1%} of mean |reference logit|")
    if df <= allowed:
        return GateResult(name, True, f"{name}: passed on decisive flips ({df} <= {allowed} allowed): {sizes}", fig)
    if rel <= spec.max_rel_logit_diff:
        return GateResult(name, True, f"{name}: passed on the logit tolerance ({rel:.1%} <= {spec.max_rel_logit_diff:.0%}): {sizes}", fig)
    return GateResult(name, False, f"{name}: failed: {sizes} (> {spec.max_rel_logit_diff:.0%})", fig)


def is_tensorrt_preset(preset: dict[str, Any] | None) -> bool:
    """Whether a manifest's ``details.preset`` dict describes an artifact made for TensorRT: the
    ``tensorrt`` preset by name, or its layout (signed symmetric activations with dedicated Q/DQ pairs)."""
    if not preset:
        return False
    return preset.get("name") == "tensorrt" or bool(
        preset.get("symmetric_activations") and preset.get("activation_type") == "int8" and preset.get("dedicated_qdq_pair"))
