"""Parity of a candidate model's logits against a reference's, on the same inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ParityError

# Default tolerances per precision, in logit units (absolute): the largest and the mean
# |candidate - reference| over all logits, and the minimum top-1 agreement (fraction).
# fp32: the main job's contract (max 1e-3); re-ordered fp32 arithmetic in an exporter or runtime
#   stays far below that (measured: dynamo export of EfficientNet-Lite0 fine-tuned on hymenoptera,
#   153 validation images: max 2.4e-6, mean 5.0e-7), so a mean above 1e-4 is a real change.
# fp16: 10 bits of mantissa give ~1e-3 relative error per op; 5e-2 max / 1e-2 mean absolute on
#   logits of magnitude ~10 is the usual bound (onnxconverter-common's own tests use 1e-2 rtol).
# int8: logits move by design; only agreement is held here (0.97, issue 2's acceptance figure);
#   accuracy is held by the accuracy budget (quantize.int8), not by logit distance.
TOLERANCES = {
    "fp32": {"max_abs": 1e-3, "mean_abs": 1e-4, "min_agreement": 0.99},
    "fp16": {"max_abs": 5e-2, "mean_abs": 1e-2, "min_agreement": 0.98},
    "int8": {"max_abs": float("inf"), "mean_abs": float("inf"), "min_agreement": 0.97},
}


@dataclass
class ParityStats:
    """``max_abs``/``mean_abs``: |candidate - reference| over all logits; ``agreement``: fraction
    of samples whose argmax matches; ``num_samples``: N."""

    max_abs: float
    mean_abs: float
    agreement: float
    num_samples: int
    has_nonfinite: bool = False

    def to_dict(self):
        return asdict(self)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> ParityStats:
    """Both float arrays of shape (N, C). Raises ValueError on a shape mismatch."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {reference.shape} vs candidate {candidate.shape}")
    nonfinite = not np.isfinite(candidate).all()
    diff = np.abs(np.nan_to_num(candidate, nan=np.inf) - reference)
    return ParityStats(
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        agreement=float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0,
        num_samples=int(len(reference)),
        has_nonfinite=bool(nonfinite),
    )


def tolerance(precision: str, **overrides: float | None) -> dict[str, float]:
    """The default tolerances of ``precision`` (``fp32``/``fp16``/``int8``) with non-None
    ``overrides`` (``max_abs``, ``mean_abs``, ``min_agreement``) applied."""
    if precision not in TOLERANCES:
        raise ValueError(f"no parity tolerance for precision {precision!r}; known: {sorted(TOLERANCES)}")
    return {**TOLERANCES[precision], **{k: float(v) for k, v in overrides.items() if v is not None}}


def check_parity(stats: ParityStats, *, output: str, what: str, max_abs: float, min_agreement: float,
                 mean_abs: float = float("inf"), hint: str | None = None) -> None:
    """Raise :class:`ParityError` naming ``output`` and the figures when out of tolerance:
    NaN/inf in the candidate, max |diff| > ``max_abs``, mean |diff| > ``mean_abs`` or top-1
    agreement < ``min_agreement``. ``hint`` replaces the default "how to fix" sentence."""
    problems = []
    if stats.has_nonfinite:
        problems.append("NaN or inf in the outputs")
    if stats.max_abs > max_abs:
        problems.append(f"max |diff| {stats.max_abs:.3g} > {max_abs:.3g}")
    if stats.mean_abs > mean_abs:
        problems.append(f"mean |diff| {stats.mean_abs:.3g} > {mean_abs:.3g}")
    if stats.agreement < min_agreement:
        problems.append(f"top-1 agreement {stats.agreement:.4f} < {min_agreement:.4f}")
    if problems:
        raise ParityError(
            f"{what}: output {output!r} is out of tolerance on {stats.num_samples} images "
            f"({'; '.join(problems)}; max |diff| {stats.max_abs:.3g}, mean |diff| {stats.mean_abs:.3g}, "
            f"agreement {stats.agreement:.4f}). "
            + (hint or "The conversion changed the model: try another opset or exporter (--no-dynamo), or report the model")
        )
