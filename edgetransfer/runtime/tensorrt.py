"""TensorRT runner for serialized engines (``.engine``), and the facts of the CUDA device here.

An engine is valid only for the TensorRT version and the GPU architecture that built it
(TensorRT support matrix: "Serialized engines are not portable across platforms or TensorRT
versions"; without hardware-compatibility mode they "are not portable across devices"). The
runner therefore compares the engine's manifest with this device *before* it reads the engine,
and refuses a mismatch with a message naming both sides.

Importing this module imports neither TensorRT nor Polygraphy (the registry stays light): the
device is queried through the CUDA driver API with ``ctypes``; TensorRT and Polygraphy (its
``TrtRunner`` handles both the binding API of TensorRT 8.x and the tensor API of 10.x) are
imported when a runner is activated.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..artifacts import Manifest, read_manifest
from ..errors import ArtifactError, ConfigError, EngineMismatchError, require
from ..types import Format, Runtime, Status
from ..host import cuda_device, installed_tensorrt_version, jetson_board  # noqa: F401 (re-exported)
from .base import Runner, RunnerUnavailable, register_runner

NOT_BUILT_HERE = "not built on this host"


@dataclass(frozen=True)
class DeviceFacts:
    """The GPU and TensorRT an engine is built or run with.

    ``name``: CUDA device name (e.g. ``"Orin"``); ``compute_capability``: ``"major.minor"``;
    ``tensorrt_version``: ``tensorrt.__version__`` (e.g. ``"10.3.0.30"``), None when TensorRT is
    not importable; ``board``: the Jetson module from the device tree, None elsewhere.
    """

    name: str
    compute_capability: str
    tensorrt_version: str | None = None
    board: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f"{self.name}" + (f" / {self.board}" if self.board else "")
        return f"TensorRT {self.tensorrt_version or '(not installed)'}, compute capability {self.compute_capability} ({where})"


def device_facts(index: int = 0) -> DeviceFacts:
    """Facts of CUDA device ``index`` and the TensorRT installed here.

    Raises :class:`RunnerUnavailable` when there is no CUDA GPU (the message says where engines
    are built instead).
    """
    dev = cuda_device(index)
    if dev is None:
        raise RunnerUnavailable(f"{NOT_BUILT_HERE}: no CUDA GPU is visible here (no NVIDIA driver or device); TensorRT engines are "
                                "built and run on the target device — copy the bundle there and run `edgetransfer build` or build_engine.sh")
    return DeviceFacts(name=dev[0], compute_capability=dev[1], tensorrt_version=installed_tensorrt_version(), board=jetson_board())


def _version_parts(v: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", v or "")]


def same_tensorrt_version(a: str | None, b: str | None) -> bool:
    """True when two TensorRT versions name the same release: equal on the components both give,
    at least major.minor.patch (``"10.3.0"`` from trtexec's log equals ``"10.3.0.30"``).

    TensorRT's standard runtime needs the version that built an engine (TensorRT release notes,
    DRIVE OS "Release Properties": "version numbers must match (in major, minor, patch, and
    build)"); the build number is compared whenever both sides record it.
    """
    pa, pb = _version_parts(a or ""), _version_parts(b or "")
    n = min(len(pa), len(pb))
    return n >= 3 and pa[:n] == pb[:n]


def engine_facts(manifest: Manifest, name: str = "engine") -> dict[str, Any]:
    """``manifest.details["tensorrt"]``; raises :class:`EngineMismatchError` when the manifest does
    not record the TensorRT version and compute capability the engine was built with."""
    facts = dict((manifest.details or {}).get("tensorrt") or {})
    if manifest.format != str(Format.ENGINE) or not facts.get("version") or not facts.get("compute_capability"):
        raise EngineMismatchError(f"{name}: its manifest does not record the TensorRT version and compute capability it was built "
                                  "with, so it cannot be matched to this device; rebuild it here with `edgetransfer build` or build_engine.sh")
    return facts


def check_engine_compatible(manifest: Manifest, device: DeviceFacts, name: str = "engine") -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture.

    Runs on the manifest alone, before the engine file is read. Raises
    :class:`EngineMismatchError` naming what the engine was built with and what this device has.
    """
    facts = engine_facts(manifest, name)
    problems = []
    if not device.tensorrt_version:
        problems.append("TensorRT is not installed here")
    elif not same_tensorrt_version(facts["version"], device.tensorrt_version):
        problems.append(f"TensorRT {facts['version']} (engine) vs {device.tensorrt_version} (this device)")
    if str(facts["compute_capability"]) != device.compute_capability:
        problems.append(f"compute capability {facts['compute_capability']} (engine) vs {device.compute_capability} (this device)")
    if problems:
        built = f"TensorRT {facts['version']}, compute capability {facts['compute_capability']} ({facts.get('device_name') or 'unknown GPU'})"
        raise EngineMismatchError(
            f"{name} was built with {built}; this device has {device.describe()}: {'; '.join(problems)}. "
            "An engine only runs with the TensorRT version and GPU architecture that built it — rebuild it on this device with "
            f"`edgetransfer build BUNDLE --target {manifest.target or 'TARGET'} --precision {facts.get('requested_precision') or manifest.precision}` "
            "or `bash build_engine.sh`")


