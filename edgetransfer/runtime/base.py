"""The Runner template and the (format, runtime) registry.

A new runtime is one module with one class decorated ``@register_runner(Format.X, Runtime.Y)``
(plus one import line in ``runtime/__init__.py`` for a built-in one). The registry is the only list
of runtimes: the benchmark, the self-test, the report, ``targets show``, the remote device probe
and the CLI all derive theirs from it (:func:`registered`, :func:`runtime_names`,
:func:`probe_modules`).

Template (after Polygraphy's ``backend/base/runner.py`` ``BaseRunner``): the public
:meth:`Runner.infer` checks the feeds — names, dtype, NCHW layout, static dimensions, contiguity,
and that the runner is active — and calls :meth:`Runner.infer_impl`, which a runtime implements;
:meth:`Runner.synchronize` is the one hook a GPU runtime overrides so latency timing reads the clock
after its queued work.
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


def as_runtime(name: "Runtime | str", *, register: bool = False) -> "Runtime | str":
    """The runtime called ``name``: a built-in :class:`~edgetransfer.types.Runtime`, or a name a
    runner was registered under (``register=True``: accept a new one). Raises ValueError naming the
    known runtimes."""
    try:
        return Runtime(name)
    except ValueError:
        pass
    name = str(name)
    if register or any(str(r) == name for (_, r) in _REGISTRY):
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"runtime name {name!r} must be letters, digits, '-' or '_'")
        return name
    raise ValueError(f"{name!r} is not a runtime; known runtimes: {', '.join(known_runtimes())}")


def known_runtimes() -> list[str]:
    """The built-in runtimes and every name a runner is registered under."""
    return list(dict.fromkeys([r.value for r in Runtime] + [str(r) for (_, r) in _REGISTRY]))


def register_runner(fmt: Format | str, runtime: Runtime | str):
    """Class decorator: ``@register_runner(Format.ONNX, Runtime.ONNXRUNTIME)``. ``runtime`` may be a
    new name (a plug-in runtime): the registry is the only list of runtimes, so the benchmark, the
    report, target profiles (``runtimes:``), ``targets show`` and the device probe know it at once."""

    def deco(cls: type[Runner]) -> type[Runner]:
        cls.format, cls.runtime = Format(fmt), as_runtime(runtime, register=True)
        _REGISTRY[(cls.format, cls.runtime)] = cls
        return cls

    return deco


def unregister_runner(fmt: Format | str, runtime: Runtime | str) -> None:
    """Remove a registration (tests registering a toy runner clean up with it)."""
    _REGISTRY.pop((Format(fmt), as_runtime(runtime)), None)


def deactivate_quietly(runner: "Runner | None") -> None:
    """Release ``runner`` after a measurement; a failure to release must not hide the row's result."""
    if runner is None:
        return
    try:
        runner.deactivate()
    except Exception:
        pass


def registered() -> list[tuple[Format, Runtime]]:
    return sorted(_REGISTRY, key=lambda k: (str(k[0]), str(k[1])))


def get_runner_class(fmt: Format | str, runtime: Runtime | str) -> type["Runner"]:
    """The runner class for ``(fmt, runtime)``; :class:`ConfigError` listing the registered pairs."""
    try:
        key = (Format(fmt), as_runtime(runtime))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if key not in _REGISTRY:
        raise ConfigError(f"no runner for format {key[0]} on runtime {key[1]}; registered: "
                          + ", ".join(f"{f}/{r}" for f, r in registered()))
    return _REGISTRY[key]


def runtimes_for(fmt: Format | str) -> list[Runtime]:
    """Runtimes with a registered runner for ``fmt`` (installed or not), in registration order."""
    return [r for (f, r) in _REGISTRY if f == Format(fmt)]


def available_runtimes(fmt: Format | str) -> list[Runtime]:
    return [r for (f, r), cls in _REGISTRY.items() if f == Format(fmt) and cls.is_available()]


def runtime_names() -> list[str]:
    """Every runtime with a registered runner, in registration order (no duplicates)."""
    return list(dict.fromkeys(str(r) for (_, r) in _REGISTRY))


def runtime_distributions() -> list[str]:
    """Distribution names of every registered runtime (for the report's ``versions``)."""
    out: list[str] = []
    for cls in _REGISTRY.values():
        out += list(cls.distributions) or ([cls.backend_module.split(".")[0].replace("_", "-")] if cls.backend_module else [])
    return list(dict.fromkeys(out))


def probe_modules() -> dict[str, str]:
    """``{runtime: python module}`` the remote device probe checks for each registered runtime
    (the module its runner's ``backend_module`` names; runners without one are left out)."""
    out: dict[str, str] = {}
    for (_, r), cls in _REGISTRY.items():
        if cls.backend_module and str(r) not in out:
            out[str(r)] = cls.backend_module.split(".")[0]
    return out


