"""A per-board lock held on the board for the whole remote benchmark, so two workstations never
measure one board at once (they would corrupt each other's latency).

The lock is the directory ``<workdir>/.edgetransfer-lock/`` holding ``holder.json`` (who: user@host,
pid, start time, bundle, a random token). Rules:

* **taken atomically**: ``mkdir`` either creates the directory or fails because it exists (POSIX
  guarantees one winner), so of two concurrent benchmarks exactly one gets it;
* **refreshed** every :data:`REFRESH_S` (30 s) by the holder (``touch holder.json``), and released
  (removed) when the run ends, failed or not;
* **stale** when ``holder.json`` was last refreshed more than :data:`STALE_S` (180 s, six missed
  refreshes) ago by the board's own clock (no workstation clock is compared); only then may another
  benchmark break it. Breaking takes a second ``mkdir`` guard (``.edgetransfer-lock.break``) so two
  breakers cannot both win; a guard older than 60 s is itself removed.

Every value in the scripts comes from :func:`shlex.quote`; the board needs only POSIX ``sh``,
``mkdir``, ``date``, ``stat`` (GNU or BusyBox), ``touch`` and ``cat``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import posixpath
import secrets
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..errors import RemoteError

LOCK_DIR = ".edgetransfer-lock"
REFRESH_S = 30.0
STALE_S = 180.0
POLL_S = 2.0
MARK = "@@edgetransfer:lock "


class BoardBusyError(RemoteError):
    """The board's lock is held by another benchmark (the message names the holder)."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None, who: str = ""):
        super().__init__(message)
        self.holder = holder
        self.who = who


def holder_info(bundle: str = "") -> dict[str, Any]:
    """Who takes the lock: ``user@host``, pid, start time (epoch s), bundle, a random token."""
    return {"holder": f"{getpass.getuser()}@{socket.gethostname()}", "pid": os.getpid(), "started_at": time.time(),
            "bundle": str(bundle), "token": secrets.token_hex(8)}


def _paths(workdir: str) -> tuple[str, str, str]:
    d = posixpath.join(workdir, LOCK_DIR)
    return d, posixpath.join(d, "holder.json"), d + ".break"


_AGE = ('age() { m=$(stat -c %Y "$1" 2>/dev/null || stat -f %m "$1" 2>/dev/null || echo 0); echo $(( $(date +%s) - m )); }\n')


def acquire_script(workdir: str, info: dict[str, Any], stale_s: float = STALE_S) -> str:
    """sh: take the lock, or break it when stale, or print the holder. Prints one MARK line:
    ``acquired``, ``broke <age>`` (took over a stale lock) or ``held <age>`` followed by holder.json."""
    d, h, b = (shlex.quote(p) for p in _paths(workdir))
    info_q = shlex.quote(json.dumps(info))
    stale = int(stale_s)
    write = f"printf '%s' {info_q} > {h}.tmp && mv {h}.tmp {h}"
    return (
        f"mkdir -p {shlex.quote(workdir)} || exit 3\n" + _AGE +
        f"if mkdir {d} 2>/dev/null; then {write}; echo '{MARK}acquired'; exit 0; fi\n"
        f"a=$(age {h}); [ -f {h} ] || a=$(age {d})\n"
        f"if [ \"$a\" -gt {stale} ]; then\n"
        f"  [ -d {b} ] && [ \"$(age {b})\" -gt 60 ] && rmdir {b} 2>/dev/null\n"
        f"  if mkdir {b} 2>/dev/null; then\n"
        f"    a2=$(age {h}); [ -f {h} ] || a2=$(age {d})\n"
        f"    if [ \"$a2\" -gt {stale} ]; then rm -rf {d}; mkdir {d} && {write} && rmdir {b} && echo '{MARK}broke '\"$a2\" && exit 0; fi\n"
        f"    rmdir {b}\n"
        "  fi\n"
        "fi\n"
        f"echo '{MARK}held '\"$a\"; cat {h} 2>/dev/null; echo\n"
    )


def _owned(h: str, token: str) -> str:
    return f"grep -q {shlex.quote(token)} {h} 2>/dev/null"


def refresh_script(workdir: str, token: str) -> str:
    _, h, _ = (shlex.quote(p) for p in _paths(workdir))
    return f"{_owned(h, token)} && touch {h} && echo '{MARK}refreshed'\n"