def check_engine_current(manifest: Manifest, engine_path: Path) -> None:
    """Refuse an engine whose parent ONNX in the same bundle has been rebuilt since (its manifest
    records another sha256): the engine would run an older model under the current name."""
    if not manifest.parent_file or not manifest.parent_sha256:
        return
    parent_manifest = engine_path.parent / (manifest.parent_file + ".json")
    if not parent_manifest.is_file():
        return  # the engine travelled without its ONNX: nothing to compare with
    try:
        now = json.loads(parent_manifest.read_text()).get("sha256")
    except (OSError, json.JSONDecodeError):
        return
    if now and now != manifest.parent_sha256:
        raise EngineMismatchError(
            f"{engine_path.name} was built from an older {manifest.parent_file} (sha256 {manifest.parent_sha256[:12]}…, now {now[:12]}…); "
            "rebuild it with `edgetransfer build` or build_engine.sh so it runs the current model")


@register_runner(Format.ENGINE, Runtime.TENSORRT)
class TensorRTRunner(Runner):
    """Runs a TensorRT engine with Polygraphy's ``TrtRunner`` (host numpy in, host numpy out).

    ``infer`` copies inputs to the GPU, executes and copies outputs back, then synchronises the
    stream, so a timed call includes the transfers. ``options["device"]``: a
    :class:`DeviceFacts` to check against instead of querying this machine (tests).
    """

    backend_module = "tensorrt"
    distributions = ("tensorrt", "polygraphy")
    extra = "tensorrt"
    unavailable_status: ClassVar[Status] = Status.NOT_RUNNABLE

    @classmethod
    def is_available(cls) -> bool:
        return (importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("polygraphy") is not None
                and cuda_device() is not None)

    @classmethod
    def unavailable_reason(cls) -> str:
        why = []
        if importlib.util.find_spec("tensorrt") is None:
            why.append("TensorRT is not installed")
        if importlib.util.find_spec("polygraphy") is None:
            why.append("polygraphy is not installed (pip install 'edgetransfer[tensorrt]')")
        if cuda_device() is None:
            why.append("no CUDA GPU")
        return (f"{NOT_BUILT_HERE} ({', '.join(why) or 'TensorRT unavailable'}): engines are built and measured on the target "
                "device — run `edgetransfer build` or build_engine.sh there; no number is reported for it here")

    def activate(self) -> None:
        manifest = self.manifest or read_manifest(self.path)
        self.manifest = manifest
        device = self.options.get("device") or device_facts()
        check_engine_compatible(manifest, device, self.path.name)  # before the engine is read
        check_engine_current(manifest, self.path)
        facts = engine_facts(manifest, self.path.name)
        trt = require("tensorrt", "tensorrt", "the TensorRT runner")
        poly = require("polygraphy.backend.trt", "tensorrt", "the TensorRT runner")
        from polygraphy.logger import G_LOGGER

        G_LOGGER.module_severity = G_LOGGER.WARNING
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        if facts.get("dla_core") is not None:
            self._trt_runtime.DLA_core = int(facts["dla_core"])
        engine = self._trt_runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.path.name} (see the TensorRT log above); rebuild it with `edgetransfer build`")
        self._profile = facts.get("profile") or {}
        self._device = device
        self._runner = poly.TrtRunner(engine)
        self._runner.activate()
        self.active = True

    @property
    def execution_provider(self) -> str:
        d = getattr(self, "_device", None)
        if d is None:
            return "TensorRT"
        dla = ((self.manifest.details or {}).get("tensorrt") or {}).get("dla_core") if self.manifest else None
        return f"TensorRT {d.tensorrt_version} on {d.name} (CC {d.compute_capability})" + (f", DLA core {dla} + GPU fallback" if dla is not None else "")

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lo, hi = self._profile.get("min"), self._profile.get("max")
        for name, a in feeds.items():
            if lo and hi and not (lo[0] <= a.shape[0] <= hi[0]):
                raise ConfigError(f"{self.path.name}: batch {a.shape[0]} of input {name!r} is outside the engine's optimisation profile "
                                  f"[{lo[0]}, {hi[0]}]; rebuild with a target whose profile_batch covers it")
        out = self._runner.infer(feeds)
        return {k: np.asarray(v) for k, v in out.items()}

    def synchronize(self) -> None:
        stream = getattr(getattr(self, "_runner", None), "stream", None)
        if stream is not None:
            stream.synchronize()

    def deactivate(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None and getattr(runner, "is_active", False):
            runner.deactivate()
        self._runner = None
        self._trt_runtime = None
        super().deactivate()
