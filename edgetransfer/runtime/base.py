"""The Runner protocol and the (format, runtime) registry.

A new runtime is one module with one class decorated ``@register_runner(Format.X, Runtime.Y)``
plus one import line in ``runtime/__init__.py``; the benchmark and the self-test find it through
:func:`get_runner_class`.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..artifacts import Manifest
from ..errors import ConfigError, EdgeTransferError
from ..types import Format, Runtime, Status

if TYPE_CHECKING:  # pragma: no cover
    from ..targets import Target

_REGISTRY: dict[tuple[Format, Runtime], type["Runner"]] = {}


class RunnerUnavailable(EdgeTransferError):
    """The runtime a runner needs is not installed (or cannot run on this host)."""


def register_runner(fmt: Format | str, runtime: Runtime | str):
    """Class decorator: ``@register_runner(Format.ONNX, Runtime.ONNXRUNTIME)``."""

    def deco(cls: type[Runner]) -> type[Runner]:
        cls.format, cls.runtime = Format(fmt), Runtime(runtime)
        _REGISTRY[(Format(fmt), Runtime(runtime))] = cls
        return cls

    return deco


def deactivate_quietly(runner: "Runner | None") -> None:
    """Release ``runner`` after a measurement; a failure to release must not hide the row's result."""
    if runner is None:
        return
    try:
        runner.deactivate()
    except Exception:
        pass


def registered() -> list[tuple[Format, Runtime]]:
    return sorted(_REGISTRY, key=lambda k: (k[0].value, k[1].value))


def get_runner_class(fmt: Format | str, runtime: Runtime | str) -> type["Runner"]:
    """The runner class for ``(fmt, runtime)``; :class:`ConfigError` listing the registered pairs."""
    key = (Format(fmt), Runtime(runtime))
    if key not in _REGISTRY:
        raise ConfigError(f"no runner for format {key[0]} on runtime {key[1]}; registered: "
                          + ", ".join(f"{f}/{r}" for f, r in registered()))
    return _REGISTRY[key]


def runtimes_for(fmt: Format | str) -> list[Runtime]:
    """Runtimes with a registered runner for ``fmt`` (installed or not), in registration order."""
    return [r for (f, r) in _REGISTRY if f == Format(fmt)]


def available_runtimes(fmt: Format | str) -> list[Runtime]:
    return [r for (f, r), cls in _REGISTRY.items() if f == Format(fmt) and cls.is_available()]


_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


class Runner(ABC):
    """Runs one artifact. Life cycle: ``activate()`` -> ``infer(feeds)`` ... -> ``deactivate()``
    (also a context manager). ``feeds``/outputs map tensor names to numpy arrays.

    ``threads``: intra-op threads (0 = the runtime's default). ``options``: runtime-specific
    settings, normally :meth:`options_for` a target (execution providers, device).
    Subclasses set ``backend_module`` (the import that must exist) and ``extra`` (the pip extra
    that installs it) so a missing runtime becomes an ``unavailable`` row naming the extra.
    """

    format: ClassVar[Format]
    runtime: ClassVar[Runtime]
    backend_module: ClassVar[str] = ""
    extra: ClassVar[str] = ""
    # report status when is_available() is False: UNAVAILABLE (install the extra) or NOT_RUNNABLE
    # (this kind of host cannot run it at all, e.g. a TensorRT engine without an NVIDIA GPU)
    unavailable_status: ClassVar[Status] = Status.UNAVAILABLE

    def __init__(self, path: str | Path, manifest: Manifest | None = None, *, threads: int = 0, options: dict[str, Any] | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.threads = int(threads)
        self.options = dict(options or {})
        self.active = False
        self._input_name: str | None = None

    # -- discovery -------------------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        """Whether ``backend_module`` can be found (no import: importing a runtime is slow)."""
        if not cls.backend_module:
            return True
        try:
            return importlib.util.find_spec(cls.backend_module) is not None
        except (ImportError, ValueError):  # a blocked or broken package
            return False

    @classmethod
    def unavailable_reason(cls) -> str:
        return f"{cls.runtime} is not installed here: pip install 'edgetransfer[{cls.extra}]'"

    @classmethod
    def options_for(cls, target: "Target | None", manifest: Manifest | None = None, cache_dir: Path | None = None) -> dict[str, Any]:
        """Runner options derived from a target profile (e.g. ONNX Runtime execution providers)."""
        return {}

    # -- interface -------------------------------------------------------------------------
    @abstractmethod
    def activate(self) -> None: ...

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate(self) -> None:
        self.active = False
        self._input_name = None

    def sync(self) -> None:
        """Wait until queued device work is finished (GPU runners); called before reading the clock."""
        self.synchronize()

    def synchronize(self) -> None:
        """Wait until work queued on the device is done (GPU runners); CPU runners return at once.
        Latency timing calls this before reading the clock."""

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        """``[{"name", "shape", "dtype"}]``; a str in shape is a dynamic axis."""
        if self.manifest and self.manifest.inputs:
            return self.manifest.inputs
        return [{"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]

    @property
    def execution_provider(self) -> str:
        """The device/back end that runs the model, e.g. ``CPUExecutionProvider``, ``OpenVINO CPU (f32)``."""
        return str(self.runtime)

    @property
    def threads_used(self) -> int | None:
        """Intra-op threads the runtime actually uses (None when it does not say)."""
        return self.threads or None

    def runtime_info(self) -> dict[str, Any]:
        """What the report records about how this runner ran: execution provider, provider chain,
        threads (requested and used) and runtime-specific notes."""
        return {"execution_provider": self.execution_provider, "threads_requested": self.threads,
                "threads": self.threads_used}

    # -- helpers ---------------------------------------------------------------------------
    def validate(self, feeds: dict[str, np.ndarray]) -> None:
        """Check names, rank, static dims and dtype of ``feeds``; ConfigError says what was expected."""
        for spec in self.input_specs:
            name = spec["name"]
            if name not in feeds:
                raise ConfigError(f"{self.path.name}: missing input {name!r}; expected inputs {[s['name'] for s in self.input_specs]}")
            a = np.asarray(feeds[name])
            shape = spec["shape"]
            if a.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, a.shape)):
                raise ConfigError(f"{self.path.name}: input {name!r} has shape {tuple(a.shape)}, expected {shape} "
                                  "(layout NCHW: batch, channels, height, width)")
            want = spec.get("dtype", "float32")
            if str(a.dtype) != want:
                raise ConfigError(f"{self.path.name}: input {name!r} has dtype {a.dtype}, expected {want}")
            if not a.flags.c_contiguous:
                raise ConfigError(f"{self.path.name}: input {name!r} is not C-contiguous; pass np.ascontiguousarray(x)")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for one preprocessed batch ``x`` float32 (B, 3, S, S) -> (B, num_classes)."""
        name = self._input_name
        if name is None:
            name = self._input_name = self.input_specs[0]["name"]
        out = self.infer({name: x})
        return next(iter(out.values()))

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()
