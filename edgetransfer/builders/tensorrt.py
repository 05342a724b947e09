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

import shlex
import time
from pathlib import Path

from ..artifacts import Manifest, atomic_path, read_manifest, tool_versions, write_manifest
from ..bundle import Bundle
from ..errors import ArtifactError, TargetError, require
from ..progress import log
from ..runtime.tensorrt import DeviceFacts, check_engine_compatible, device_facts, engine_facts
from ..targets import Target, parse_compute_capability, tensorrt_version_matches
from ..types import Format
from .tensorrt_plan import (BUILD_SCRIPT, CACHE_DIR, ONNX_FP16, ONNX_FP32, ONNX_INT8, PRECISION_CHOICES,  # noqa: F401
                            EngineBuildPlan, _details, engine_file, int8_onnx_problems, plan_engine_build,
                            strongly_typed_only, tensorrt_targets)
from .tensorrt_script import render_build_script, write_build_script  # noqa: F401

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
        outputs=parent.outputs, producer="edgetransfer.builders.tensorrt", tool_versions=tool_versions("tensorrt", "polygraphy"),
        details=details))
    b = Bundle(bundle)
    if b.exists:
        b.register(out.name)
    log(f"{out.name}: {m.size_bytes / 2**20:.1f} MiB in {seconds:.1f} s")
    return m, False


def planned_engines(bundle: Path, target: Target) -> list[tuple[str, str]]:
    """``(engine file, precision)`` of the engines a TensorRT target's benchmark expects that the
    bundle does not hold (:meth:`edgetransfer.bundle.Bundle.planned_engines`)."""
    return Bundle(bundle).planned_engines(target)
