"""Board-farm reservations through a labgrid coordinator (https://labgrid.readthedocs.io, PyPI
``labgrid``, the ``farm`` extra): when the inventory names a coordinator and place for a board,
the benchmark acquires (locks) that place for the whole run and releases it after; with
``--device-class NAME`` it files a labgrid reservation with the filter ``class=NAME`` (the places'
tags), waits in the coordinator's queue (position shown, ``--wait-lock`` seconds at most), then
acquires the allocated place and runs on the inventory board whose ``labgrid_place`` it is.

This drives ``labgrid-client`` (``reserve --shell``, ``wait``, ``-p +TOKEN acquire``,
``release``, ``cancel-reservation``, ``reservations``, ``show``), so the coordinator's own rules
(fair queue, priorities, who may break a lock) apply; the per-board lock file (:mod:`.lock`) is
still taken on the board as well.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import MissingExtraError, RemoteError
from ..progress import log
from .inventory import Device
from .lock import POLL_S, BoardBusyError

FARM_EXTRA = "farm"


def client_path() -> str:
    exe = shutil.which("labgrid-client") or str(Path(sys.executable).with_name("labgrid-client"))
    if not Path(exe).exists():
        raise MissingExtraError(f"labgrid-client not found: pip install 'edgetransfer[{FARM_EXTRA}]' (labgrid) on this workstation")
    return exe


def client(coordinator: str, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    """``labgrid-client -x COORDINATOR ARGS``; :class:`RemoteError` with its stderr when it fails and ``check``."""
    r = subprocess.run([client_path(), "-x", coordinator, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RemoteError(f"labgrid-client {' '.join(args)} (coordinator {coordinator}) failed: "
                          f"{(r.stderr or r.stdout).strip()[-300:]}")
    return r


def parse_reservations(text: str) -> dict[str, dict[str, Any]]:
    """``labgrid-client reservations`` -> {token: {owner, state, filters, allocations, created}}."""
    out: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    section = None
    for line in (text or "").splitlines():
        m = re.match(r"^Reservation '(\w+)':", line)
        if m:
            cur = out.setdefault(m.group(1), {"filters": {}, "allocations": {}})
            continue
        if cur is None or not line.strip():
            continue
        key, _, val = line.strip().partition(":")
        val = val.strip()
        if line.startswith("    ") and section in ("filters", "allocations"):
            cur[section][key] = val
        elif key in ("filters", "allocations"):
            section = key
        else:
            section = None
            cur[key] = val
    return out


def queue_position(res: dict[str, dict[str, Any]], token: str) -> int:
    """1 + the waiting reservations filed before ours (the coordinator serves them first)."""
    mine = res.get(token, {})
    return 1 + sum(1 for t, r in res.items() if t != token and r.get("state") == "waiting"
                   and r.get("created", "") < mine.get("created", ""))


def holder_of(coordinator: str, place: str) -> str | None:
    r = client(coordinator, "-p", place, "show", check=False)
    m = re.search(r"^\s*acquired:\s*(\S+)", r.stdout or "", re.M)
    return m.group(1) if m and m.group(1) != "None" else None


def acquire_place(coordinator: str, place: str, wait_s: float = 0.0) -> None:
    """Acquire ``place``; a place acquired by someone else raises :class:`BoardBusyError` naming
    them once ``wait_s`` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        r = client(coordinator, "-p", place, "acquire", check=False)
        if r.returncode == 0:
            return
        who = holder_of(coordinator, place)
        if who is None:
            raise RemoteError(f"labgrid place {place} on {coordinator}: {(r.stderr or r.stdout).strip()[-300:]}")
        if time.monotonic() >= deadline:
            raise BoardBusyError(f"labgrid place {place} is acquired by {who} (coordinator {coordinator})"
                                 + ("; pass --wait-lock SECONDS to wait" if wait_s <= 0 else f"; still after {wait_s:g} s"), who=who)
        time.sleep(POLL_S)


def reserve(coordinator: str, tags: dict[str, str], wait_s: float) -> tuple[str, str]:
    """File a reservation for ``tags`` and wait for its allocation: (token, place). Shows the queue
    position; cancels it and raises :class:`BoardBusyError` after ``wait_s``."""
    r = client(coordinator, "reserve", "--shell", *(f"{k}={v}" for k, v in tags.items()))
    m = re.search(r"LG_TOKEN=(\w+)", r.stdout)
    if not m:
        raise RemoteError(f"labgrid reserve printed no token: {r.stdout.strip()[-200:]}")
    token = m.group(1)
    waiter = subprocess.Popen([client_path(), "-x", coordinator, "wait", token], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, shown = time.monotonic() + wait_s, None
    try:
        while True:
            res = parse_reservations(client(coordinator, "reservations").stdout)
            mine = res.get(token, {})
            if mine.get("state") in ("allocated", "acquired") and mine["allocations"].get("main"):
                return token, mine["allocations"]["main"]
            pos = queue_position(res, token)
            if time.monotonic() >= deadline:
                holders = sorted({f"{r['allocations'].get('main')} by {r.get('owner')}" for r in res.values() if r["allocations"].get("main")})
                client(coordinator, "cancel-reservation", token, check=False)
                raise BoardBusyError(f"no labgrid place with {tags} is free on {coordinator} (held: {', '.join(holders) or '?'}; queue position "
                                     f"{pos})" + ("; pass --wait-lock SECONDS to wait in the queue" if wait_s <= 0 else f" after {wait_s:g} s"),
                                     who=", ".join(holders))
            if pos != shown:
                log(f"labgrid: waiting for a place with {tags}, queue position {pos}")
                shown = pos
            time.sleep(POLL_S)
    finally:
        if waiter.poll() is None:
            waiter.terminate()
            waiter.wait(timeout=5)


@contextlib.contextmanager
def farm_places(devices: list[Device], device_class: str | None, wait_s: float) -> Iterator[tuple[list[Device], dict[str, dict]]]:
    """Hold the labgrid places of ``devices`` for the block: yields (the devices to run, {device
    name: labgrid facts incl. the ``reservations`` line seen while held}). Devices without a
    coordinator pass through; with ``device_class`` and a coordinator the class's reservation picks one."""
    farm = [d for d in devices if d.labgrid_coordinator and d.labgrid_place]
    held: list[tuple[str, str, str | None]] = []
    info: dict[str, dict] = {}
    try:
        if device_class is not None and farm:
            coord = farm[0].labgrid_coordinator
            token, place = reserve(coord, {"class": device_class}, wait_s)
            client(coord, "-p", f"+{token}", "acquire")
            held.append((coord, place, token))
            chosen = [d for d in farm if d.labgrid_place == place]
            if not chosen:
                raise RemoteError(f"labgrid allocated place {place}, but no inventory board has labgrid_place: {place}")
            devices = chosen
            info[chosen[0].name] = {"coordinator": coord, "place": place, "token": token}
        else:
            for d in farm:
                acquire_place(d.labgrid_coordinator, d.labgrid_place, wait_s)
                held.append((d.labgrid_coordinator, d.labgrid_place, None))
                info[d.name] = {"coordinator": d.labgrid_coordinator, "place": d.labgrid_place, "token": None}
        for name, i in info.items():
            i["reservations"] = parse_reservations(client(i["coordinator"], "reservations").stdout).get(i["token"]) if i["token"] else None
            i["acquired_by"] = holder_of(i["coordinator"], i["place"])
        yield devices, info
    finally:
        for coord, place, token in reversed(held):
            client(coord, "-p", place, "release", check=False)
            if token:
                client(coord, "cancel-reservation", token, check=False)
