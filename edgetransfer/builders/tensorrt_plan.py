"""TensorRT engine builds, step 1: :func:`plan_engine_build` validates a build and fixes its
parameters (optimisation profile, builder flags, file names) without TensorRT. See
:mod:`edgetransfer.builders.tensorrt` for the whole recipe and its sources."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts import Manifest
from ..bundle import BUILD_SCRIPT, ONNX_FP16, ONNX_FP32, ONNX_INT8, TRT_CACHE, Bundle  # noqa: F401
from ..bundle import engine_file as _engine_file
from ..errors import ArtifactError, ConfigError, TargetError
from ..targets import Target, list_targets, load_target
from ..types import Precision, Runtime

CACHE_DIR = TRT_CACHE
PRECISION_CHOICES = ("fp32", "fp16", "int8", "best")


def engine_file(target: Target, label: str) -> str:
    """``model.<target>.<label>.engine`` (label: fp32 / fp16 / int8 / best)."""
    return _engine_file(target.name, label)


def _version_floor(spec: str) -> str:
    """The lowest TensorRT version a target spec admits (``">=10"`` -> ``"10"``)."""
    return spec[2:] if spec.startswith(">=") else spec


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int(x) for x in re.findall(r"\d+", version)] + [0, 0]
    return parts[0], parts[1]


def strongly_typed_only(tensorrt_version: str) -> bool:
    """TensorRT 11 removed the precision builder flags: every network is strongly typed."""
    return _major_minor(tensorrt_version)[0] >= 11


@dataclass(frozen=True)
class EngineBuildPlan:
    """Everything an engine build needs, fixed before any work.

    ``label``: the precision asked for (fp32 / fp16 / int8 / best); ``precision``: what the
    manifest records (``best`` resolves to int8 with fp16 fallback where the target has INT8,
    else fp16). ``builder_flags``: TensorRT precision flags (empty when strongly typed).
    ``profile``: ``{"input", "min", "opt", "max"}`` shapes of the dynamic batch axis.
    ``tensorrt_version``: the version the plan is for (the device's, else the target's spec).
    ``compute_capability``: the device's, else the target's (None: not known before the build).
    ``timing_cache``: path relative to the bundle, or None.
    """

    target: str
    label: str
    precision: str
    onnx: str
    onnx_sha256: str
    engine: str
    input_name: str
    profile: dict[str, Any]
    builder_flags: tuple[str, ...]
    strongly_typed: bool
    tensorrt_version: str
    compute_capability: str | None
    workspace_mib: int
    dla_core: int | None
    timing_cache: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["builder_flags"] = list(self.builder_flags)
        return d

    def trtexec_args(self, trtexec: str = "trtexec", timing_cache: str | None = None) -> list[str]:
        """The equivalent ``trtexec`` command line (TensorRT's own builder CLI) as an argv list.

        Flags by TensorRT version: ``--memPoolSize=workspace:N`` (MiB) from 8.4, ``--workspace=N``
        before; ``--skipInference`` from 8.6, ``--buildOnly`` before; ``--stronglyTyped`` on 11
        (where precision flags no longer exist). ``timing_cache``: another cache path than the plan's.
        """
        version = _version_floor(self.tensorrt_version)
        mm = _major_minor(version)
        p = self.profile
        shape = lambda dims: f"{self.input_name}:{'x'.join(str(d) for d in dims)}"  # noqa: E731
        args = [trtexec, f"--onnx={self.onnx}", f"--saveEngine={self.engine}", f"--minShapes={shape(p['min'])}",
                f"--optShapes={shape(p['opt'])}", f"--maxShapes={shape(p['max'])}"]
        args.append(f"--memPoolSize=workspace:{self.workspace_mib}" if mm >= (8, 4) else f"--workspace={self.workspace_mib}")
        args.append("--skipInference" if mm >= (8, 6) else "--buildOnly")
        if self.timing_cache:
            args.append(f"--timingCacheFile={timing_cache or self.timing_cache}")
        if self.strongly_typed:
            args.append("--stronglyTyped")
        args += [f"--{flag}" for flag in self.builder_flags]
        if self.dla_core is not None:
            args += [f"--useDLACore={self.dla_core}", "--allowGPUFallback"]
        return args

    def timing_cache_path(self, compute_capability: str | None) -> str:
        """Cache file keyed by TensorRT version, compute capability and the parent ONNX sha256:
        a re-exported ONNX never meets a cache made for another one."""
        cc = (compute_capability or self.compute_capability or "any").replace(".", "")
        return f"{CACHE_DIR}/timing-trt{_version_floor(self.tensorrt_version)}-sm{cc}-{self.onnx_sha256[:16]}.cache"


def _bundle_file(bundle: Path, name: str, how: str) -> tuple[Path, Manifest]:
    return Bundle(bundle).require(name, how)  # sha256 must match before anything is built from it


def tensorrt_targets() -> list[str]:
    out = []
    for n in list_targets():
        try:
            if Runtime.TENSORRT in load_target(n).runtimes:
                out.append(n)
        except TargetError:
            continue
    return out


def int8_onnx_problems(bundle: Path, target: Target) -> list[str]:
    """Why the bundle's INT8 Q/DQ ONNX cannot be built for ``target`` (empty: it can).

    Reads the graph (zero-point types and values, dequantized types, opset) and checks it against
    the target's quantization preset and TensorRT's rules (:mod:`edgetransfer.onnx_inspect`).
    """
    from ..onnx_inspect import check_qdq_for_target

    path = Path(bundle) / ONNX_INT8
    if not path.is_file():
        return [f"{bundle} has no {ONNX_INT8}"]
    return check_qdq_for_target(path, target.quantization, target.opset_max, tensorrt=True)


def _onnx_opset(path: Path) -> int | None:
    try:
        from ..onnx_inspect import file_opset

        return file_opset(path)
    except Exception:  # onnx not installed: the device's TensorRT parser judges the opset
        return None


def plan_engine_build(bundle: str | Path, target: Target, precision: str, *, dla_core: int | None = None,
                      tensorrt_version: str | None = None, compute_capability: str | None = None) -> EngineBuildPlan:
    """Validate an engine build and fix its parameters, without TensorRT.

    ``precision``: fp32 / fp16 / int8 / best. ``tensorrt_version`` / ``compute_capability``: the
    device's, when known (else the target's). Raises :class:`TargetError` for what the target
    cannot do (a precision it does not list — INT8 on ``jetson-nano`` —, a DLA core it lacks, an
    INT8 Q/DQ ONNX made with another preset), :class:`ArtifactError` for a missing or modified ONNX,
    :class:`ConfigError` for an unknown precision or a static batch axis.
    """
    bundle = Path(bundle)
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if Runtime.TENSORRT not in target.runtimes:
        raise TargetError(f"target {target.name!r} has no TensorRT runtime; engines are built for {', '.join(tensorrt_targets()) or 'none'}")
    if precision != "best":
        target.require_precision(precision)
    version = tensorrt_version or target.tensorrt_version
    strongly = strongly_typed_only(_version_floor(version))
    if dla_core is not None:
        if target.dla_cores == 0:
            raise TargetError(f"target {target.name!r} has no DLA cores; drop --dla-core (its engines run on the GPU)")
        if not 0 <= dla_core < target.dla_cores:
            raise TargetError(f"target {target.name!r} has DLA cores 0..{target.dla_cores - 1}; --dla-core {dla_core} does not exist")
        if precision == "fp32":
            raise TargetError("DLA runs fp16 or int8 only; choose --precision fp16, int8 or best with --dla-core")

    int8 = precision == "int8" or (precision == "best" and target.supports(Precision.INT8))
    if int8:
        recorded, flags = "int8", (() if strongly else (("int8", "fp16") if precision == "best" else ("int8",)))
        onnx_name, how = ONNX_INT8, f"make it with `edgetransfer quantize {bundle} --target {target.name}`"
    elif precision in ("fp16", "best"):
        recorded = "fp16"
        if strongly:  # TensorRT 11: no fp16 flag; the ONNX must carry fp16 types
            flags, onnx_name = (), ONNX_FP16
            how = (f"TensorRT {version} builds strongly typed networks only (no fp16 flag): it needs an fp16 ONNX — "
                   "make model.fp16.onnx (fp32 inputs/outputs) with the export stage's fp16 conversion or ModelOpt AutoCast")
        else:
            flags, onnx_name, how = ("fp16",), ONNX_FP32, f"run `edgetransfer export {bundle} --target {target.name}`"
    else:
        recorded, flags, onnx_name, how = "fp32", (), ONNX_FP32, f"run `edgetransfer export {bundle} --target {target.name}`"

    path, m = _bundle_file(bundle, onnx_name, how)
    if int8 and not strongly and ((m.details or {}).get("preset") or {}).get("high_precision_dtype") == "fp16":
        flags = tuple(flags) + (() if "fp16" in flags else ("fp16",))  # weakly typed 10.x: let the fp16 remainder run in fp16
    if int8:
        problems = int8_onnx_problems(bundle, target)
        if problems:
            made = (m.details or {}).get("preset") or {}
            made_by = f" (it was quantized for target {m.target!r}: {made.get('activation_type', '?')} activations, " \
                      f"symmetric={made.get('symmetric_activations', '?')})" if m.target else ""
            raise TargetError(
                f"{onnx_name} does not meet target {target.name}'s INT8 preset — TensorRT consumes signed, symmetric INT8 "
                f"(zero point 0) Q/DQ with float biases{made_by}: " + "; ".join(problems)
                + f". Make a matching one with `edgetransfer quantize {bundle} --target {target.name}` (on the machine that has the "
                "training images), or pass --requantize to `edgetransfer build` there; it is never used silently")
    else:
        opset = _onnx_opset(path)
        if opset is not None and opset > target.opset_max:
            raise TargetError(f"{onnx_name} uses opset {opset}, above target {target.name}'s ceiling {target.opset_max} "
                              f"(the highest its TensorRT parses); re-export with `edgetransfer export {bundle} --target {target.name}`")
    if not m.inputs:
        raise ArtifactError(f"{onnx_name}'s manifest lists no inputs; re-run the stage that produced it")
    spec = m.inputs[0]
    shape = list(spec["shape"])
    if any(not isinstance(d, int) for d in shape[1:]):
        raise ConfigError(f"{onnx_name}: input {spec['name']!r} has dynamic non-batch dimensions {shape}; only the batch axis may be dynamic")
    pb = target.profile_batch
    if isinstance(shape[0], int) and not (pb.min == pb.opt == pb.max == shape[0]):
        raise ConfigError(f"{onnx_name}: the batch axis of {spec['name']!r} is fixed to {shape[0]}, but target {target.name}'s profile "
                          f"needs batches {pb.min}..{pb.max}; re-export with a dynamic batch axis (`edgetransfer export`)")
    rest = [int(d) for d in shape[1:]]
    profile = {"input": spec["name"], "min": [pb.min] + rest, "opt": [pb.opt] + rest, "max": [pb.max] + rest}
    cc = compute_capability or target.compute_capability
    plan = EngineBuildPlan(
        target=target.name, label=precision, precision=recorded, onnx=onnx_name, onnx_sha256=m.sha256,
        engine=engine_file(target, precision), input_name=spec["name"], profile=profile, builder_flags=tuple(flags),
        strongly_typed=strongly, tensorrt_version=version, compute_capability=cc, workspace_mib=int(target.workspace_mib),
        dla_core=dla_core, timing_cache=None,
    )
    if target.timing_cache:
        plan = EngineBuildPlan(**{**plan.__dict__, "timing_cache": plan.timing_cache_path(cc)})
    return plan


def _details(plan: EngineBuildPlan, build: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "precision": plan.precision,
        "tensorrt": {
            "requested_precision": plan.label, "builder_flags": list(plan.builder_flags), "strongly_typed": plan.strongly_typed,
            "profile": plan.profile, "workspace_mib": plan.workspace_mib, "dla_core": plan.dla_core,
            "gpu_fallback": plan.dla_core is not None, "timing_cache": plan.timing_cache, **(build or {}),
        },
    }
