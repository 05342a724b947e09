"""Benchmark a bundle on the user's own boards over SSH, several boards in parallel.

Per board: connect (verified host key, key auth) -> probe the board's Python (edgetransfer and
runtime versions) -> board state before -> send what changed (:mod:`.sync`) -> run the
torch-free device benchmark there (``python -m edgetransfer benchmark``, in the board's Python
or in a Docker image) -> board state after -> fetch its report.json. A board that fails at any
step becomes a section with ``status: failed``, the step and its error; the others still report.
The combined report (one section per board and one table across boards) is written locally to
``<bundle>/devices/report.json`` and ``report.md``; the bundle's own files are only read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import re
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from .. import __version__
from ..bench.benchmark import BenchSettings
from ..bundle import DEVICES_DIR, REPORT_JSON, resolve_target_name
from ..errors import EdgeTransferError, InventoryError, RemoteError, RemoteVersionError
from ..progress import log
from ..targets import Target, load_target
from .boardstate import BoardSnapshot, BoardState, parse_snapshot, snapshot_script, state_summary, state_warnings
from .inventory import Device
from .lock import acquire, holder_info
from .ssh import asyncssh, connect, error_reason, is_connection_lost, run, shell_join
from .sync import BundlePlan, SendItem, TransferStats, plan_bundle, sync

REPORT_DIR = DEVICES_DIR
PROBE_MARK = "@@edgetransfer:probe "
DEVICE_EXTRA_MODULES = ("numpy", "PIL", "yaml", "typer", "rich", "onnxruntime")

# Starts edgetransfer's command line in the board's Python with the working directory off the import
# path (``python -m`` puts it first, so a folder named edgetransfer there would shadow the installed
# package: "cannot import name '__version__' from 'edgetransfer' (unknown location)"). Python >= 3.6.
CLEAN_PATH = "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.', os.getcwd())]"
BOOTSTRAP = CLEAN_PATH + "; import runpy; runpy.run_module('edgetransfer', run_name='__main__', alter_sys=True)"

# Runs in the board's Python (any version >= 3.6): what is installed there. Constant text but for
# MODULES, the (module, distribution) pairs of the core and of every registered runtime.
_PROBE_TEMPLATE = r'''
import json, platform, sys
import importlib.util as u
try:
    from importlib import metadata as md
except ImportError:
    md = None
def ver(d):
    try:
        return md.version(d)
    except Exception:
        return "installed"
out = {"python": sys.executable, "python_version": platform.python_version(), "machine": platform.machine()}
try:  # PEP 668: a system Python that refuses pip install outside a virtual environment
    import os, sysconfig
    out["externally_managed"] = (sys.prefix == getattr(sys, "base_prefix", sys.prefix)
                                 and os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))
except Exception:
    out["externally_managed"] = None
try:
    import edgetransfer
    out["edgetransfer"] = edgetransfer.__version__
    out["edgetransfer_path"] = edgetransfer.__file__
except Exception as e:
    out["edgetransfer"] = None
    out["edgetransfer_error"] = "%s: %s" % (type(e).__name__, e)
mods = {}
for m, d in MODULES:
    try:
        mods[m] = ver(d) if u.find_spec(m) else None
    except Exception:
        mods[m] = None
if mods.get("onnxruntime"):
    try:
        import onnxruntime as o
        mods["onnxruntime"] = o.__version__
        out["onnxruntime_providers"] = o.get_available_providers()
    except Exception as e:
        out["onnxruntime_error"] = "%s: %s" % (type(e).__name__, e)
out["modules"] = mods
print("@@edgetransfer:probe " + json.dumps(out))
'''


def probe_script() -> str:
    """The probe, checking the core modules and each registered runner's backend module
    (:func:`edgetransfer.runtime.probe_modules`: the registry is the only runtime list)."""
    from ..runtime import probe_modules

    core = [("numpy", "numpy"), ("PIL", "pillow"), ("yaml", "pyyaml"), ("typer", "typer"), ("rich", "rich")]
    mods = core + [(m, m.replace("_", "-")) for m in dict.fromkeys(probe_modules().values())]
    return CLEAN_PATH + "\nMODULES = " + repr(tuple(mods)) + "\n" + _PROBE_TEMPLATE


def version_tuple(v: str) -> tuple[int, int, int]:
    nums = [int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))  # type: ignore[return-value]


def compare_versions(local: str, remote: str) -> str:
    """``same``, ``compatible`` (same major, and same minor while major is 0) or ``incompatible``."""
    if local == remote:
        return "same"
    lv, rv = version_tuple(local), version_tuple(remote)
    if lv[0] != rv[0] or (lv[0] == 0 and lv[1] != rv[1]):
        return "incompatible"
    return "compatible"


def install_hint(device: Device, info: dict[str, Any] | None = None) -> str:
    """What to run on the board. A system Python marked EXTERNALLY-MANAGED (PEP 668: Debian 12,
    Ubuntu 24.04, Raspberry Pi OS bookworm) refuses ``pip install``: then a virtual environment."""
    spec = f"'edgetransfer[device]=={__version__}'"
    if device.docker_image:
        return f"rebuild the image {device.docker_image} (Dockerfile.jetson) with {spec}"
    if (info or {}).get("externally_managed"):
        return (f"{info.get('python') or device.python} is externally managed (PEP 668: pip install is refused there); make a "
                f"virtual environment on the board: python3 -m venv ~/et && ~/et/bin/pip install {spec}, then set python: ~/et/bin/python "
                f"for {device.name} in the inventory")
    return f"install it on the board: {device.python} -m pip install {spec}"


def launcher(device: Device, workdir: str | None = None) -> list[str]:
    """The argv prefix that starts the board's Python: ``[env K=V] python`` or ``docker run ...
    IMAGE python`` (the workdir mounted at the same path)."""
    if device.docker_image:
        argv = ["docker", "run", "--rm"]
        if workdir:
            argv += ["-v", f"{workdir}:{workdir}", "-w", workdir]
        for k, v in device.env.items():
            argv += ["-e", f"{k}={v}"]
        return argv + [*device.docker_args, device.docker_image, device.python]
    py = device.python[2:] if device.python.startswith("~/") else device.python  # SSH commands start in the home directory
    return (["env", *[f"{k}={v}" for k, v in device.env.items()]] if device.env else []) + [py]


def benchmark_argv(device: Device, workdir: str, remote_bundle: str, target: str, settings: BenchSettings,
                   remote_data: str | None = None) -> list[str]:
    """``python -c BOOTSTRAP benchmark REMOTE_BUNDLE --target T --quiet ...`` for the board
    (:data:`BOOTSTRAP`: ``python -m edgetransfer`` with the working directory off the import path)."""
    argv = launcher(device, workdir) + ["-c", BOOTSTRAP, "benchmark", remote_bundle, "--target", target, "--quiet"]
    if remote_data:
        argv += ["--data", remote_data]
    for b in settings.batch_sizes or ():
        argv += ["--bench-batch", str(int(b))]
    for flag, v in (("--warmup", settings.warmup), ("--iterations", settings.min_iterations), ("--min-seconds", settings.min_seconds),
                    ("--threads", settings.threads), ("--max-samples", settings.max_samples)):
        if v is not None:
            argv += [flag, str(v)]
    if not settings.e2e:
        argv.append("--no-e2e")
    if settings.allow_missing_classes:
        argv.append("--allow-missing-classes")
    if not settings.power:
        argv.append("--no-power")
    if settings.sustained:
        argv += ["--sustained", str(settings.sustained)]
    if settings.sustained_artifact:
        argv += ["--sustained-artifact", settings.sustained_artifact]
    if settings.idle_seconds != BenchSettings.idle_seconds:
        argv += ["--idle-seconds", str(settings.idle_seconds)]
    return argv


async def probe(conn, device: Device) -> dict[str, Any]:
    """What the board's Python has: versions of Python, edgetransfer, numpy/Pillow/..., runtimes."""
    r = await run(conn, launcher(device) + ["-c", probe_script()], timeout=120)
    line = next((ln for ln in (r.stdout or "").splitlines() if ln.startswith(PROBE_MARK)), None)
    if line is None:
        err = (r.stderr or r.stdout or "").strip()[-400:]
        raise RemoteError(f"{device.name}: cannot run the board's Python {device.runs_in!r} (exit {r.exit_status}: {err}); "
                          "set python: (or docker_image:) in the inventory to an interpreter that exists on the board")
    return json.loads(line[len(PROBE_MARK):])


