"""SSH to a board with asyncssh: verified host keys, key/agent authentication, quoted commands.

* Host keys are checked against the device's ``known_hosts`` file (default
  ``~/.ssh/known_hosts``, always passed explicitly so no ssh_config setting can turn checking
  off). An unknown or changed key is a :class:`~edgetransfer.errors.HostKeyError` telling how to
  accept it deliberately (``edgetransfer devices trust NAME``, which shows the fingerprint).
* Authentication: public keys only (ssh-agent, ``identity_file``, the default ``~/.ssh/id_*``);
  password and keyboard-interactive authentication are disabled.
* Remote commands are built from argument lists with :func:`shlex.quote` (:func:`shell_join`);
  no inventory value is interpolated into a shell string unquoted.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
from pathlib import Path
from typing import Any, Sequence

from ..errors import HostKeyError, RemoteConnectionError, RemoteError, require
from .inventory import Device


def asyncssh():
    """The asyncssh module, or :class:`MissingExtraError` naming the ``remote`` extra."""
    return require("asyncssh", "remote", "benchmarking on boards over SSH")


def shell_join(argv: Sequence[str]) -> str:
    """One shell command line from an argument list, every argument quoted."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def known_hosts_path(device: Device) -> Path:
    return Path(device.known_hosts).expanduser() if device.known_hosts else Path.home() / ".ssh" / "known_hosts"


def host_pattern(device: Device) -> str:
    """The known_hosts name of the board: ``host`` on port 22, else ``[host]:port``."""
    return device.host if device.port == 22 else f"[{device.host}]:{device.port}"


def _load_known_hosts(device: Device):
    p = known_hosts_path(device)
    text = p.read_text() if p.is_file() else ""
    return asyncssh().import_known_hosts(text)


def recorded_host_keys(device: Device) -> list[Any]:
    """Host keys recorded for this board's host and port in its known_hosts file."""
    kh = _load_known_hosts(device)
    return list(kh.match(device.host, device.host, device.port if device.port != 22 else None)[0])


def trust_instructions(device: Device) -> str:
    kh = known_hosts_path(device)
    port = f"-p {device.port} " if device.port != 22 else ""
    return (f"to accept it deliberately run 'edgetransfer devices trust {device.name}' (it shows the key's SHA256 fingerprint: "
            "compare it with 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' run on the board's own console), or, after "
            f"verifying the fingerprint the same way, 'ssh-keyscan {port}{device.host} >> {kh}'")


def host_key_error(device: Device) -> HostKeyError:
    kh = known_hosts_path(device)
    if recorded_host_keys(device):
        pat = host_pattern(device)
        return HostKeyError(
            f"the SSH host key of {device.name} ({device.host}:{device.port}) DIFFERS from the one recorded in {kh}: someone may be "
            "intercepting the connection, or the board was reinstalled. Refusing to connect. If you know the board was "
            f"reinstalled, remove the old key with \"ssh-keygen -R '{pat}' -f {kh}\", then {trust_instructions(device)}")
    return HostKeyError(
        f"the SSH host key of {device.name} ({device.host}:{device.port}) is not in {kh}: refusing to connect to an unverified "
        f"board; {trust_instructions(device)}")


def _connect_kwargs(device: Device) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "port": device.port,
        "known_hosts": _load_known_hosts(device),  # explicit: never None (which would disable checking)
        "preferred_auth": "publickey",
        "password_auth": False,
        "kbdint_auth": False,
        "connect_timeout": device.connect_timeout_s,
    }
    if device.user:
        kw["username"] = device.user
    if device.identity_file:
        p = Path(device.identity_file).expanduser()
        if not p.is_file():
            raise RemoteConnectionError(f"device {device.name}: identity_file {p} does not exist; fix the path in the inventory "
                                        "or remove it to use ssh-agent / ~/.ssh/id_*")
        kw["client_keys"] = [str(p)]
    return kw


