"""``EngineFromOnnx``: TensorRT engines built on the device they will run on.

An engine is valid only for the TensorRT version and the GPU architecture that built it, so the
build runs on the target (or a machine with the same GPU and TensorRT) and its manifest records
both; :mod:`edgetransfer.runtime.tensorrt` refuses an engine that does not match the device.

Three steps, the first two without TensorRT:

1. :func:`plan_engine_build` checks everything before any work — the target lists TensorRT and
   the precision, the DLA core exists, the ONNX exists and matches its manifest, an INT8 Q/DQ
   ONNX meets the target's preset (signed, symmetric, zero point 0, opset within the ceiling),
   the batch axis is dynamic — and fixes the optimisation profile, builder flags and file names.
2. :func:`write_build_script` writes ``build_engine.sh``: the equivalent ``trtexec`` command for
   every precision the target supports, for users who build without Python (JetPack 4.6/5.x
   boards, whose Python is older than edgetransfer's 3.10). It also writes the manifest.
3. :func:`build_engine` (needs TensorRT, Polygraphy and the target's GPU) parses the ONNX, builds
   with an optimisation profile for the dynamic batch axis, reuses a timing cache keyed by parent
   ONNX sha256 + TensorRT version + compute capability, and writes engine + manifest atomically.

Precision recipes (NVIDIA TensorRT Developer Guide, "Working with Quantized Types", and the
10.x -> 11.x migration guide): INT8 is explicit quantization from the Q/DQ ONNX — TensorRT's
implicit calibrators are deprecated since 10.1 and removed in 11. TensorRT before 11 builds with
precision flags (``fp16``; ``int8`` for Q/DQ; ``best`` = both). TensorRT 11 removed those flags:
every network is strongly typed, so fp16 needs an fp16 ONNX (``model.fp16.onnx``) and INT8 runs
the Q/DQ ONNX as typed.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifacts import Manifest, atomic_path, atomic_write_text, read_manifest, tool_versions, write_manifest
from ..errors import ArtifactError, ConfigError, TargetError, require
from ..progress import log
from ..runtime.tensorrt import DeviceFacts, check_engine_compatible, device_facts, engine_facts
from ..targets import Target, list_targets, load_target, parse_compute_capability, tensorrt_version_matches
from ..types import Format, Precision, Runtime

ONNX_FP32 = "model.onnx"
ONNX_FP16 = "model.fp16.onnx"
ONNX_INT8 = "model.int8.qdq.onnx"
BUILD_SCRIPT = "build_engine.sh"
CACHE_DIR = ".trt-cache"
PRECISION_CHOICES = ("fp32", "fp16", "int8", "best")


def engine_file(target: Target, label: str) -> str:
    """``model.<target>.<label>.engine`` (label: fp32 / fp16 / int8 / best)."""
    return f"model.{target.name}.{label}.engine"


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
    p = Path(bundle) / name
    if not p.is_file():
        raise ArtifactError(f"{bundle} has no {name}; {how}")
    return p, read_manifest(p)  # sha256 must match before anything is built from it


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
    the target's quantization preset and TensorRT's rules (:mod:`edgetransfer.quantize.qdq`).
    """
    from ..quantize.qdq import check_qdq_for_target

    path = Path(bundle) / ONNX_INT8
    if not path.is_file():
        return [f"{bundle} has no {ONNX_INT8}"]
    return check_qdq_for_target(path, target.quantization, target.opset_max, tensorrt=True)


def _onnx_opset(path: Path) -> int | None:
    try:
        onnx = require("onnx", "tensorrt")
    except Exception:
        return None
    m = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None)


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


# -- build_engine.sh ------------------------------------------------------------------------------