def check_version(device: Device, info: dict[str, Any]) -> dict[str, Any]:
    """``{"local", "remote", "relation", "note"}``; raises :class:`RemoteVersionError` when the
    board's edgetransfer is missing or incompatible (the message says what to install)."""
    remote = info.get("edgetransfer")
    if not remote:
        raise RemoteVersionError(
            f"{device.name}: edgetransfer is not importable by {info.get('python') or device.runs_in} "
            f"({info.get('edgetransfer_error', 'not installed')}); {install_hint(device, info)}")
    rel = compare_versions(__version__, remote)
    if rel == "incompatible":
        raise RemoteVersionError(f"{device.name} has edgetransfer {remote}, this workstation {__version__}: incompatible; "
                                 f"{install_hint(device, info)}")
    missing = [m for m in DEVICE_EXTRA_MODULES if not (info.get("modules") or {}).get(m)]
    note = None
    if rel == "compatible":
        note = f"the board runs edgetransfer {remote}, this workstation {__version__} (compatible; same results format)"
    return {"local": __version__, "remote": remote, "relation": rel, "note": note, "device_extra_missing": missing}


def target_warnings(target: Target, st: BoardState | None) -> list[str]:
    """The board does not match its target profile: CPU architecture, or L4T release (TensorRT
    engines built for one L4T/TensorRT do not load on another)."""
    out: list[str] = []
    if st is None:
        return out
    arch = {"arm64": "aarch64"}.get(st.arch or "", st.arch)
    if st.arch and target.arch and arch != target.arch:
        out.append(f"the board is {st.arch} but its target {target.name} describes {target.arch}: pick the board's target profile "
                   "(edgetransfer targets list) in the inventory or with --target")
    if target.l4t and st.is_jetson and not (st.l4t == target.l4t or st.l4t.startswith(str(target.l4t) + ".")):
        out.append(f"the board runs L4T {st.l4t}, its target {target.name} is for L4T {target.l4t}: engines built for one do not "
                   "load on the other; flash the board or choose the matching target")
    return out


