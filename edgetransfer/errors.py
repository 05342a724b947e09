"""One exception hierarchy. Every message says what went wrong *and* how to fix it.

The CLI maps :class:`EdgeTransferError` to exit code 2 (bad input / environment),
:class:`BudgetExceededError` to exit code 3 (a result breaks the target's accuracy budget).
"""

from __future__ import annotations


class EdgeTransferError(Exception):
    """Base class of all errors raised by edgetransfer on bad input or environment."""

    exit_code = 2


class ConfigError(EdgeTransferError):
    """An option, config file or combination of options is invalid."""


class TargetError(ConfigError):
    """A target profile is unknown or malformed, or asks for something the target cannot do."""


class DataError(EdgeTransferError):
    """The dataset is unusable (no classes, empty class folder, unknown validation class...)."""


class ModelSourceError(EdgeTransferError):
    """A model spec cannot be resolved (unknown name, weights unreachable, unknown head)."""


class TrainingError(EdgeTransferError):
    """Training cannot go on (non-finite loss, a resume that does not match the run)."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C (SIGINT) during training; the message says what was kept and how to continue. Exit code 130."""

    exit_code = 130


class ArtifactError(EdgeTransferError):
    """An artifact is missing, its manifest is missing, or its sha256 does not match."""


class EngineMismatchError(ArtifactError):
    """A device-bound artifact (TensorRT engine) was built for another TensorRT version or GPU."""


class ParityError(EdgeTransferError):
    """A converted model's outputs differ from its reference beyond tolerance."""


class MissingExtraError(EdgeTransferError):
    """An optional backend is not installed; the message names the pip extra to install."""

    def __init__(self, module: str, extra: str, what: str = "") -> None:
        what = f" for {what}" if what else ""
        super().__init__(
            f"the Python package '{module}' is needed{what} but is not installed; "
            f"install it with: pip install 'edgetransfer[{extra}]'"
        )
        self.module = module
        self.extra = extra


class RemoteError(EdgeTransferError):
    """Benchmarking on a board over SSH failed: inventory, connection, transfer or the remote run."""


class InventoryError(RemoteError, ConfigError):
    """The device inventory (devices.yaml) or a device entry is invalid or unknown."""


class HostKeyError(RemoteError):
    """The board's SSH host key is not in known_hosts, or differs from the recorded one."""


class RemoteConnectionError(RemoteError):
    """The board cannot be reached or refuses the login (network, sshd, keys)."""


class TransferError(RemoteError):
    """Sending files to the board failed (e.g. the connection broke); re-running resumes."""


class RemoteVersionError(RemoteError):
    """The board's edgetransfer is missing or incompatible with this workstation's."""


class BudgetExceededError(EdgeTransferError):
    """A quantized model breaks the accuracy budget of its target (exit code 3)."""

    exit_code = 3


class GateFailedError(BudgetExceededError):
    """An agreement gate (:mod:`edgetransfer.gates`) failed for an artifact that was still written
    (status ``gate_failed``); raised after the report, exit code 3."""


def require(module: str, extra: str, what: str = ""):
    """Import ``module`` lazily, or raise :class:`MissingExtraError` naming the extra.

    Returns the imported module object.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module, extra, what) from exc
