"""Calibration recipes (``calibration/<name>.yaml``) and calibration-set selection.

Calibration images come from the TRAINING split only, so accuracy measured on the validation
split is held out from calibration.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..data import ImageFolder, Sample, stratified_sample
from ..errors import ConfigError, DataError

METHODS = ("minmax", "entropy", "percentile")


def calibration_dir() -> Path:
    env = os.environ.get("EDGETRANSFER_CALIBRATION")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "calibration"
    if repo.is_dir():
        return repo
    from importlib import resources

    return Path(str(resources.files("edgetransfer._calibration")))


@dataclass(frozen=True)
class CalibrationRecipe:
    """``num_samples`` images, class-``stratified`` or not, chosen with ``seed``; ``method`` one of
    minmax / entropy / percentile (``percentile`` in percent, ``num_bins`` histogram bins)."""

    name: str = "default"
    num_samples: int = 128
    stratified: bool = True
    seed: int = 0
    method: str = "minmax"
    percentile: float = 99.999
    num_bins: int = 2048
    batch_size: int = 16
    allow_fewer: bool = False

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"calibration recipe {self.name!r}: num_samples must be >= 1")
        if self.method not in METHODS:
            raise ConfigError(f"calibration recipe {self.name!r}: method must be one of {METHODS} (got {self.method!r})")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"calibration recipe {self.name!r}: percentile must be in (50, 100]")
        if self.batch_size < 1 or self.num_bins < 16:
            raise ConfigError(f"calibration recipe {self.name!r}: batch_size >= 1 and num_bins >= 16 required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_recipe(name_or_path: str) -> CalibrationRecipe:
    """By name (``calibration/<name>.yaml``) or path. Raises :class:`ConfigError` listing the known ones."""
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.is_file()):
        p = calibration_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in calibration_dir().glob("*.yaml"))
        raise ConfigError(f"unknown calibration recipe {name_or_path!r}; known: {', '.join(known)} (or a YAML path)")
    raw = yaml.safe_load(p.read_text()) or {}
    raw.setdefault("name", p.stem)
    try:
        return CalibrationRecipe(**raw)
    except TypeError as exc:
        raise ConfigError(f"{p}: {exc}") from exc


def select_calibration_set(train: ImageFolder, recipe: CalibrationRecipe) -> list[Sample]:
    """The calibration images: ``recipe.num_samples`` from ``train``, class-stratified and seeded.

    Raises :class:`DataError` when the training split has fewer images than asked for, unless the
    recipe sets ``allow_fewer`` (then all of them are used).
    """
    if len(train) < recipe.num_samples and not recipe.allow_fewer:
        raise DataError(
            f"calibration recipe {recipe.name!r} asks for {recipe.num_samples} images but the training split "
            f"has only {len(train)}; lower num_samples or set allow_fewer: true in the recipe"
        )
    return stratified_sample(train, min(recipe.num_samples, len(train)), recipe.seed, recipe.stratified)