_MANIFEST_PY = r'''
import datetime, hashlib, json, os, sys
onnx, engine, trt_version, cc, device, details_json, target, cache = sys.argv[1:9]
def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
with open(onnx + ".json") as f:
    parent = json.load(f)
details = json.loads(details_json)
details["tensorrt"].update(version=trt_version, compute_capability=cc, device_name=device, timing_cache=cache or None)
board = None
if os.path.exists("/proc/device-tree/model"):
    with open("/proc/device-tree/model", "rb") as f:
        board = f.read().decode("utf-8", "replace").strip("\x00 \n") or None
details["tensorrt"]["board"] = board
m = {"format": "engine", "precision": details.pop("precision"), "file": engine, "sha256": sha256(engine),
     "size_bytes": os.path.getsize(engine), "parent_sha256": parent["sha256"], "parent_file": onnx, "target": target,
     "preprocessing": parent.get("preprocessing", {}), "class_names": parent.get("class_names", []),
     "inputs": parent.get("inputs", []), "outputs": parent.get("outputs", []),
     "producer": "edgetransfer build_engine.sh (trtexec)", "tool_versions": {"tensorrt": trt_version},
     "created_at": datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "+00:00", "details": details,
     "manifest_version": 1}
tmp = engine + ".json.tmp"
with open(tmp, "w") as f:
    json.dump(m, f, indent=2)
os.replace(tmp, engine + ".json")
if os.path.exists("bundle.json"):
    with open("bundle.json") as f:
        info = json.load(f)
    arts = [a for a in info.get("artifacts", []) if a.get("file") != engine]
    arts.append({"file": engine, "format": "engine", "precision": m["precision"], "sha256": m["sha256"]})
    info["artifacts"] = arts
    with open("bundle.json.tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace("bundle.json.tmp", "bundle.json")
print("wrote %s and %s.json (TensorRT %s, compute capability %s, %s)" % (engine, engine, trt_version, cc, device))
'''


def _bash_version_test(spec: str) -> str:
    """A bash condition that is true when ``$TRT_VERSION`` satisfies the target's spec."""
    if spec.startswith(">="):
        floor = spec[2:]
        return f'[ "$(printf "%s\\n" {floor} "$TRT_VERSION" | sort -V | head -n1)" = "{floor}" ]'
    return f'[[ "$TRT_VERSION" == {spec} || "$TRT_VERSION" == {spec}.* ]]'


def _bash_cc_test(target: Target) -> str:
    if target.compute_capability:
        return f'[ "$CC" = "{target.compute_capability}" ]'
    floor = target.min_compute_capability
    return f'[ "$(printf "%s\\n" {floor} "$CC" | sort -V | head -n1)" = "{floor}" ]'


def _details(plan: EngineBuildPlan, build: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "precision": plan.precision,
        "tensorrt": {
            "requested_precision": plan.label, "builder_flags": list(plan.builder_flags), "strongly_typed": plan.strongly_typed,
            "profile": plan.profile, "workspace_mib": plan.workspace_mib, "dla_core": plan.dla_core,
            "gpu_fallback": plan.dla_core is not None, "timing_cache": plan.timing_cache, **(build or {}),
        },
    }


