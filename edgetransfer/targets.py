"""Target device profiles: ``targets/<name>.yaml`` loaded into frozen, validated dataclasses.

Code never branches on a device name; it reads the fields of a :class:`Target`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import TargetError
from .types import Precision, Runtime

_QUANT_TYPES = ("uint8", "int8")
_CAL_METHODS = ("minmax", "entropy", "percentile")


def targets_dir() -> Path:
    """Directory holding the target YAML files.

    Order: ``$EDGETRANSFER_TARGETS``; the repository's top-level ``targets/`` (source checkout or
    editable install); the copy shipped in the wheel as ``edgetransfer._targets``.
    """
    env = os.environ.get("EDGETRANSFER_TARGETS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent / "targets"
    if repo.is_dir():
        return repo
    from importlib import resources

    return Path(str(resources.files("edgetransfer._targets")))


@dataclass(frozen=True)
class QuantizationPreset:
    """How INT8 QDQ models are made for a target.

    ``activation_type``/``weight_type``: ``uint8`` or ``int8``. ``symmetric_activations`` forces a
    zero point of 0 (TensorRT consumes only symmetric signed INT8). ``calibration`` names a recipe
    in ``calibration/<name>.yaml``.
    """

    format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    calibration: str = "default"

    def __post_init__(self) -> None:
        if self.format != "qdq":
            raise TargetError(f"quantization.format must be 'qdq' (got {self.format!r})")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in _QUANT_TYPES:
                raise TargetError(
                    f"quantization.{name} must be one of {_QUANT_TYPES} (got {getattr(self, name)!r})"
                )
        if self.symmetric_activations and self.activation_type != "int8":
            raise TargetError(
                "quantization.symmetric_activations needs activation_type: int8 "
                "(a symmetric uint8 range would waste half the codes)"
            )


@dataclass(frozen=True)
class BenchmarkSettings:
    """Default latency settings. Timing stops when both ``min_iterations`` and ``min_seconds``
    (seconds) are reached; ``threads`` 0 means all cores."""

    batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 20
    min_iterations: int = 200
    min_seconds: float = 3.0
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise TargetError(f"benchmark.batch_sizes must be positive integers (got {self.batch_sizes})")
        if self.warmup < 0 or self.min_iterations < 1 or self.min_seconds < 0:
            raise TargetError("benchmark: warmup >= 0, min_iterations >= 1, min_seconds >= 0 required")


@dataclass(frozen=True)
class Target:
    """A device profile. ``opset_max``: highest ONNX opset its runtimes accept.
    ``max_top1_drop``: accuracy budget, a fraction of top-1 vs the fp32 ONNX model."""

    name: str
    description: str
    arch: str
    runtimes: tuple[Runtime, ...]
    precisions: tuple[Precision, ...]
    opset_max: int = 18
    quantization: QuantizationPreset = field(default_factory=QuantizationPreset)
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    max_top1_drop: float = 0.005
    formats: tuple[str, ...] = ("onnx",)
    compute_capability: str | None = None
    tensorrt_version: str | None = None
    jetpack: str | None = None
    l4t: str | None = None
    dla_cores: int = 0
    workspace_mib: int | None = None
    # ONNX Runtime execution providers in priority order (full ORT names); empty = CPU only.
    # Providers missing from the installed onnxruntime build are skipped and the report says so.
    execution_providers: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.runtimes:
            raise TargetError(f"target {self.name!r}: 'runtimes' must list at least one runtime")
        if not self.precisions:
            raise TargetError(f"target {self.name!r}: 'precisions' must list at least one precision")
        if not (7 <= self.opset_max <= 30):
            raise TargetError(f"target {self.name!r}: opset_max {self.opset_max} is outside 7..30")
        if not (0.0 <= self.max_top1_drop <= 1.0):
            raise TargetError(f"target {self.name!r}: accuracy_budget.max_top1_drop must be a fraction in [0, 1]")
        bad = [p for p in self.execution_providers if not str(p).endswith("ExecutionProvider")]
        if bad:
            raise TargetError(f"target {self.name!r}: execution_providers must be ONNX Runtime provider names such as "
                              f"CUDAExecutionProvider (got {bad})")

    def supports(self, precision: Precision | str) -> bool:
        return Precision(precision) in self.precisions

    def require_precision(self, precision: Precision | str) -> None:
        """Raise :class:`TargetError` before any work starts if ``precision`` is unsupported."""
        if not self.supports(precision):
            raise TargetError(
                f"target {self.name!r} does not support {precision} (supported: "
                f"{', '.join(map(str, self.precisions))}); choose one of those or another target"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (QuantizationPreset, BenchmarkSettings)):
                v = {g.name: (list(getattr(v, g.name)) if isinstance(getattr(v, g.name), tuple) else getattr(v, g.name)) for g in fields(v)}
            elif isinstance(v, tuple):
                v = [str(x) for x in v]
            out[f.name] = v
        return out


def _parse(name: str, raw: dict[str, Any], source: str) -> Target:
    if not isinstance(raw, dict):
        raise TargetError(f"{source}: a target profile must be a YAML mapping")
    raw = dict(raw)
    known = {f.name for f in fields(Target)} | {"accuracy_budget", "quantization", "benchmark"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TargetError(f"{source}: unknown keys {unknown}; known keys are {sorted(known)}")
    try:
        runtimes = tuple(Runtime(r) for r in raw.pop("runtimes", []))
        precisions = tuple(Precision(p) for p in raw.pop("precisions", []))
    except ValueError as exc:
        raise TargetError(
            f"{source}: {exc}; runtimes are {[r.value for r in Runtime]}, precisions are {[p.value for p in Precision]}"
        ) from exc
    quant_raw = raw.pop("quantization", None) or {}
    bench_raw = raw.pop("benchmark", None) or {}
    budget = raw.pop("accuracy_budget", None) or {}
    try:
        quant = QuantizationPreset(**quant_raw)
        if "batch_sizes" in bench_raw:
            bench_raw["batch_sizes"] = tuple(int(b) for b in bench_raw["batch_sizes"])
        bench = BenchmarkSettings(**bench_raw)
    except TypeError as exc:
        raise TargetError(f"{source}: {exc}") from exc
    raw.setdefault("name", name)
    if "formats" in raw:
        raw["formats"] = tuple(raw["formats"])
    if "execution_providers" in raw:
        raw["execution_providers"] = tuple(str(p) for p in raw["execution_providers"] or ())
    if "compute_capability" in raw and raw["compute_capability"] is not None:
        raw["compute_capability"] = str(raw["compute_capability"])
    if "tensorrt_version" in raw and raw["tensorrt_version"] is not None:
        raw["tensorrt_version"] = str(raw["tensorrt_version"])
    try:
        return Target(
            runtimes=runtimes,
            precisions=precisions,
            quantization=quant,
            benchmark=bench,
            max_top1_drop=float(budget.get("max_top1_drop", 0.005)),
            **raw,
        )
    except TypeError as exc:
        raise TargetError(f"{source}: {exc}") from exc


def list_targets(directory: Path | None = None) -> list[str]:
    """Names of the available targets (YAML stems), sorted."""
    d = directory or targets_dir()
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_target(name_or_path: str | os.PathLike, directory: Path | None = None) -> Target:
    """Load a target by name (``targets/<name>.yaml``) or by path to a YAML file.

    Raises :class:`TargetError` for an unknown name (listing the known ones) or a malformed file.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        path = p
    else:
        path = (directory or targets_dir()) / f"{name_or_path}.yaml"
        if not path.is_file():
            raise TargetError(
                f"unknown target {str(name_or_path)!r}; known targets: {', '.join(list_targets(directory)) or '(none)'}"
                " (or pass the path of a target YAML file)"
            )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TargetError(f"{path}: not valid YAML: {exc}") from exc
    return _parse(path.stem, raw, str(path))
