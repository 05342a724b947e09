"""A fleet shared by a team: pick a free board of a device class, and show who holds which board.

Without a board-farm coordinator the per-board lock file (:mod:`.lock`) is the reservation:
``benchmark --device-class orin-nano`` tries the class's boards in inventory order, runs on the
first whose lock it takes, and when every one is held waits (``--wait-lock SECONDS``), polling
every :data:`~.lock.POLL_S` s and saying which boards are held by whom.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from typing import Any

from ..progress import log
from .inventory import Device
from .lock import POLL_S, describe_holder, lock_status


async def bench_first_free(device_class: str, candidates: list[Device], plan, targets: dict, settings, wait_s: float) -> dict[str, Any]:
    """The section of the first board of ``candidates`` that was free (or the last busy one's
    failed section, its error listing every holder, once ``wait_s`` has passed)."""
    from .bench import bench_device

    deadline = time.monotonic() + max(0.0, wait_s)
    rounds = 0
    while True:
        busy: list[dict[str, Any]] = []
        for d in candidates:
            sec = await bench_device(d, plan, *targets[d.name], settings, 0.0)
            if sec.get("error_type") != "BoardBusyError":
                sec["device_class"] = device_class
                return sec
            busy.append(sec)
        if time.monotonic() >= deadline:
            last = busy[-1]
            last["error"] = (f"every {device_class} board is in use: " + "; ".join(f"{s['device']} by {s.get('held_by')}" for s in busy)
                             + ("; pass --wait-lock SECONDS to queue for the first free one" if wait_s <= 0 else f" (waited {wait_s:g} s)"))
            last["device_class"] = device_class
            return last
        if rounds == 0:
            log(f"all {len(candidates)} {device_class} board(s) are in use; waiting up to {wait_s:g} s for the first free one")
        rounds += 1
        await asyncio.sleep(POLL_S)


async def _holder(device: Device) -> dict[str, Any]:
    from .ssh import connect

    try:
        conn = await connect(device)
        async with conn:
            wd = device.workdir[2:] if device.workdir.startswith("~/") else device.workdir
            q = shlex.quote(wd)
            r = await conn.run(f"cd {q} 2>/dev/null && pwd || echo {q}", check=False)
            st = await lock_status(conn, (r.stdout or wd).strip() or wd)
    except Exception as exc:  # unreachable board: say so, the others still show
        return {"device": device.name, "state": "unreachable", "detail": f"{type(exc).__name__}: {exc}"[:160]}
    detail = describe_holder(st["holder"], st["age_s"]) if st["state"] != "free" else ""
    if device.labgrid_coordinator and device.labgrid_place:
        from .labgrid import holder_of

        try:
            who = holder_of(device.labgrid_coordinator, device.labgrid_place)
        except Exception as exc:  # coordinator down or labgrid missing: say so
            who = f"? ({type(exc).__name__})"
        detail = (detail + "; " if detail else "") + f"labgrid place {device.labgrid_place}: {who or 'free'}"
    return {"device": device.name, "state": st["state"], "detail": detail, "holder": st["holder"]}


def board_holders(devices: list[Device]) -> list[dict[str, Any]]:
    """``{"device", "state": free|held|stale|unreachable, "detail"}`` per board, connecting to all in parallel."""
    async def go():
        return await asyncio.gather(*(_holder(d) for d in devices))

    return list(asyncio.run(go()))