def render_build_script(bundle: Path, target: Target, plans: dict[str, EngineBuildPlan | Exception], default: str) -> str:
    """Text of ``build_engine.sh``: one ``case`` branch per precision, each the full trtexec
    command, or the reason that precision cannot be built from this bundle."""
    spec = target.tensorrt_version
    where = ", ".join(x for x in (f"JetPack {target.jetpack}" if target.jetpack else "", f"L4T {target.l4t}" if target.l4t else "",
                                   f"TensorRT {spec}", f"compute capability {target.compute_capability or '>= ' + str(target.min_compute_capability)}") if x)
    lines = [
        "#!/usr/bin/env bash",
        f"# build_engine.sh: generated by edgetransfer {__version__} for target {target.name} ({where}).",
        "# Builds a TensorRT engine from this bundle with trtexec ON THE DEVICE, without Python packages.",
        "# An engine only runs with the TensorRT version and GPU architecture that built it.",
        f"# Usage:  bash build_engine.sh [{'|'.join(plans)}]      (default: {default})",
        "#         TRTEXEC=/path/to/trtexec bash build_engine.sh ...",
        "# Writes  model.<target>.<precision>.engine, its manifest <engine>.json (needs python3) and <engine>.build.log.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f'PRECISION="${{1:-{default}}}"',
        'if [ -z "${TRTEXEC:-}" ]; then',
        '  TRTEXEC="$(command -v trtexec || true)"',
        '  [ -n "$TRTEXEC" ] || TRTEXEC=/usr/src/tensorrt/bin/trtexec',
        "fi",
        '[ -x "$TRTEXEC" ] || { echo "build_engine.sh: trtexec not found (PATH, /usr/src/tensorrt/bin); set TRTEXEC=/path/to/trtexec" >&2; exit 2; }',
        f'CC_TAG="{(target.compute_capability or "").replace(".", "")}"',
        'if [ -z "$CC_TAG" ] && command -v nvidia-smi >/dev/null 2>&1; then',
        "  CC_TAG=\"$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')\"",
        "fi",
        'CC_TAG="${CC_TAG:-any}"',
        f"mkdir -p {CACHE_DIR}",
        'case "$PRECISION" in',
    ]
    for label, plan in plans.items():
        lines.append(f"  {label})")
        if isinstance(plan, Exception):
            msg = f"build_engine.sh: cannot build {label} for {target.name}: {plan}"
            lines += [f"    echo {shlex.quote(msg)} >&2", "    exit 2", "    ;;"]
            continue
        cache = f"{CACHE_DIR}/timing-trt{_version_floor(plan.tensorrt_version)}-sm${{CC_TAG}}-{plan.onnx_sha256[:16]}.cache"
        rendered = [f'"{a}"' if "$" in a else shlex.quote(a) for a in plan.trtexec_args("$TRTEXEC", timing_cache=cache)]
        lines += [
            f'    CACHE="{cache if plan.timing_cache else ""}"',
            f"    ONNX={shlex.quote(plan.onnx)}",
            f"    ONNX_SHA256={plan.onnx_sha256}",
            f"    ENGINE={shlex.quote(plan.engine)}",
            f"    DETAILS={shlex.quote(json.dumps(_details(plan)))}",
            f"    CMD=({' '.join(rendered)})",
            "    ;;",
        ]
    lines += [
        f'  *) echo "build_engine.sh: unknown precision \'$PRECISION\'; choose one of: {" ".join(plans)}" >&2; exit 2 ;;',
        "esac",
        'ACTUAL="$(sha256sum "$ONNX" | cut -d" " -f1)"',
        'if [ "$ACTUAL" != "$ONNX_SHA256" ]; then',
        f'  echo "build_engine.sh: $ONNX changed since this script was written (sha256 $ACTUAL, expected $ONNX_SHA256); regenerate it: edgetransfer build . --target {target.name} --script-only" >&2',
        "  exit 2",
        "fi",
        'LOG="$ENGINE.build.log"',
        'echo "+ ${CMD[*]}"',
        '"${CMD[@]}" 2>&1 | tee "$LOG" || { echo "build_engine.sh: trtexec failed; its log is $LOG' + (
            " (TensorRT 11 has no precision flags: regenerate with --tensorrt-version 11 for a strongly typed build)"
            if spec.startswith(">=") else "") + '" >&2; exit 1; }',
        "TRT_VERSION=\"$(sed -n 's/.*TensorRT version: *\\([0-9][0-9.]*\\).*/\\1/p' \"$LOG\" | head -n1)\"",
        "CC=\"$(sed -n 's/.*Compute Capability: *\\([0-9][0-9.]*\\).*/\\1/p' \"$LOG\" | head -n1)\"",
        "DEVICE=\"$(sed -n 's/.*Selected Device: *//p' \"$LOG\" | head -n1)\"",
        'if [ -z "$TRT_VERSION" ] || [ -z "$CC" ]; then',
        '  echo "build_engine.sh: trtexec\'s log ($LOG) names no TensorRT version / compute capability; the engine cannot be matched to a device" >&2',
        "  exit 3",
        "fi",
        f"if ! {_bash_version_test(spec)} || ! {_bash_cc_test(target)}; then",
        '  rm -f "$ENGINE" ${CACHE:+"$CACHE"}',
        f'  echo "build_engine.sh: this device has TensorRT $TRT_VERSION, compute capability $CC; target {target.name} needs TensorRT {spec}, '
        f'compute capability {target.compute_capability or ">= " + str(target.min_compute_capability)}: engine removed; use the target of this board (edgetransfer targets list)" >&2',
        "  exit 3",
        "fi",
        'if command -v python3 >/dev/null 2>&1; then',
        f'  python3 - "$ONNX" "$ENGINE" "$TRT_VERSION" "$CC" "$DEVICE" "$DETAILS" {shlex.quote(target.name)} "$CACHE" <<\'PY\'',
        _MANIFEST_PY.strip("\n"),
        "PY",
        "else",
        '  echo "build_engine.sh: no python3 here: $ENGINE has no manifest, and edgetransfer refuses an engine it cannot match to a device" >&2',
        "fi",
    ]
    return "\n".join(lines) + "\n"