def release_script(workdir: str, token: str) -> str:
    d, h, _ = (shlex.quote(p) for p in _paths(workdir))
    return f"if {_owned(h, token)}; then rm -rf {d}; echo '{MARK}released'; fi\n"


def status_script(workdir: str) -> str:
    """sh: ``free`` or ``held <age s>`` + holder.json."""
    d, h, _ = (shlex.quote(p) for p in _paths(workdir))
    return _AGE + f"if [ -d {d} ]; then echo '{MARK}held '$(age {h}); cat {h} 2>/dev/null; echo; else echo '{MARK}free'; fi\n"


def parse_lock_output(text: str) -> tuple[str, int | None, dict[str, Any] | None]:
    """(state, age s, holder dict) from a lock script's output."""
    lines = (text or "").splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith(MARK):
            parts = ln[len(MARK):].split()
            state = parts[0] if parts else "?"
            age = int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else None
            holder = None
            rest = "\n".join(lines[i + 1:]).strip()
            if rest:
                try:
                    holder = json.loads(rest)
                except json.JSONDecodeError:
                    holder = {"holder": rest[:200]}
            return state, age, holder
    return "?", None, None


def describe_holder(holder: dict[str, Any] | None, age: int | None) -> str:
    if not holder:
        return "an unknown holder (no holder.json)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started_at"])) if holder.get("started_at") else "?"
    return (f"{holder.get('holder', '?')} (pid {holder.get('pid', '?')}, since {since}"
            + (f", refreshed {age} s ago" if age is not None else "") + (f", bundle {holder['bundle']}" if holder.get("bundle") else "") + ")")


async def _sh(conn, script: str, timeout: float = 30) -> str:
    from .ssh import run, shell_join

    r = await run(conn, shell_join(["sh", "-c", script]), timeout=timeout)
    return r.stdout or ""


@dataclass
class BoardLock:
    """A held lock; :meth:`release` (idempotent) stops the refresher and removes the directory."""

    conn: Any
    workdir: str
    info: dict[str, Any]
    broke: int | None = None  # age (s) of the stale lock this one replaced
    _task: asyncio.Task | None = None

    def start_refresh(self, every_s: float = REFRESH_S) -> None:
        async def loop():
            while True:
                await asyncio.sleep(every_s)
                try:
                    await _sh(self.conn, refresh_script(self.workdir, self.info["token"]))
                except Exception:  # a lost connection ends the run anyway; the lock then goes stale
                    return

        self._task = asyncio.ensure_future(loop())

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await _sh(self.conn, release_script(self.workdir, self.info["token"]))
        except Exception:
            pass  # unreachable board: the lock goes stale after STALE_S


async def acquire(conn, device_name: str, workdir: str, info: dict[str, Any], *, wait_s: float = 0.0,
                  stale_s: float = STALE_S, on_wait=None) -> BoardLock:
    """Take the board's lock; with ``wait_s`` > 0 poll every :data:`POLL_S` until it is free or
    ``wait_s`` has passed. Raises :class:`BoardBusyError` naming the holder."""
    deadline = time.monotonic() + max(0.0, wait_s)
    told = False
    while True:
        state, age, holder = parse_lock_output(await _sh(conn, acquire_script(workdir, info, stale_s)))
        if state in ("acquired", "broke"):
            lock = BoardLock(conn, workdir, info, broke=age if state == "broke" else None)
            lock.start_refresh()
            return lock
        who = describe_holder(holder, age)
        if state != "held":
            raise RemoteError(f"{device_name}: could not take the board lock in {workdir} (the lock script printed nothing)")
        if time.monotonic() >= deadline:
            hint = ("; pass --wait-lock SECONDS to wait for it" if wait_s <= 0 else f"; still held after waiting {wait_s:g} s")
            raise BoardBusyError(f"{device_name} is in use by {who}{hint}; a lock not refreshed for {STALE_S:g} s is "
                                 f"broken automatically ({posixpath.join(workdir, LOCK_DIR)})", holder, who)
        if on_wait and not told:
            on_wait(who)
            told = True
        await asyncio.sleep(POLL_S)


async def lock_status(conn, workdir: str) -> dict[str, Any]:
    """``{"state": "free"|"held"|"stale", "age_s", "holder"}`` of a board's lock."""
    state, age, holder = parse_lock_output(await _sh(conn, status_script(workdir)))
    if state == "held" and age is not None and age > STALE_S:
        state = "stale"
    return {"state": state, "age_s": age, "holder": holder}
