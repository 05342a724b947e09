"""The one parity judge: a candidate model's logits against a reference's, on the same inputs.

Every stage that changes a model's representation is judged here — export (ONNX vs PyTorch, and
onnxslim vs the unsimplified graph), fp16 (vs the fp32 ONNX), the mobile builders (.tflite / .pte /
.ort vs the fp32 model, Core ML's folded preprocessing) — and so is ``edgetransfer selftest`` on the
device (each artifact vs the golden logits).

Shape (after Polygraphy's ``comparator/compare.py`` + ``comparator/struct.py``): :func:`compare_logits`
computes the figures (:class:`ParityStats`), :func:`judge` holds them to a :class:`Tolerance` and
returns a typed, JSON-serialisable :class:`ParityResult` listing what failed; :meth:`ParityResult.
raise_for` turns a failure into a :class:`~edgetransfer.errors.ParityError` naming the figures.

Tolerance semantics (all absolute, in logit units; a bound of ``inf`` is not checked). A candidate
passes when every one holds:

* no NaN or inf among its outputs;
* ``max_abs``: the largest ``|candidate - reference|`` over all N x C logits;
* ``mean_abs``: the mean of ``|candidate - reference|`` over all N x C logits;
* ``min_agreement``: the fraction of the N samples whose argmax (top-1 class) is the same.

No relative term: Polygraphy's default check is ``|a - b| <= atol + rtol * |b|`` elementwise;
logits of a classifier have no natural scale near 0, so a relative bound would demand the least
of the smallest logits. The mean bound catches a systematic shift that stays under the max bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import ParityError

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


@dataclass(frozen=True)
class Tolerance:
    """Bounds a candidate must meet (semantics in the module docstring); ``inf``: not checked."""

    max_abs: float = float("inf")
    mean_abs: float = float("inf")
    min_agreement: float = 0.0

    @classmethod
    def for_precision(cls, precision: str, **overrides: float | None) -> "Tolerance":
        """The default bounds of ``precision`` (:data:`TOLERANCES`) with non-None ``overrides``.
        Raises ValueError for an unknown precision."""
        return cls(**tolerance(str(precision), **overrides))

    def to_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "min_agreement": self.min_agreement}


@dataclass
class ParityResult:
    """The judgement of one candidate: its figures, the bounds it was held to, and every bound it
    broke (``problems``, empty when it passed). ``to_dict()`` is what manifests and reports store."""

    what: str
    output: str
    stats: ParityStats
    tolerance: Tolerance
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        finite = lambda v: None if math.isinf(v) else v  # noqa: E731 - JSON has no inf
        return {"passed": self.passed, "what": self.what, "output": self.output, **self.stats.to_dict(),
                "tolerance": {k: finite(v) for k, v in self.tolerance.to_dict().items()}, "problems": list(self.problems)}

    def message(self, hint: str | None = None) -> str:
        s = self.stats
        return (f"{self.what}: output {self.output!r} is out of tolerance on {s.num_samples} images "
                f"({'; '.join(self.problems)}; max |diff| {s.max_abs:.3g}, mean |diff| {s.mean_abs:.3g}, "
                f"agreement {s.agreement:.4f}). "
                + (hint or "The conversion changed the model: try another opset or exporter (--no-dynamo), or report the model"))

    def raise_for(self, hint: str | None = None) -> "ParityResult":
        """Raise :class:`ParityError` (the figures, the broken bounds, ``hint`` on how to fix) when
        the candidate failed; return self otherwise."""
        if self.problems:
            raise ParityError(self.message(hint))
        return self


def problems_of(stats: ParityStats, tol: Tolerance) -> list[str]:
    """The bounds of ``tol`` that ``stats`` breaks, as readable phrases (empty: within tolerance)."""
    problems = []
    if stats.has_nonfinite:
        problems.append("NaN or inf in the outputs")
    if stats.max_abs > tol.max_abs:
        problems.append(f"max |diff| {stats.max_abs:.3g} > {tol.max_abs:.3g}")
    if stats.mean_abs > tol.mean_abs:
        problems.append(f"mean |diff| {stats.mean_abs:.3g} > {tol.mean_abs:.3g}")
    if stats.agreement < tol.min_agreement:
        problems.append(f"top-1 agreement {stats.agreement:.4f} < {tol.min_agreement:.4f}")
    return problems


def judge(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance | str, *, what: str, output: str = "logits") -> ParityResult:
    """Compare ``candidate`` with ``reference`` (float arrays (N, C)) and hold the figures to ``tol``
    (a :class:`Tolerance` or a precision name: ``fp32``/``fp16``/``int8``). Never raises for a
    failing candidate (see :meth:`ParityResult.raise_for`); ValueError on a shape mismatch."""
    tol = Tolerance.for_precision(tol) if isinstance(tol, str) else tol
    stats = compare_logits(reference, candidate)
    return ParityResult(what=what, output=output, stats=stats, tolerance=tol, problems=problems_of(stats, tol))


def check_parity(stats: ParityStats, *, output: str, what: str, max_abs: float, min_agreement: float,
                 mean_abs: float = float("inf"), hint: str | None = None) -> None:
    """Raise :class:`ParityError` naming ``output`` and the figures when out of tolerance:
    NaN/inf in the candidate, max |diff| > ``max_abs``, mean |diff| > ``mean_abs`` or top-1
    agreement < ``min_agreement``. ``hint`` replaces the default "how to fix" sentence."""
    tol = Tolerance(max_abs=max_abs, mean_abs=mean_abs, min_agreement=min_agreement)
    ParityResult(what=what, output=output, stats=stats, tolerance=tol, problems=problems_of(stats, tol)).raise_for(hint)