def write_build_script(bundle: str | Path, target: Target, *, tensorrt_version: str | None = None, dla_core: int | None = None) -> Path:
    """Write ``BUNDLE/build_engine.sh`` (executable) for ``target``; returns its path.

    Each precision the target offers gets its trtexec command, or — when this bundle cannot give
    it (a missing ONNX, an INT8 Q/DQ made with another preset) — a branch that prints why.
    """
    bundle = Path(bundle)
    plans: dict[str, EngineBuildPlan | Exception] = {}
    for label in PRECISION_CHOICES:  # a precision the target lacks gets a branch that says so
        try:
            plans[label] = plan_engine_build(bundle, target, label, tensorrt_version=tensorrt_version,
                                             dla_core=dla_core if label != "fp32" else None)
        except (TargetError, ArtifactError, ConfigError) as exc:
            plans[label] = exc
    path = bundle / BUILD_SCRIPT
    atomic_write_text(path, render_build_script(bundle, target, plans, "best"))
    path.chmod(0o755)
    return path


# -- building on the device -----------------------------------------------------------------------

def check_device_for_target(device: DeviceFacts, target: Target) -> None:
    """Raise :class:`TargetError` when this GPU or TensorRT is not the target's (naming both)."""
    want = f"compute capability {target.compute_capability or '>= ' + str(target.min_compute_capability)}, TensorRT {target.tensorrt_version}"
    have = device.describe()
    if target.compute_capability and device.compute_capability != target.compute_capability:
        raise TargetError(f"this device has {have}; target {target.name!r} is {want}: pick the target of this board (edgetransfer targets list)")
    if target.min_compute_capability and parse_compute_capability(device.compute_capability) < parse_compute_capability(target.min_compute_capability):
        raise TargetError(f"this GPU ({have}) is older than target {target.name!r} supports ({want})")
    if not device.tensorrt_version:
        raise TargetError(f"TensorRT's Python bindings are not importable here ({have}); on a Jetson use the JetPack's "
                          "python3-libnvinfer (Dockerfile.jetson), elsewhere pip install tensorrt")
    if not tensorrt_version_matches(target.tensorrt_version, device.tensorrt_version):
        raise TargetError(f"this device has {have}; target {target.name!r} expects TensorRT {target.tensorrt_version} "
                          f"({'JetPack ' + target.jetpack if target.jetpack else 'see its profile'}): use the target for this JetPack/TensorRT")


def engine_is_current(bundle: Path, plan: EngineBuildPlan, device: DeviceFacts) -> bool:
    """True when ``plan.engine`` exists, matches its manifest, was built from the same ONNX
    (sha256) with the same profile, flags and DLA core, and belongs to this device."""
    path = Path(bundle) / plan.engine
    if not path.is_file():
        return False
    try:
        m = read_manifest(path)
        check_engine_compatible(m, device, plan.engine)
        facts = engine_facts(m, plan.engine)
    except ArtifactError:
        return False
    return (m.parent_sha256 == plan.onnx_sha256 and facts.get("profile") == plan.profile
            and list(facts.get("builder_flags") or []) == list(plan.builder_flags) and facts.get("dla_core") == plan.dla_core
            and bool(facts.get("strongly_typed")) == plan.strongly_typed)