def connection_error(device: Device, exc: BaseException) -> RemoteError:
    """Map a connection failure to an error that says what to check."""
    a = asyncssh()
    dest = device.destination
    if isinstance(exc, a.HostKeyNotVerifiable):
        return host_key_error(device)
    if isinstance(exc, a.PermissionDenied):
        return RemoteConnectionError(
            f"{device.name} ({dest}) refused the login: no accepted key. edgetransfer uses key or ssh-agent authentication only: "
            f"install your public key on the board (ssh-copy-id -p {device.port} {device.user + '@' if device.user else ''}{device.host}), "
            "load it into ssh-agent (ssh-add) or set identity_file in the inventory")
    if isinstance(exc, a.KeyImportError):
        return RemoteConnectionError(f"device {device.name}: cannot use the identity file ({exc}); an encrypted key must be loaded "
                                     "into ssh-agent (ssh-add KEY) — passphrases are never stored")
    if isinstance(exc, ConnectionRefusedError):
        return RemoteConnectionError(f"{device.name} ({dest}): connection refused — is sshd running on the board and is the port "
                                     f"right? 'ssh -p {device.port} {device.host}' should work")
    if isinstance(exc, socket.gaierror):
        return RemoteConnectionError(f"{device.name}: cannot resolve host {device.host!r} ({exc}); fix the host in the inventory")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return RemoteConnectionError(f"{device.name} ({dest}): no SSH answer within {device.connect_timeout_s:g} s — is the board "
                                     "on and reachable from here?")
    if isinstance(exc, a.Error):
        return RemoteConnectionError(f"{device.name} ({dest}): SSH error: {exc.reason or type(exc).__name__}")
    if isinstance(exc, OSError):
        return RemoteConnectionError(f"{device.name} ({dest}): cannot connect: {exc.strerror or exc}")
    return RemoteConnectionError(f"{device.name} ({dest}): {type(exc).__name__}: {exc}")


def is_connection_lost(exc: BaseException) -> bool:
    """True for a broken link (as opposed to the board refusing an SFTP operation)."""
    a = asyncssh()
    if isinstance(exc, a.SFTPError):
        return isinstance(exc, a.SFTPConnectionLost)
    return isinstance(exc, (a.DisconnectError, ConnectionError, EOFError, OSError))


def error_reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc or type(exc).__name__)


async def connect(device: Device):
    """An authenticated ``asyncssh.SSHClientConnection`` to ``device`` (use ``async with``).

    Raises :class:`HostKeyError` (unknown/changed host key) or :class:`RemoteConnectionError`."""
    a = asyncssh()
    kw = _connect_kwargs(device)
    try:
        return await a.connect(device.host, **kw)
    except (a.Error, OSError, asyncio.TimeoutError) as exc:
        raise connection_error(device, exc) from exc


async def run(conn, argv: Sequence[str] | str, *, input: str | None = None, timeout: float | None = None):
    """Run a command on the board (an argument list is quoted with :func:`shell_join`).
    Returns asyncssh's completed process (``exit_status``, ``stdout``, ``stderr``), never raises
    for a non-zero exit."""
    cmd = argv if isinstance(argv, str) else shell_join(argv)
    return await conn.run(cmd, input=input, check=False, timeout=timeout)


async def fetch_host_key(device: Device):
    """The host key the board presents (not trusted yet: for ``devices trust``)."""
    a = asyncssh()
    try:
        key = await a.get_server_host_key(device.host, device.port)
    except (a.Error, OSError, asyncio.TimeoutError) as exc:
        raise connection_error(device, exc) from exc
    if key is None:
        raise RemoteConnectionError(f"{device.name}: the server presented no host key")
    return key


def key_fingerprint(key) -> str:
    """``SHA256:...`` as printed by ``ssh-keygen -lf``."""
    return key.get_fingerprint("sha256")


def add_known_host(device: Device, key) -> Path:
    """Append the board's key to its known_hosts file (created with mode 0600, its directory 0700).

    Raises :class:`HostKeyError` when a different key is already recorded for the board."""
    recorded = recorded_host_keys(device)
    pub = " ".join(key.export_public_key("openssh").decode().split()[:2])
    if recorded:
        if any(" ".join(k.export_public_key("openssh").decode().split()[:2]) == pub for k in recorded):
            return known_hosts_path(device)
        raise host_key_error(device)
    p = known_hosts_path(device)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        if p.stat().st_size and not p.read_bytes().endswith(b"\n"):
            fh.write("\n")
        fh.write(f"{host_pattern(device)} {pub}\n")
    return p