async def board_state(conn, workdir: str | None = None) -> tuple[BoardSnapshot, BoardState]:
    r = await run(conn, shell_join(["sh", "-c", snapshot_script(workdir)]), timeout=60)
    snap = parse_snapshot(r.stdout or "")
    return snap, BoardState.from_snapshot(snap)


async def _workdir(sftp, device: Device) -> str:
    wd = device.workdir[2:] if device.workdir.startswith("~/") else device.workdir
    await sftp.makedirs(wd, exist_ok=True)
    return await sftp.realpath(wd)


def resolve_target(device: Device, override: str | None, bundle_info: dict[str, Any]) -> tuple[Target, str | None]:
    """(target, local YAML path to send or None). Order: --target, the device's, then the bundle's
    rule (bundle.json's target, else the default: :func:`edgetransfer.bundle.resolve_target_name`)."""
    name = resolve_target_name(override or device.target, bundle_info.get("target"))
    try:
        tgt = load_target(name)
    except EdgeTransferError as exc:
        raise InventoryError(f"device {device.name}: {exc}") from exc
    p = Path(name)
    return tgt, (str(p) if p.suffix in (".yaml", ".yml") and p.is_file() else None)


async def bench_device(device: Device, plan: BundlePlan, target: Target, target_file: str | None, settings: BenchSettings,
                       lock_wait_s: float = 0.0) -> dict[str, Any]:
    """One board's section of the combined report (never raises for a board failure). The
    board's lock (:mod:`.lock`) is held from before the board state to after the fetched report;
    a board held by someone else fails at stage ``lock`` naming the holder, unless it frees up
    within ``lock_wait_s``."""
    a = asyncssh()
    sec: dict[str, Any] = {"device": device.name, "host": device.destination, "target": target.name, "runs_in": device.runs_in,
                           "status": "failed", "stage": "connect", "error": None, "error_type": None, "remote": None, "version": None,
                           "board": {"before": None, "after": None}, "warnings": [], "transfer": None, "remote_bundle": None,
                           "seconds": {}, "started_at": time.time(), "finished_at": None, "report": None, "lock": None}
    t0 = time.perf_counter()
    before = after = None
    say = lambda msg: log(f"[bold]{device.name}[/]: {escape(msg)}")  # noqa: E731
    try:
        conn = await connect(device)
        async with conn, contextlib.AsyncExitStack() as held:
            sec["seconds"]["connect"] = time.perf_counter() - t0
            sec["stage"] = "probe"
            info = await probe(conn, device)
            sec["remote"] = info
            sec["version"] = check_version(device, info)
            say(f"{info.get('machine')}, Python {info.get('python_version')}, edgetransfer {info.get('edgetransfer')}")
            async with conn.start_sftp_client() as sftp:
                workdir = await _workdir(sftp, device)
                remote_dir = posixpath.join(workdir, "bundles", plan.key)
                sec["remote_bundle"] = remote_dir
                sec["stage"] = "lock"
                lock = await acquire(conn, device.name, workdir, holder_info(str(plan.bundle)), wait_s=lock_wait_s,
                                     on_wait=lambda who: say(f"waiting for the board: in use by {who}"))
                held.push_async_callback(lock.release)
                sec["lock"] = {k: v for k, v in lock.info.items() if k != "token"} | {"broke_stale_lock_age_s": lock.broke}
                if lock.broke is not None:
                    say(f"took over a stale lock (not refreshed for {lock.broke} s)")
                sec["stage"] = "board state"
                _, before = await board_state(conn, workdir)
                sec["board"]["before"] = before.to_dict()
                sec["stage"] = "transfer"
                items = plan.items_for(remote_dir)
                remote_target = target.name
                if target_file:
                    data = Path(target_file).read_bytes()
                    items.append(SendItem.from_bytes(f"_targets/{Path(target_file).name}", data))
                    remote_target = posixpath.join(remote_dir, "_targets", Path(target_file).name)
                t = time.perf_counter()
                stats: TransferStats = await sync(conn, sftp, device, items, remote_dir)
                sec["transfer"] = stats.to_dict()
                sec["seconds"]["transfer"] = time.perf_counter() - t
                say(stats.summary())
                sec["stage"] = "benchmark"
                report_path = posixpath.join(remote_dir, REPORT_JSON)
                if await sftp.exists(report_path):
                    await sftp.remove(report_path)
                argv = benchmark_argv(device, workdir, remote_dir, remote_target, settings,
                                      posixpath.join(remote_dir, "data") if plan.data_mode else None)
                say(f"running {shell_join(argv)}")
                t = time.perf_counter()
                try:
                    r = await run(conn, argv, timeout=device.timeout_s)
                except a.TimeoutError as exc:
                    raise RemoteError(f"{device.name}: the remote benchmark did not finish within {device.timeout_s:g} s "
                                      "(timeout_s in the inventory); lower --max-samples/--iterations or raise timeout_s") from exc
                sec["seconds"]["benchmark"] = time.perf_counter() - t
                sec["stage"] = "board state"
                _, after = await board_state(conn, workdir)
                sec["board"]["after"] = after.to_dict()
                if r.exit_status != 0:
                    tail = "\n".join((r.stderr or r.stdout or "").strip().splitlines()[-6:])
                    raise RemoteError(f"the benchmark on {device.name} failed (exit {r.exit_status}): {tail}")
                sec["stage"] = "report"
                async with sftp.open(report_path, "rb") as fh:
                    report = json.loads((await fh.read()).decode())
                from ..bench.report import SCHEMA_VERSION

                if report.get("schema_version") != SCHEMA_VERSION:
                    raise RemoteVersionError(f"{device.name} wrote report schema {report.get('schema_version')}, this workstation reads "
                                             f"{SCHEMA_VERSION}; {install_hint(device)}")
                sec.update(status="ok", stage=None, report=report)
    except EdgeTransferError as exc:
        sec.update(error=str(exc), error_type=type(exc).__name__)
        if getattr(exc, "who", None):
            sec["held_by"] = exc.who  # BoardBusyError: the lock's holder
    except (a.Error, OSError, asyncio.TimeoutError) as exc:
        if is_connection_lost(exc) or isinstance(exc, asyncio.TimeoutError):
            msg = f"connection lost during {sec['stage']}: {error_reason(exc)}; re-run the same command"
        else:
            msg = f"the board refused an operation during {sec['stage']}: {error_reason(exc)}"
        sec.update(error=f"{device.name} ({device.destination}): {msg}", error_type="RemoteError")
    sec["warnings"] = (state_warnings(before, after) + target_warnings(target, before or after)) if (before or after) else []
    sec["seconds"]["total"] = time.perf_counter() - t0
    sec["finished_at"] = time.time()
    if sec["status"] == "ok":
        say(f"done in {sec['seconds']['total']:.1f} s" + (f"; {len(sec['warnings'])} warning(s)" if sec["warnings"] else ""))
    else:
        say(f"failed during {sec['stage']}: {sec['error']}")
    return sec


