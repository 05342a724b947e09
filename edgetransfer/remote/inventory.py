"""The device inventory: ``devices.yaml`` lists the user's own boards by name.

Location: the ``--inventory`` flag, else ``$EDGETRANSFER_DEVICES``, else
``$XDG_CONFIG_HOME/edgetransfer/devices.yaml`` (``~/.config/edgetransfer/devices.yaml``)::

    devices:
      orin-desk:
        host: 10.0.0.42
        user: me
        port: 22
        target: jetson-orin-nano          # targets/<name>.yaml (default: the bundle's target)
        workdir: edgetransfer             # on the board; relative paths are under the login's home
        python: /home/me/venv/bin/python  # the board's Python with edgetransfer[device] installed
        env: {OMP_NUM_THREADS: "6"}       # extra environment for the remote benchmark
        # or run inside a container built from Dockerfile.jetson:
        # docker_image: edgetransfer-jetson:latest
        # docker_args: [--runtime, nvidia]
        device_class: orin-nano           # `benchmark --device-class orin-nano` runs on a free board of the class

Authentication is by key or ssh-agent only: an entry may name an ``identity_file``; a
``password`` (or passphrase) key is refused. Host keys are checked against ``known_hosts``
(default ``~/.ssh/known_hosts``).
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..artifacts import atomic_write_text
from ..errors import InventoryError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST_RE = re.compile(r"^[A-Za-z0-9_.:%\[\]-]+$")  # DNS names, IPv4, IPv6 (optionally bracketed)
SECRET_KEYS = ("password", "passwd", "passphrase", "secret")
# not "edgetransfer": a folder of that name in the login directory, where SSH commands start, would be
# imported as a namespace package and shadow the board's installed edgetransfer
DEFAULT_WORKDIR = "edgetransfer-bench"
_HOST_PORT_RE = re.compile(r"^(?P<host>[^:\[\]]+):(?P<port>\d+)$")


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/edgetransfer`` (default ``~/.config/edgetransfer``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgetransfer"


def default_inventory_path() -> Path:
    env = os.environ.get("EDGETRANSFER_DEVICES")
    return Path(env) if env else config_dir() / "devices.yaml"


@dataclass(frozen=True)
class Device:
    """One board. ``port``: SSH port; ``workdir``: the board directory bundles are sent to
    (relative = under the login's home); ``python``: the board's interpreter (a relative path is
    relative to the login's home); ``docker_image``: run the benchmark in this image instead
    (``docker run`` with ``docker_args``, the workdir mounted at the same path);
    ``connect_timeout_s`` / ``timeout_s``: seconds for the SSH login / the remote benchmark."""

    name: str
    host: str
    user: str | None = None
    port: int = 22
    target: str | None = None
    workdir: str = DEFAULT_WORKDIR
    python: str = "python3"
    env: dict[str, str] = field(default_factory=dict)
    docker_image: str | None = None
    docker_args: tuple[str, ...] = ()
    identity_file: str | None = None
    known_hosts: str | None = None
    connect_timeout_s: float = 15.0
    timeout_s: float = 3600.0
    device_class: str | None = None  # e.g. orin-nano: `benchmark --device-class orin-nano` picks a free board of the class
    labgrid_coordinator: str | None = None  # HOST:PORT of a labgrid coordinator holding this board's place (remote/labgrid.py)
    labgrid_place: str | None = None  # the board's place there (tag it class=<device_class> for --device-class)

    def __post_init__(self) -> None:
        where = f"device {self.name!r}"
        if not NAME_RE.match(self.name or ""):
            raise InventoryError(f"device name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
        if _HOST_PORT_RE.match(self.host or "") or (self.host or "").startswith("[") and "]:" in self.host:
            raise InventoryError(f"{where}: host {self.host!r} carries a port; give the host alone and the port as port: "
                                 "(on the command line: --host USER@HOST:PORT or --port)")
        if not self.host or not HOST_RE.match(self.host) or self.host.startswith("-"):
            raise InventoryError(f"{where}: host {self.host!r} is not a host name or IP address (give it as --host [USER@]HOST)")
        if self.user is not None and (not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", self.user)):
            raise InventoryError(f"{where}: user {self.user!r} is not a valid login name")
        if not (1 <= int(self.port) <= 65535):
            raise InventoryError(f"{where}: port {self.port} is outside 1..65535")
        if not self.workdir or "\0" in self.workdir or "\n" in self.workdir:
            raise InventoryError(f"{where}: workdir must be a directory path on the board")
        if not self.python or "\0" in self.python or "\n" in self.python:
            raise InventoryError(f"{where}: python must be the path of the board's Python interpreter")
        for k, v in self.env.items():
            if not ENV_RE.match(str(k)):
                raise InventoryError(f"{where}: environment variable name {k!r} is invalid (letters, digits, '_')")
            if "\0" in str(v) or "\n" in str(v):
                raise InventoryError(f"{where}: environment variable {k} holds a NUL or newline")
        if self.connect_timeout_s <= 0 or self.timeout_s <= 0:
            raise InventoryError(f"{where}: connect_timeout_s and timeout_s must be positive seconds")

    @property
    def destination(self) -> str:
        """``user@host:port`` for messages."""
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def runs_in(self) -> str:
        return f"docker {self.docker_image}" if self.docker_image else self.python

    def to_dict(self) -> dict[str, Any]:
        """The YAML entry (defaults and empty values left out, name is the key)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "name":
                continue
            v = getattr(self, f.name)
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
            if v is None or v == () or v == {} or (f.name != "host" and v == default):
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
        return out

    @classmethod
    def from_dict(cls, name: str, raw: Any, source: str = "devices.yaml") -> "Device":
        if not isinstance(raw, dict):
            raise InventoryError(f"{source}: device {name!r} must be a mapping of settings (host, user, port, target, ...)")
        secret = [k for k in raw if str(k).lower() in SECRET_KEYS]
        if secret:
            raise InventoryError(
                f"{source}: device {name!r} stores a {secret[0]!r}; edgetransfer never uses passwords — remove it and use "
                "key authentication: ssh-copy-id USER@HOST, then set identity_file or load the key into ssh-agent (ssh-add)"
            )
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(map(str, raw)) - known)
        if unknown:
            raise InventoryError(f"{source}: device {name!r} has unknown keys {unknown}; known keys are {sorted(known)}")
        kw = dict(raw)
        if "docker_args" in kw:
            if not isinstance(kw["docker_args"], list):
                raise InventoryError(f"{source}: device {name!r}: docker_args must be a list of arguments")
            kw["docker_args"] = tuple(str(a) for a in kw["docker_args"])
        if "env" in kw:
            if not isinstance(kw["env"], dict):
                raise InventoryError(f"{source}: device {name!r}: env must be a mapping NAME: value")
            kw["env"] = {str(k): str(v) for k, v in kw["env"].items()}
        for k in ("port",):
            if k in kw:
                try:
                    kw[k] = int(kw[k])
                except (TypeError, ValueError) as exc:
                    raise InventoryError(f"{source}: device {name!r}: port must be an integer") from exc
        for k in ("connect_timeout_s", "timeout_s"):
            if k in kw:
                kw[k] = float(kw[k])
        for k in ("host", "user", "target", "workdir", "python", "docker_image", "identity_file", "known_hosts", "device_class",
                  "labgrid_coordinator", "labgrid_place"):
            if k in kw and kw[k] is not None:
                kw[k] = str(kw[k])
        return cls(name=str(name), **kw)


def parse_host(spec: str) -> tuple[str | None, str]:
    """``"me@10.0.0.42"`` -> ``("me", "10.0.0.42")``; ``"board"`` -> ``(None, "board")`` (a port is
    split off and dropped: :func:`parse_destination` keeps it)."""
    user, host, _ = parse_destination(spec)
    return user, host


def parse_destination(spec: str) -> tuple[str | None, str, int | None]:
    """``[USER@]HOST[:PORT]`` -> ``(user, host, port)``; IPv6 with a port in brackets
    (``me@[fe80::1]:2222``), without one bare or bracketed (``fe80::1``, ``[fe80::1]``).
    Raises :class:`InventoryError` for a port that is not 1-65535 or an unclosed bracket."""
    user, sep, host = spec.rpartition("@")
    user_ = (user or None) if sep else None
    port: str | None = None
    if host.startswith("["):
        inner, close, rest = host[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise InventoryError(f"host {spec!r}: write an IPv6 address as [ADDRESS] or [ADDRESS]:PORT")
        host, port = inner, (rest[1:] or None)
    else:
        m = _HOST_PORT_RE.match(host)
        if m:
            host, port = m["host"], m["port"]
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise InventoryError(f"host {spec!r}: the port must be a number in 1-65535")
    return user_, host, int(port) if port is not None else None


@dataclass
class Inventory:
    """The devices of one ``devices.yaml`` (in file order)."""

    path: Path
    devices: dict[str, Device] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Inventory":
        """Read the inventory (a missing file is an empty inventory).

        Raises :class:`InventoryError` for malformed YAML, unknown keys or stored passwords."""
        p = Path(path) if path else default_inventory_path()
        if not p.exists():
            return cls(p)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InventoryError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("devices", {}) or {}, dict):
            raise InventoryError(f"{p}: the inventory must be a mapping with a 'devices:' mapping of NAME: settings")
        unknown = sorted(set(raw) - {"devices"})
        if unknown:
            raise InventoryError(f"{p}: unknown top-level keys {unknown}; the file holds one key, 'devices'")
        devs = {str(n): Device.from_dict(str(n), d, str(p)) for n, d in (raw.get("devices") or {}).items()}
        return cls(p, devs)

    def save(self) -> None:
        header = ("# edgetransfer device inventory: `edgetransfer devices add|remove|list|check`.\n"
                  "# Key or ssh-agent authentication only: never store a password here.\n")
        body = yaml.safe_dump({"devices": {n: d.to_dict() for n, d in self.devices.items()}}, sort_keys=False, default_flow_style=False)
        atomic_write_text(self.path, header + body)

    def get(self, name: str) -> Device:
        if name not in self.devices:
            known = ", ".join(self.devices) or "(none)"
            raise InventoryError(f"no device {name!r} in {self.path} (known: {known}); add it with "
                                 f"'edgetransfer devices add {name} --host USER@HOST --target TARGET'")
        return self.devices[name]

    def add(self, device: Device, replace_existing: bool = False) -> None:
        if device.name in self.devices and not replace_existing:
            raise InventoryError(f"device {device.name!r} is already in {self.path}; pass --replace to overwrite it "
                                 f"or 'edgetransfer devices remove {device.name}' first")
        self.devices[device.name] = device

    def of_class(self, device_class: str) -> list[Device]:
        """The boards whose ``device_class`` is ``device_class``, in file order."""
        return [d for d in self.devices.values() if d.device_class == device_class]

    def remove(self, name: str) -> Device:
        dev = self.get(name)
        del self.devices[name]
        return dev

