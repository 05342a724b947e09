"""Calibration recipes (``calibration/<name>.yaml``), calibration-set selection, and the tensor
ranges computed from them (cached).

Calibration images come from the TRAINING split only, so accuracy measured on the validation
split is held out from calibration.

Which methods are equivalent (onnxruntime.quantization 1.2x-1.3x calibrators, checked by
tests/test_calibration.py):

- ``entropy`` searches the clipping threshold that minimises the KL divergence between the
  ``num_bins``-bin histogram and its ``num_quantized_bins``-level quantization. With
  ``num_bins == num_quantized_bins`` (ORT's defaults: 128 and 128, and ``quantize_static``
  has no option to change them) and one histogram of all calibration outputs (what
  ``quantize_static`` builds) there is exactly one candidate, the full range, clipped to the
  observed [min, max]: **entropy == minmax**, byte for byte. The
  recipe therefore states ``num_bins`` (default 2048, TensorRT's histogram calibrator) and
  ``num_quantized_bins`` (128), the calibrator is built here with them, and a recipe with
  ``num_bins <= num_quantized_bins`` is rejected.
- ``percentile`` at 100 clips nothing: the observed [min, max] rounded inward to the histogram
  grid, i.e. **percentile 100 == minmax up to one bin** (2 max|x| / ``num_bins``), so
  ``percentile`` must be < 100.
- minmax / entropy (2048 bins) / percentile (< 100) then give different ranges on any tensor
  whose distribution has tails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..artifacts import atomic_write_json
from ..data import ImageFolder, Sample, stratified_sample
from ..errors import ConfigError, DataError, require
from ..progress import log

METHODS = ("minmax", "entropy", "percentile")


def calibration_dir() -> Path:
    env = os.environ.get("EDGETRANSFER_CALIBRATION")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "calibration"
    if repo.is_dir():
        return repo
    # the wheel ships it as edgetransfer/_calibration/ (a namespace package: resources.files gives a MultiplexedPath,
    # whose str() is not a path), so locate it beside the package
    import edgetransfer

    return Path(edgetransfer.__file__).resolve().parent / "_calibration"


@dataclass(frozen=True)
class CalibrationRecipe:
    """``num_samples`` images, class-``stratified`` or not, chosen with ``seed``; ``method`` one of
    minmax / entropy / percentile. ``percentile``: percent of the histogram kept (< 100; used by
    percentile). ``num_bins``: histogram bins (entropy, percentile); ``num_quantized_bins``: the
    quantized levels entropy compares against (must be < ``num_bins``, see the module docstring).
    ``batch_size``: images per calibration batch. ``allow_fewer``: a training split smaller than
    ``num_samples`` is a warning instead of an error."""

    name: str = "default"
    num_samples: int = 128
    stratified: bool = True
    seed: int = 0
    method: str = "minmax"
    percentile: float = 99.999
    num_bins: int = 2048
    num_quantized_bins: int = 128
    batch_size: int = 16
    allow_fewer: bool = False

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"calibration recipe {self.name!r}: num_samples must be >= 1")
        if self.method not in METHODS:
            raise ConfigError(f"calibration recipe {self.name!r}: method must be one of {METHODS} (got {self.method!r})")
        if not 50.0 < self.percentile < 100.0:
            raise ConfigError(f"calibration recipe {self.name!r}: percentile must be in (50, 100) (got {self.percentile}); "
                              "percentile 100 clips nothing and gives the minmax ranges up to one histogram bin: use method: minmax")
        if self.batch_size < 1 or self.num_bins < 16 or self.num_quantized_bins < 2:
            raise ConfigError(f"calibration recipe {self.name!r}: batch_size >= 1, num_bins >= 16 and num_quantized_bins >= 2 required")
        if self.method == "entropy" and self.num_bins <= self.num_quantized_bins:
            raise ConfigError(
                f"calibration recipe {self.name!r}: entropy with num_bins {self.num_bins} <= num_quantized_bins "
                f"{self.num_quantized_bins} has a single candidate threshold and gives exactly the minmax ranges; "
                "use num_bins: 2048 (TensorRT's default) or method: minmax")

    def range_params(self) -> dict[str, Any]:
        """The recipe fields that change the computed ranges (cache key material)."""
        d: dict[str, Any] = {"method": self.method}
        if self.method in ("entropy", "percentile"):
            d["num_bins"] = self.num_bins
        if self.method == "entropy":
            d["num_quantized_bins"] = self.num_quantized_bins
        if self.method == "percentile":
            d["percentile"] = self.percentile
        return d

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
    recipe sets ``allow_fewer`` (then all of them are used, with a warning giving both counts).
    """
    if len(train) < recipe.num_samples:
        if not recipe.allow_fewer:
            raise DataError(
                f"calibration recipe {recipe.name!r} asks for {recipe.num_samples} images but the training split "
                f"has only {len(train)}; lower num_samples or set allow_fewer: true in the recipe"
            )
        log(f"[yellow]calibration recipe {recipe.name!r} asks for {recipe.num_samples} images; the training split has "
            f"only {len(train)}: calibrating on all {len(train)} (allow_fewer: true)")
    return stratified_sample(train, min(recipe.num_samples, len(train)), recipe.seed, recipe.stratified)


# -- tensor ranges and their cache ---------------------------------------------------------------

