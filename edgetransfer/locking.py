"""One process at a time on a bundle: an advisory ``flock`` on ``BUNDLE/.edgetransfer.lock``.

A command that writes a bundle (``run``, ``train``, ``export``, ``quantize``, ``build``,
``benchmark``) holds the lock from start to end, so two commands on one bundle can no longer
interleave their bundle.json writes or replace each other's artifacts mid-way. The lock file holds
who has it (pid, host, command, start time), so the second command's error names the holder. The
kernel drops a ``flock`` when its process dies (crash, kill -9), so there are no stale locks to
break. Re-entrant within a process (``run`` holds it around its stages). Under ``torchrun`` only
global rank 0 takes it (the other ranks write nothing). Linux/macOS (``fcntl``); elsewhere no lock.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .bundle import LOCK_FILE
from .errors import EdgeTransferError

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

_HELD: dict[Path, int] = {}  # lock path -> re-entry depth in this process
_GUARD = threading.Lock()


class BundleBusyError(EdgeTransferError):
    """Another process holds the bundle's lock (exit code 2); the message names it."""


def holder(directory: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds (or last held) the lock of ``directory``: ``{"pid", "host", "command", "since"}``, or None."""
    try:
        return json.loads((Path(directory) / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def bundle_lock(directory: str | os.PathLike, command: str = "") -> Iterator[None]:
    """Hold ``directory``'s lock for the block. A directory that does not exist yet is not locked
    (there is nothing to protect, and bad input must leave nothing behind): the stages that
    create it lock it on their own once it exists.

    Raises :class:`BundleBusyError` at once when another process holds it (no waiting: the holder
    may run for an hour), naming pid, host, command and start time."""
    if fcntl is None or int(os.environ.get("RANK", "0") or 0) != 0 or not Path(directory).is_dir():
        yield
        return
    d = Path(directory).resolve()
    path = d / LOCK_FILE
    with _GUARD:
        if path in _HELD:
            _HELD[path] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _GUARD:
                _HELD[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = holder(d) or {}
            raise BundleBusyError(
                f"{d} is in use by another edgetransfer process: pid {h.get('pid', '?')} on {h.get('host', '?')} "
                f"('{h.get('command', '?')}', since {h.get('since', '?')}); wait for it to finish, or use another --out "
                "/ a copy of the bundle") from None
        argv = " ".join(["edgetransfer", *sys.argv[1:]]) if sys.argv and "edgetransfer" in sys.argv[0] else ""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": argv or command or "edgetransfer (Python API)",
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        with _GUARD:
            _HELD[path] = 1
        try:
            yield
        finally:
            with _GUARD:
                _HELD.pop(path, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def locked(param: str, command: str) -> Callable:
    """Decorator: hold the lock of the bundle directory passed as argument ``param`` while the function runs."""

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            directory = sig.bind_partial(*args, **kwargs).arguments[param]
            with bundle_lock(directory, command):
                return fn(*args, **kwargs)

        return wrapper

    return deco