_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def owned(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each output as a numpy array of its own (a copy: never a view of a runtime's buffer)."""
    return {k: np.array(v, copy=True) for k, v in outputs.items()}


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
    # distributions whose versions the report records (default: the backend module's top-level name)
    distributions: ClassVar[tuple[str, ...]] = ()
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
        self._spec_cache: list[dict[str, Any]] | None = None  # input_specs while active (read once)

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
    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (already checked by :meth:`infer`); outputs by name."""

    def infer(self, feeds: dict[str, np.ndarray], *, check_inputs: bool = True) -> dict[str, np.ndarray]:
        """Outputs (name -> numpy array) for ``feeds`` (input name -> numpy array).

        The arrays belong to the caller: they stay valid after the next call. Runtimes may hand
        back views into output buffers they reuse for the next inference (Polygraphy's TrtRunner;
        ROCm/torch_migraphx#247 is the same trap), so every output is copied here — the logits of
        a batch are a few KiB, the copy costs microseconds. (:meth:`timed_call`, which times the
        runtime alone, does not copy.)

        Raises :class:`ConfigError` before the runtime sees anything when the runner is not active
        or a feed is wrong (:meth:`validate`: missing or unknown name, dtype, NHWC instead of NCHW,
        a static dimension, not C-contiguous). ``check_inputs=False`` skips the checks (the latency
        loop checks its one batch once, then times :meth:`infer_impl` alone)."""
        if not self.active:
            raise ConfigError(f"{self.path.name}: the {self.runtime} runner is not active; call activate() first "
                              "(or use it as a context manager: with Runner(...) as r)")
        if check_inputs:
            self.validate(feeds)
        return owned(self.infer_impl(feeds))

    def deactivate(self) -> None:
        self.active = False
        self._input_name = None
        self._spec_cache = None

    def _specs(self) -> list[dict[str, Any]]:
        """:attr:`input_specs`, read once per activation (a runtime may derive them from its session)."""
        if not self.active:
            return self.input_specs
        if self._spec_cache is None:
            self._spec_cache = self.input_specs
        return self._spec_cache

    def end_to_end_variant(self) -> "Runner | None":
        """A runner of the same artifact set up for end-to-end timing (decode + preprocess + infer on
        one core budget), or None to time this one. ONNX Runtime returns one with intra-op
        spinning off, so idle pool threads do not busy-wait on the core the image decoder needs."""
        return None

    def synchronize(self) -> None:
        """Wait until work queued on the device is done (GPU runners); CPU runners return at once.
        Latency timing calls this before reading the clock."""

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        """``[{"name", "shape", "dtype"}]``; a str in shape is a dynamic axis."""
        if self.manifest and self.manifest.inputs:
            return self.manifest.inputs
        return [{"name": "input", "shape": ["batch", 3, "height", "width"], "dtype": "float32"}]

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
        """Check ``feeds`` against :attr:`input_specs`; a :class:`ConfigError` names what is wrong and
        how to fix it: a missing or unknown input name, a value that is not a numpy array, the dtype,
        the rank, an NHWC array where NCHW is expected, a static dimension, non-C-contiguous memory."""
        if not isinstance(feeds, dict):
            raise ConfigError(f"{self.path.name}: feeds must be a dict {{input name: numpy array}}, got {type(feeds).__name__}")
        specs = self._specs()
        names = [s["name"] for s in specs]
        for spec in specs:
            name = spec["name"]
            if name not in feeds:
                raise ConfigError(f"{self.path.name}: missing input {name!r}; expected inputs {names}")
            a = feeds[name]
            if not isinstance(a, np.ndarray):
                raise ConfigError(f"{self.path.name}: input {name!r} is a {type(a).__name__}, not a numpy array; pass np.asarray(x, np.float32)")
            want = spec.get("dtype", "float32")
            if str(a.dtype) != want:
                raise ConfigError(f"{self.path.name}: input {name!r} has dtype {a.dtype}, expected {want}; pass x.astype(np.{want})")
            shape = list(spec["shape"])
            if a.ndim != len(shape):
                raise ConfigError(f"{self.path.name}: input {name!r} has {a.ndim} dimensions {tuple(a.shape)}, expected {len(shape)} "
                                  f"{shape} (layout NCHW: batch, channels, height, width); add the batch axis with x[None]"
                                  if a.ndim == len(shape) - 1 else
                                  f"{self.path.name}: input {name!r} has shape {tuple(a.shape)}, expected {shape}")
            if len(shape) == 4 and isinstance(shape[1], int) and a.shape[1] != shape[1] and a.shape[3] == shape[1]:
                raise ConfigError(f"{self.path.name}: input {name!r} has shape {tuple(a.shape)}, which is NHWC; the model takes NCHW "
                                  f"{shape} (batch, channels, height, width): pass x.transpose(0, 3, 1, 2) (then np.ascontiguousarray)")
            bad = [(i, d, n) for i, (d, n) in enumerate(zip(shape, a.shape)) if isinstance(d, int) and d != n]
            if bad:
                i, d, n = bad[0]
                raise ConfigError(f"{self.path.name}: input {name!r} has shape {tuple(a.shape)}, expected {shape}: dimension {i} is {n}, "
                                  f"the model's is fixed to {d} (layout NCHW: batch, channels, height, width)")
            if not a.flags.c_contiguous:
                raise ConfigError(f"{self.path.name}: input {name!r} is not C-contiguous; pass np.ascontiguousarray(x)")
        unknown = [n for n in feeds if n not in names]
        if unknown:
            raise ConfigError(f"{self.path.name}: unknown input(s) {unknown}; the model's inputs are {names}")

    def timed_call(self, x: np.ndarray):
        """A no-argument callable running one inference on ``x`` with the checks done once, here
        (for the latency loop: what is timed is :meth:`infer_impl`)."""
        feeds = {self.input_specs[0]["name"]: x}
        if not self.active:
            raise ConfigError(f"{self.path.name}: the {self.runtime} runner is not active; call activate() first")
        self.validate(feeds)
        impl = self.infer_impl
        return lambda: impl(feeds)

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
