"""Target device profiles: ``targets/<name>.yaml`` loaded into frozen, validated dataclasses.

Code never branches on a device name; it reads the fields of a :class:`Target`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import TargetError
from .types import Format, Precision, Runtime

_QUANT_TYPES = ("uint8", "int8")
_CAL_METHODS = ("minmax", "entropy", "percentile")
_CC_RE = re.compile(r"^\d+\.\d+$")
_TRT_SPEC_RE = re.compile(r"^(>=)?\d+(\.\d+){0,3}$")
# Lowest compute capability with INT8 math (dp4a): 6.1. TensorRT's hardware/precision table lists
# 5.3 (Jetson Nano) and 6.0 (P100) without INT8 (TensorRT 8.2.5 Support Matrix, "Hardware and
# Precision": https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-825/support-matrix/).
MIN_INT8_COMPUTE_CAPABILITY = (6, 1)


def parse_compute_capability(cc: str) -> tuple[int, int]:
    """``"8.7"`` -> ``(8, 7)``. Raises :class:`TargetError` on another format."""
    if not isinstance(cc, str) or not _CC_RE.match(cc):
        raise TargetError(f"compute capability must look like '8.7' (major.minor), got {cc!r}")
    major, minor = cc.split(".")
    return int(major), int(minor)


def tensorrt_version_matches(spec: str, version: str) -> bool:
    """Does TensorRT ``version`` (e.g. ``"10.3.0.30"``) satisfy a target's ``spec``?

    ``spec`` is a version prefix (``"10.3"`` matches 10.3.x.y, ``"8.5.2"`` matches 8.5.2.z) or a
    lower bound ``">=10"`` / ``">=10.8"`` compared on the components it names.
    """
    if not _TRT_SPEC_RE.match(spec or ""):
        raise TargetError(f"tensorrt_version must look like '10.3' or '>=10' (got {spec!r})")
    have = [int(x) for x in re.findall(r"\d+", version)]
    if spec.startswith(">="):
        want = [int(x) for x in spec[2:].split(".")]
        return tuple(have[: len(want)] + [0] * (len(want) - len(have))) >= tuple(want)
    want = [int(x) for x in spec.split(".")]
    return have[: len(want)] == want


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
    # the wheel ships it as edgetransfer/_targets/ (a namespace package: resources.files gives a MultiplexedPath,
    # whose str() is not a path), so locate it beside the package
    import edgetransfer

    return Path(edgetransfer.__file__).resolve().parent / "_targets"


# Named quantization presets: ``quantization: {preset: NAME}`` in a target YAML (other keys
# override single fields) or ``edgetransfer quantize --preset NAME``.
QUANT_PRESETS: dict[str, dict[str, Any]] = {
    # ONNX Runtime on x86/ARM CPUs: U8S8 QDQ fuses into QLinearConv/ConvInteger kernels (ORT's
    # quantize_static guidance for x86 CPUs with VNNI); weights signed symmetric, per channel.
    "ort-cpu": {"activation_type": "uint8", "weight_type": "int8", "per_channel": True,
                "symmetric_activations": False, "symmetric_weights": True},
    # TensorRT explicit quantization: signed symmetric INT8 only (zero point 0), per-tensor
    # activations, per-channel weights (NVIDIA TensorRT Developer Guide, "Explicit Quantization").
    # Same layout as the Jetson / x86-nvidia-gpu target profiles: Q/DQ pairs not shared between
    # nodes (ORT's DedicatedQDQPair, "In TRT, QDQ pair can't be shared between nodes"), float
    # biases (TRT's parser dequantizes INT8 only), float weights behind Q->DQ (accepted by every
    # TensorRT with explicit quantization), no Q/DQ on the outputs of weighted ops ("Q/DQ
    # Layer-Placement" guidance).
    # Placed by edgetransfer.quantize.tensorrt_qdq (ModelOpt's partitioning: no Q/DQ inside
    # Conv+BN+act groups, residual Add quantized on its skip input, Concat inputs sharing a scale),
    # INT8 weight initializers behind DequantizeLinear (TensorRT >= 10; 8.x targets keep float
    # weights behind Q->DQ in their profiles).
    "tensorrt": {"activation_type": "int8", "weight_type": "int8", "per_channel": True,
                 "symmetric_activations": True, "symmetric_weights": True, "dedicated_qdq_pair": True,
                 "quantize_bias": False, "qdq_pair_on_weights": False, "no_output_qdq_ops": ("Conv", "Gemm", "MatMul"),
                 "placement": "tensorrt"},
}


@dataclass(frozen=True)
class QuantizationPreset:
    """How INT8 QDQ models are made for a target.

    ``name``: the preset's name (a key of :data:`QUANT_PRESETS`, else the target's name).
    ``activation_type``/``weight_type``: ``uint8`` or ``int8``. ``symmetric_activations`` forces a
    zero point of 0 (TensorRT consumes only symmetric signed INT8). ``per_channel``: one weight
    scale per output channel. ``calibration`` names a recipe in ``calibration/<name>.yaml``.
    """

    name: str = "custom"
    format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    calibration: str = "default"
    # How the Q/DQ graph is laid out (onnxruntime.quantization extra_options of the same meaning):
    # ``quantize_bias`` False keeps biases float (ORT "QuantizeBias"; TensorRT's ONNX parser only
    # dequantizes INT8 tensors, not ORT's int32 biases); ``qdq_pair_on_weights`` keeps float weights
    # behind a Q->DQ pair (ORT "AddQDQPairToWeight"; TensorRT 8.x quantizes weights itself from
    # float weights); ``dedicated_qdq_pair`` gives every consumer its own Q/DQ pair (ORT
    # "DedicatedQDQPair": TensorRT fuses a pair into one consumer).
    quantize_bias: bool = True
    qdq_pair_on_weights: bool = False
    dedicated_qdq_pair: bool = False
    # op types whose outputs get no Q/DQ (ORT "OpTypesToExcludeOutputQuantization"); TensorRT's
    # Q/DQ placement guidance: quantize the inputs of weighted ops, not their outputs
    no_output_qdq_ops: tuple[str, ...] = ()
    # ``placement``: ``ort`` (onnxruntime.quantization's, Q/DQ around every op it knows) or
    # ``tensorrt`` (TensorRT's explicit-quantization placement, edgetransfer.quantize.tensorrt_qdq).
    # ``high_precision_dtype``: type of the non-quantized remainder with the tensorrt placement,
    # ``fp32`` or ``fp16`` (ModelOpt's option: strongly typed TensorRT 11 runs fp32 tensors in fp32).
    placement: str = "ort"
    high_precision_dtype: str = "fp32"
    # ``reduce_range``: 7-bit INT8 weights, [-64, 64] (ORT quantize_static ``reduce_range``), for x86 CPUs whose
    # u8s8 kernels saturate (:func:`edgetransfer.host.int8_saturates`); None: decided on this CPU.
    reduce_range: bool | None = None

    def __post_init__(self) -> None:
        if self.format != "qdq":
            raise TargetError(f"quantization.format must be 'qdq' (got {self.format!r})")
        if self.placement not in ("ort", "tensorrt"):
            raise TargetError(f"quantization.placement must be 'ort' or 'tensorrt' (got {self.placement!r})")
        if self.high_precision_dtype not in ("fp32", "fp16"):
            raise TargetError(f"quantization.high_precision_dtype must be 'fp32' or 'fp16' (got {self.high_precision_dtype!r})")
        if self.reduce_range not in (None, True, False):
            raise TargetError(f"quantization.reduce_range must be true, false or null (decide by this CPU), got {self.reduce_range!r}")
        if self.high_precision_dtype == "fp16" and self.placement != "tensorrt":
            raise TargetError("quantization.high_precision_dtype: fp16 needs placement: tensorrt (an fp16 remainder is for strongly "
                              "typed TensorRT builds)")
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

    @classmethod
    def named(cls, preset: str, **overrides: Any) -> "QuantizationPreset":
        """The preset ``preset`` of :data:`QUANT_PRESETS` with single fields overridden.
        Raises :class:`TargetError` for an unknown name (listing the known ones)."""
        if preset not in QUANT_PRESETS:
            raise TargetError(f"unknown quantization preset {preset!r}; known presets: {', '.join(QUANT_PRESETS)}")
        return cls(**{"name": preset, **QUANT_PRESETS[preset], **overrides})

    @property
    def zero_point_free(self) -> bool:
        """True when every zero point is 0 (signed symmetric activations and weights)."""
        return self.activation_type == "int8" and self.symmetric_activations and self.weight_type == "int8" and self.symmetric_weights

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


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


_PLATFORMS = ("linux", "android", "ios", "macos", "windows")
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


def normalize_arch(arch: str) -> str:
    """``arm64`` -> ``aarch64``, ``amd64``/``x64`` -> ``x86_64``; others lower-cased as they are."""
    a = arch.lower()
    return _ARCH_ALIASES.get(a, a)


def host_platform() -> str:
    """The operating system of this host in :data:`_PLATFORMS` terms (``android`` on Android's Python)."""
    import sys

    if hasattr(sys, "getandroidapilevel"):
        return "android"
    return {"darwin": "macos", "win32": "windows"}.get(sys.platform, "ios" if sys.platform == "ios" else "linux")


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of a TensorRT optimisation profile for the dynamic batch axis: engines accept
    ``min`` <= batch <= ``max`` and are tuned for ``opt``."""

    min: int = 1
    opt: int = 1
    max: int = 8

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise TargetError(f"profile_batch needs 1 <= min <= opt <= max (got min={self.min}, opt={self.opt}, max={self.max})")


@dataclass(frozen=True)
class Target:
    """A device profile. ``opset_max``: highest ONNX opset its runtimes accept.
    ``max_top1_drop``: accuracy budget, a fraction of top-1 vs the fp32 ONNX model.
    ``platform``: the device's operating system (one of linux, android, ios, macos, windows);
    with ``arch`` it decides whether a measurement on this host is a measurement of the target
    (:meth:`host_is_target`). ``formats``: the artifact formats built and benchmarked for it; the
    fp32/INT8 ONNX files are always made too (the fp32 reference, and the source of ``.ort``)."""

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
    # GPU targets: ``compute_capability`` fixes the GPU (a Jetson module); a desktop/server target
    # leaves it None and gives ``min_compute_capability`` instead. ``profile_batch``: the
    # optimisation profile of engines. ``timing_cache``: save/reuse TensorRT's tactic timing cache.
    min_compute_capability: str | None = None
    profile_batch: BatchProfile = field(default_factory=BatchProfile)
    timing_cache: bool = True
    # ONNX Runtime execution providers in priority order (full ORT names); empty = CPU only.
    # Providers missing from the installed onnxruntime build are skipped and the report says so.
    execution_providers: tuple[str, ...] = ()
    platform: str = "linux"
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
        if self.platform not in _PLATFORMS:
            raise TargetError(f"target {self.name!r}: platform must be one of {_PLATFORMS} (got {self.platform!r})")
        known = {f.value for f in Format} - {"checkpoint"}
        bad = [f for f in self.formats if f not in known]
        if bad:
            raise TargetError(f"target {self.name!r}: unknown formats {bad}; known: {sorted(known)}")
        bad = [p for p in self.execution_providers if not str(p).endswith("ExecutionProvider")]
        if bad:
            raise TargetError(f"target {self.name!r}: execution_providers must be ONNX Runtime provider names such as "
                              f"CUDAExecutionProvider (got {bad})")
        if self.dla_cores < 0:
            raise TargetError(f"target {self.name!r}: dla_cores must be >= 0 (got {self.dla_cores})")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise TargetError(f"target {self.name!r}: workspace_mib must be a positive number of MiB (got {self.workspace_mib})")
        for key in ("compute_capability", "min_compute_capability"):
            if getattr(self, key) is not None:
                try:
                    parse_compute_capability(getattr(self, key))
                except TargetError as exc:
                    raise TargetError(f"target {self.name!r}: {key}: {exc}") from None
        if self.tensorrt_version is not None and not _TRT_SPEC_RE.match(self.tensorrt_version):
            raise TargetError(f"target {self.name!r}: tensorrt_version must look like '10.3' or '>=10' (got {self.tensorrt_version!r})")
        if Runtime.TENSORRT in self.runtimes:
            self._validate_tensorrt()

    def _validate_tensorrt(self) -> None:
        """A TensorRT target must name what its engines depend on, and ask only for what it can do."""
        missing = [k for k in ("tensorrt_version", "workspace_mib") if getattr(self, k) is None]
        if self.compute_capability is None and self.min_compute_capability is None:
            missing.append("compute_capability (or min_compute_capability)")
        if missing:
            raise TargetError(f"target {self.name!r} lists the tensorrt runtime but does not set {', '.join(missing)}")
        if "engine" not in self.formats:
            raise TargetError(f"target {self.name!r} lists the tensorrt runtime: add 'engine' to its formats")
        p = self.profile_batch
        outside = [b for b in self.benchmark.batch_sizes if not p.min <= b <= p.max]
        if outside:
            raise TargetError(f"target {self.name!r}: benchmark batch sizes {outside} are outside profile_batch "
                              f"[{p.min}, {p.max}]; an engine cannot run them — widen profile_batch or drop them")
        if Precision.INT8 in self.precisions:
            cc = self.compute_capability or self.min_compute_capability
            if parse_compute_capability(cc) < MIN_INT8_COMPUTE_CAPABILITY:
                raise TargetError(f"target {self.name!r}: compute capability {cc} has no INT8 math in TensorRT "
                                  "(needs 6.1 or newer); remove int8 from its precisions")
            q = self.quantization
            if not (q.activation_type == "int8" and q.weight_type == "int8" and q.symmetric_activations and q.symmetric_weights):
                raise TargetError(f"target {self.name!r}: TensorRT consumes symmetric signed INT8 only (zero point 0); "
                                  "set quantization activation_type: int8, weight_type: int8, symmetric_activations: true, symmetric_weights: true")
            if q.quantize_bias:
                raise TargetError(f"target {self.name!r}: TensorRT's ONNX parser dequantizes only INT8 tensors; set quantization.quantize_bias: false")
        if self.dla_cores and Precision.FP16 not in self.precisions and Precision.INT8 not in self.precisions:
            raise TargetError(f"target {self.name!r}: DLA runs fp16 or int8 only; list one of them in precisions")

    def host_is_target(self, machine: str | None = None, platform: str | None = None) -> bool:
        """True when this host has the target's CPU architecture and operating system, so latency
        measured here is the target's (a Jetson measured on the Jetson); False for e.g. an Android
        target measured on an x86 Linux workstation (a host measurement)."""
        import platform as _pf

        return (normalize_arch(machine or _pf.machine()) == normalize_arch(self.arch)
                and (platform or host_platform()) == self.platform)

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
            if isinstance(v, (QuantizationPreset, BenchmarkSettings, BatchProfile)):
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
    from .runtime import as_runtime, known_runtimes  # the runner registry is the list of runtimes

    try:
        runtimes = tuple(as_runtime(r) for r in raw.pop("runtimes", []))
        precisions = tuple(Precision(p) for p in raw.pop("precisions", []))
    except ValueError as exc:
        raise TargetError(
            f"{source}: {exc}; runtimes are {known_runtimes()}, precisions are {[p.value for p in Precision]}"
        ) from exc
    quant_raw = dict(raw.pop("quantization", None) or {})
    bench_raw = raw.pop("benchmark", None) or {}
    budget = raw.pop("accuracy_budget", None) or {}
    try:
        if "no_output_qdq_ops" in quant_raw:
            quant_raw["no_output_qdq_ops"] = tuple(str(x) for x in quant_raw["no_output_qdq_ops"] or ())
        preset = quant_raw.pop("preset", None)
        quant_raw.setdefault("name", preset or raw.get("name", name))
        quant = QuantizationPreset.named(preset, **quant_raw) if preset else QuantizationPreset(**quant_raw)
        if "batch_sizes" in bench_raw:
            bench_raw["batch_sizes"] = tuple(int(b) for b in bench_raw["batch_sizes"])
        bench = BenchmarkSettings(**bench_raw)
        if raw.get("profile_batch") is not None:
            raw["profile_batch"] = BatchProfile(**{k: int(v) for k, v in dict(raw["profile_batch"]).items()})
        else:
            raw.pop("profile_batch", None)
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{source}: {exc}") from exc
    raw.setdefault("name", name)
    for key in ("formats", "execution_providers"):
        if key in raw:
            raw[key] = tuple(str(x) for x in (raw[key] or ()))
    for key in ("compute_capability", "min_compute_capability", "tensorrt_version", "jetpack", "l4t"):
        if key in raw and raw[key] is not None:
            raw[key] = str(raw[key])
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
            import difflib

            known = list_targets(directory)
            # every known name holding all the words of the query (jetson-orin: both Orins), else the closest spelling
            words = [w for w in str(name_or_path).lower().replace("_", "-").split("-") if w]
            near = [t for t in known if words and all(w in t.split("-") for w in words)]
            near = near or difflib.get_close_matches(str(name_or_path), known, n=1)
            hint = f" (did you mean {' or '.join(repr(t) for t in near[:3])}?)" if near else ""
            raise TargetError(
                f"unknown target {str(name_or_path)!r}{hint}; "
                f"known targets: {', '.join(known) or '(none)'}"
                " (or pass the path of a target YAML file)"
            )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TargetError(f"{path}: not valid YAML: {exc}") from exc
    return _parse(path.stem, raw, str(path))
