"""Runners: one class per runtime behind one interface, found through a registry keyed by
(format, runtime). Importing this package imports no heavy backend."""

from .base import (Runner, RunnerUnavailable, as_runtime, available_runtimes, get_runner_class, known_runtimes, probe_modules,
                   register_runner, registered, runtime_distributions, runtime_names, runtimes_for, unregister_runner)

# Register the built-in runners (their modules import their backends lazily).
from . import coreml as _coreml  # noqa: F401,E402
from . import executorch as _executorch  # noqa: F401,E402
from . import litert as _litert  # noqa: F401,E402
from . import ort as _ort  # noqa: F401,E402
from . import openvino as _openvino  # noqa: F401,E402
from . import pytorch as _pytorch  # noqa: F401,E402
from . import tensorrt as _tensorrt  # noqa: F401,E402

__all__ = ["Runner", "RunnerUnavailable", "as_runtime", "available_runtimes", "get_runner_class", "known_runtimes",
           "probe_modules", "register_runner", "registered", "runtime_distributions", "runtime_names", "runtimes_for",
           "unregister_runner"]