def build_engine(bundle: str | Path, target: Target, precision: str, *, dla_core: int | None = None, force: bool = False,
                 device: DeviceFacts | None = None) -> tuple[Manifest, bool]:
    """Build ``model.<target>.<precision>.engine`` on this device; returns (manifest, reused).

    Reuses an existing engine only when :func:`engine_is_current` (same parent ONNX sha256,
    TensorRT version, compute capability, profile, flags); ``force`` rebuilds anyway. Raises the
    errors of :func:`plan_engine_build` before any work, :class:`TargetError` when this GPU or
    TensorRT is not the target's, :class:`MissingExtraError` without TensorRT/Polygraphy.
    """
    bundle = Path(bundle)
    plan_engine_build(bundle, target, precision, dla_core=dla_core)  # fail fast on what the device does not change
    device = device or device_facts()
    check_device_for_target(device, target)
    plan = plan_engine_build(bundle, target, precision, dla_core=dla_core, tensorrt_version=device.tensorrt_version,
                             compute_capability=device.compute_capability)
    if not force and engine_is_current(bundle, plan, device):
        log(f"{plan.engine} is current (same ONNX sha256, TensorRT {device.tensorrt_version}, compute capability {device.compute_capability}); not rebuilt")
        return read_manifest(bundle / plan.engine), True
    require("tensorrt", "tensorrt", "building TensorRT engines")
    poly = require("polygraphy.backend.trt", "tensorrt", "building TensorRT engines")
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING
    import tensorrt as trt

    def postprocess(builder, network, config):
        limit = int(plan.workspace_mib) << 20
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, limit)
        else:  # TensorRT < 8.4
            config.max_workspace_size = limit
        if plan.dla_core is not None:
            config.DLA_core = int(plan.dla_core)
        return config

    cache = bundle / plan.timing_cache if plan.timing_cache else None
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
    profile = poly.Profile().add(plan.input_name, min=plan.profile["min"], opt=plan.profile["opt"], max=plan.profile["max"])
    config = poly.CreateConfig(fp16="fp16" in plan.builder_flags, int8="int8" in plan.builder_flags, profiles=[profile],
                               load_timing_cache=str(cache) if cache and cache.is_file() else None,
                               use_dla=plan.dla_core is not None, allow_gpu_fallback=plan.dla_core is not None)
    network = poly.NetworkFromOnnxPath(str(bundle / plan.onnx), strongly_typed=plan.strongly_typed or None)
    t0 = time.perf_counter()
    log(f"building {plan.engine} from {plan.onnx} (TensorRT {device.tensorrt_version}, {device.name}, flags {list(plan.builder_flags) or 'none'}"
        + (", strongly typed" if plan.strongly_typed else "") + ")")
    try:
        serialized = poly.EngineBytesFromNetwork(network, config=poly.PostprocessConfig(config, postprocess),
                                                 save_timing_cache=str(cache) if cache else None)()
    except Exception as exc:  # Polygraphy raises PolygraphyException after TensorRT's own log
        raise ArtifactError(f"TensorRT could not build {plan.engine} from {plan.onnx}: {type(exc).__name__}: {exc} "
                            "(TensorRT's log above names the layer; an unsupported op needs a lower opset or another model)") from exc
    seconds = time.perf_counter() - t0
    if not serialized:
        raise ArtifactError(f"TensorRT could not build {plan.engine} (see its log above)")
    out = bundle / plan.engine
    with atomic_path(out, suffix=".engine") as tmp:
        tmp.write_bytes(bytes(serialized))
    parent = read_manifest(bundle / plan.onnx)
    details = _details(plan, {"version": device.tensorrt_version, "compute_capability": device.compute_capability,
                              "device_name": device.name, "board": device.board, "build_seconds": seconds,
                              "trtexec": shlex.join(plan.trtexec_args())})
    details.pop("precision")
    m = write_manifest(out, Manifest(
        format=str(Format.ENGINE), precision=plan.precision, file=out.name, parent_sha256=parent.sha256, parent_file=plan.onnx,
        target=target.name, preprocessing=parent.preprocessing, class_names=parent.class_names, inputs=parent.inputs,
        outputs=parent.outputs, producer="edgetransfer.build.tensorrt", tool_versions=tool_versions("tensorrt", "polygraphy"),
        details=details))
    from ..pipeline import register_artifact

    if (bundle / "bundle.json").is_file():
        register_artifact(bundle, out.name)
    log(f"{out.name}: {m.size_bytes / 2**20:.1f} MiB in {seconds:.1f} s")
    return m, False


def planned_engines(bundle: Path, target: Target) -> list[tuple[str, str]]:
    """``(engine file, precision)`` of the engines a TensorRT target's benchmark expects (one per
    reduced precision it lists) that the bundle does not hold — each is reported as
    ``not built on this host`` rather than measured."""
    if Runtime.TENSORRT not in target.runtimes:
        return []
    out = []
    for p in (Precision.FP16, Precision.INT8):
        if target.supports(p) and not (Path(bundle) / engine_file(target, str(p))).is_file():
            out.append((engine_file(target, str(p)), str(p)))
    return out