def benchmark_on_devices(bundle: Path, devices: list[Device], *, target: str | None = None, data: Path | None = None,
                         settings: BenchSettings = BenchSettings(), report_dir: Path | None = None, write: bool = True,
                         lock_wait_s: float = 0.0, device_class: str | None = None) -> dict[str, Any]:
    """Benchmark ``bundle`` on every device in parallel; returns the combined report (written to
    ``report_dir``, default ``<bundle>/devices/``, as report.json / report.md when ``write``).

    Local problems (not a bundle, an artifact not matching its manifest, validation images
    missing, an unknown target, a duplicate device) raise before any connection; board problems
    become failed sections. ``lock_wait_s``: how long a board held by someone else is waited for.
    ``device_class``: ``devices`` are the boards of that class; the first free one runs
    (:func:`.fleet.bench_first_free`, waiting up to ``lock_wait_s`` when all are held)."""
    bundle = Path(bundle)
    names = [d.name for d in devices]
    if not devices:
        raise InventoryError("no device given; pass --device NAME (see 'edgetransfer devices list')")
    if device_class is not None and not devices:
        raise InventoryError(f"no device of class {device_class!r} in the inventory (set device_class: in devices.yaml)")
    if len(set(names)) != len(names):
        raise InventoryError(f"device names repeat in {names}; give each board once")
    plan = plan_bundle(bundle, data, settings.max_samples)
    targets = {d.name: resolve_target(d, target, plan.bundle_info) for d in devices}
    log(f"bundle {bundle}: {len(plan.items)} file(s), {sum(i.size for i in plan.items) / 2**20:.1f} MiB, {plan.num_val} validation images")

    async def all_devices(devices, farm):
        if device_class is not None and not farm:
            from .fleet import bench_first_free

            return [await bench_first_free(device_class, devices, plan, targets, settings, lock_wait_s)]
        return await asyncio.gather(*(bench_device(d, plan, *targets[d.name], settings, lock_wait_s) for d in devices))

    from .labgrid import farm_places

    with farm_places(devices, device_class, lock_wait_s) as (run_on, farm):
        sections = asyncio.run(all_devices(run_on, farm))
    for sec in sections:
        if sec["device"] in farm:
            sec["labgrid"] = farm[sec["device"]]
    combined = {
        "kind": "devices",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bundle": str(bundle),
        "edgetransfer_version": __version__,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
        "devices": list(sections),
    }
    if write:
        from .report import write_devices_report

        write_devices_report(combined, Path(report_dir) if report_dir else bundle / REPORT_DIR)
    return combined


async def _check(device: Device) -> dict[str, Any]:
    conn = await connect(device)
    async with conn:
        info = await probe(conn, device)
        wd = device.workdir[2:] if device.workdir.startswith("~/") else device.workdir
        snap, st = await board_state(conn, wd)
    try:
        version = check_version(device, info)
        version_error = None
    except RemoteVersionError as exc:
        version, version_error = None, str(exc)
    warnings = state_warnings(st, None)
    if device.target:
        warnings += target_warnings(load_target(device.target), st)
    return {"device": device.name, "host": device.destination, "runs_in": device.runs_in, "remote": info, "version": version,
            "version_error": version_error, "state": st.to_dict(), "summary": state_summary(st), "warnings": warnings,
            "_snapshot": snap}


def check_device(device: Device) -> dict[str, Any]:
    """Connect and describe the board: arch, OS, L4T/JetPack, Python, edgetransfer and runtimes,
    free disk, power/thermal state. ``_snapshot`` holds the raw :class:`BoardSnapshot`.
    Raises :class:`HostKeyError` / :class:`RemoteConnectionError` when the board is unreachable."""
    return asyncio.run(_check(device))