def array_digest(x: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes: the digest of exactly what calibration saw."""
    x = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def range_cache_key(model_sha256: str, calibration_sha256: str, recipe: CalibrationRecipe, preset) -> tuple[str, dict[str, Any]]:
    """``(key, material)``: the cache key (sha256 hex) of the tensor ranges of one model on one
    calibration set with one method and one quantization preset, and the material it hashes.

    Of the preset, the activation fields enter (``activation_type``, ``symmetric_activations``):
    ranges are computed on the float model and only the activation settings change them; the
    weight settings (``weight_type``, ``per_channel``, ``symmetric_weights``) act after
    calibration, so presets that differ only there share their ranges.
    """
    ort = require("onnxruntime", "export")
    material = {
        "model_sha256": model_sha256,
        "calibration_sha256": calibration_sha256,
        **recipe.range_params(),
        "activation_type": preset.activation_type,
        "symmetric_activations": bool(preset.symmetric_activations),
        "onnxruntime": ort.__version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest(), material


class _ArrayReader:
    """``CalibrationDataReader`` over batches of one float32 (N, 3, S, S) array."""

    def __init__(self, x: np.ndarray, input_name: str, batch_size: int):
        self.x, self.input_name, self.batch_size, self.i = x, input_name, batch_size, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += self.batch_size
        return {self.input_name: np.ascontiguousarray(self.x[self.i - self.batch_size : self.i])}

    def __len__(self):
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def rewind(self):
        self.i = 0


def compute_ranges(model_path: Path, x: np.ndarray, input_name: str, recipe: CalibrationRecipe, preset, out: Path,
                   op_types: Sequence[str] | None = None) -> None:
    """Run the recipe's calibrator on ``model_path`` (float ONNX, already pre-processed) over the
    float32 (N, 3, S, S) images ``x``; write the tensor ranges to ``out`` in ORT's calibration
    cache format (``onnxruntime.quantization.calibrate.save_tensors_data``), atomically.

    Built with ``create_calibrator`` directly so that ``num_bins`` / ``num_quantized_bins`` reach
    the histogram calibrators (``quantize_static`` does not pass them). Images are fed 2 batches
    at a time: every calibrator merges ranges/histograms across ``collect_data`` calls, so memory
    stays bounded by two batches of activations.
    """
    import tempfile

    require("onnxruntime.quantization", "export", "INT8 calibration")
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.method]
    symmetric = bool(preset.symmetric_activations)
    opts: dict[str, Any] = {"symmetric": symmetric}
    if recipe.method in ("entropy", "percentile"):
        opts["num_bins"] = recipe.num_bins
    if recipe.method == "entropy":
        opts["num_quantized_bins"] = recipe.num_quantized_bins
    if recipe.method == "percentile":
        opts["percentile"] = recipe.percentile
    # ORT's calibrators print progress to stdout: keep the CLI's stdout (and --json) clean
    with tempfile.TemporaryDirectory(prefix="edgetransfer-calib-") as td, contextlib.redirect_stdout(io.StringIO()):
        cal = create_calibrator(Path(model_path), list(op_types) if op_types else None,
                                augmented_model_path=str(Path(td) / "augmented.onnx"), calibrate_method=method,
                                extra_options=opts)
        step = 2 * recipe.batch_size
        for i in range(0, len(x), step):
            cal.collect_data(_ArrayReader(x[i : i + step], input_name, recipe.batch_size))
        ranges = cal.compute_data()
        del cal
    save_tensors_data(ranges, out)  # atomic (temporary file + os.replace)


@dataclass
class CachedRanges:
    """A calibration cache entry: ``path`` of the ranges JSON, whether it was ``reused`` (else
    computed now), the ``key`` and its ``material``, and ``seconds`` spent computing (0 if reused)."""

    path: Path
    reused: bool
    key: str
    material: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "reused": self.reused, "key": self.key, "material": self.material,
                "seconds": self.seconds}


def cached_ranges(model_path: Path, model_sha256: str, x: np.ndarray, input_name: str, recipe: CalibrationRecipe, preset,
                  cache_dir: Path, op_types: Sequence[str] | None = None) -> CachedRanges:
    """The tensor ranges of ``model_path`` on ``x``: reused from ``cache_dir`` when an entry with
    the same key exists AND its recorded key material equals the current one, else computed
    (:func:`compute_ranges`) and stored as ``<key>.ranges.json`` + ``<key>.key.json``.

    ``model_sha256`` is the sha256 of the fp32 ONNX the ranges belong to (from its manifest);
    with :func:`array_digest` of ``x``, the recipe's range parameters and the preset's activation
    settings it forms the key (:func:`range_cache_key`), so a new model, another calibration set,
    method or preset never reuses stale ranges.
    """
    key, material = range_cache_key(model_sha256, array_digest(x), recipe, preset)
    cache_dir = Path(cache_dir)
    ranges, meta = cache_dir / f"{key[:32]}.ranges.json", cache_dir / f"{key[:32]}.key.json"
    if ranges.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()) == {"key": key, **material}:
                log(f"calibration ranges reused from {ranges}")
                return CachedRanges(ranges, True, key, material, 0.0)
        except json.JSONDecodeError:
            pass
        log(f"[yellow]calibration cache entry {ranges.name} does not match this model/calibration set: recomputing")
    t0 = time.perf_counter()
    meta.unlink(missing_ok=True)  # an interrupted recompute must not leave a key beside stale ranges
    compute_ranges(model_path, x, input_name, recipe, preset, ranges, op_types)
    atomic_write_json(meta, {"key": key, **material})
    return CachedRanges(ranges, False, key, material, time.perf_counter() - t0)
