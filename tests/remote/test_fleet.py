"""A shared fleet on loopback sshd boards: the per-board lock file (two concurrent benchmarks on
one board: one runs, the other fails at once naming the holder), stale locks, --device-class
picking the free board, and `devices list --holders`."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ..fixtures.bundles import make_bundle
from ..fixtures.sshboard import LoopbackBoard, keygen, missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

from edgetransfer.bench.benchmark import BenchSettings  # noqa: E402
from edgetransfer.remote.inventory import Device, Inventory  # noqa: E402
from edgetransfer.remote.lock import LOCK_DIR, STALE_S, acquire_script, holder_info  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SETTINGS = BenchSettings(batch_sizes=(1,), warmup=1, min_iterations=5, min_seconds=1.5, e2e=False, power=False)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    key = keygen(root / "id_ed25519")
    blocker = root / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    boards = []
    try:
        for name in ("board-a", "board-b"):
            boards.append(LoopbackBoard(root / name, key, name).start())
        kh = root / "known_hosts"
        kh.write_text("".join(b.known_hosts_line() for b in boards))
        devs = [Device(name=b.name, host="127.0.0.1", port=b.port, identity_file=str(key), known_hosts=str(kh),
                       workdir=str(root / f"wd-{b.name}"), python=sys.executable, env={"PYTHONPATH": f"{blocker}:{REPO}"},
                       connect_timeout_s=10, timeout_s=300, device_class="orin-nano") for b in boards]
        yield {"root": root, "devices": devs, "bundle": make_bundle(root / "b")}
    finally:
        for b in boards:
            b.stop()


def hold(workdir: str, who: str, age_s: float = 0.0) -> None:
    """Take a board's lock as another workstation would (the same script, run on the board)."""
    info = {**holder_info("elsewhere"), "holder": who}
    out = subprocess.run(["sh", "-c", acquire_script(workdir, info)], capture_output=True, text=True, check=True).stdout
    assert "acquired" in out, out
    if age_s:
        t = time.time() - age_s
        os.utime(Path(workdir) / LOCK_DIR / "holder.json", (t, t))


def free(workdir: str) -> None:
    subprocess.run(["rm", "-rf", str(Path(workdir) / LOCK_DIR)], check=True)


def bench(fleet, devices, tmp, **kw):
    from edgetransfer.remote.bench import benchmark_on_devices

    return benchmark_on_devices(fleet["bundle"], devices, settings=SETTINGS, report_dir=tmp, **kw)


def test_two_concurrent_benchmarks_on_one_board(fleet, tmp_path):
    dev = fleet["devices"][0]
    out: dict[int, dict] = {}
    ths = [threading.Thread(target=lambda i=i: out.__setitem__(i, bench(fleet, [dev], tmp_path / str(i))["devices"][0])) for i in (0, 1)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(timeout=300)
    secs = sorted(out.values(), key=lambda s: s["status"] != "ok")
    ok, refused = secs
    assert ok["status"] == "ok" and ok["report"]["results"][0]["accuracy"]["num_samples"] == 8, ok["error"]
    assert refused["status"] == "failed" and refused["stage"] == "lock" and refused["error_type"] == "BoardBusyError"
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert f"board-a is in use by {me} (pid {os.getpid()}" in refused["error"] and "--wait-lock" in refused["error"]
    assert refused["finished_at"] < ok["finished_at"]  # refused at once, not after the other run
    assert ok["lock"]["holder"] == me and "token" not in ok["lock"]
    assert not (Path(dev.workdir) / LOCK_DIR).exists()  # released after the run


def test_stale_lock_is_broken_and_fresh_one_waited_for(fleet, tmp_path):
    dev = fleet["devices"][0]
    hold(dev.workdir, "gone@crashed-ws", age_s=STALE_S + 60)
    sec = bench(fleet, [dev], tmp_path / "s")["devices"][0]
    assert sec["status"] == "ok" and sec["lock"]["broke_stale_lock_age_s"] >= STALE_S + 60
    hold(dev.workdir, "bob@ws2")
    threading.Timer(3.0, free, args=(dev.workdir,)).start()  # bob finishes after 3 s
    t = time.monotonic()
    sec = bench(fleet, [dev], tmp_path / "w", lock_wait_s=60)["devices"][0]
    assert sec["status"] == "ok" and time.monotonic() - t >= 3.0


def test_device_class_picks_the_free_board_and_devices_list_shows_holders(fleet, tmp_path):
    from typer.testing import CliRunner

    from edgetransfer.cli import app

    a, b = fleet["devices"]
    hold(a.workdir, "alice@ws1")
    try:
        comb = bench(fleet, [a, b], tmp_path / "c", device_class="orin-nano")
        (sec,) = comb["devices"]
        assert sec["device"] == "board-b" and sec["status"] == "ok" and sec["device_class"] == "orin-nano"
        hold(b.workdir, "carol@ws3")
        (sec,) = bench(fleet, [a, b], tmp_path / "d", device_class="orin-nano")["devices"]
        assert sec["status"] == "failed" and "every orin-nano board is in use: board-a by alice@ws1" in sec["error"]
        assert "board-b by carol@ws3" in sec["error"]
        inv = Inventory(tmp_path / "devices.yaml", {d.name: d for d in (a, b)})
        inv.save()
        r = CliRunner().invoke(app, ["devices", "list", "--holders", "--inventory", str(inv.path)], env={"COLUMNS": "250"})
        assert r.exit_code == 0, r.output
        assert "held alice@ws1" in r.output and "held carol@ws3" in r.output and "orin-nano" in r.output
    finally:
        free(a.workdir)
        free(b.workdir)


@pytest.fixture
def coordinator(tmp_path):
    """A real labgrid-coordinator on 127.0.0.1:<free port> (state in tmp_path), stopped after the test."""
    pytest.importorskip("labgrid", reason="labgrid not installed: pip install 'edgetransfer[farm]'")
    from ..fixtures.sshboard import free_port
    from edgetransfer.remote.labgrid import client_path

    exe = Path(client_path()).with_name("labgrid-coordinator")
    port = free_port()
    proc = subprocess.Popen([str(exe), "-l", f"127.0.0.1:{port}"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_labgrid_reservation_picks_the_free_place(fleet, coordinator, tmp_path):
    import dataclasses

    from edgetransfer.remote.labgrid import client, client_path, parse_reservations

    for name in ("board-a", "board-b"):
        client(coordinator, "-p", name, "create")
        client(coordinator, "-p", name, "set-tags", "class=orin-nano")
    other = {**os.environ, "LG_HOSTNAME": "ws1"}  # another workstation holds board-a's place
    subprocess.run([client_path(), "-x", coordinator, "-p", "board-a", "acquire"], env=other, check=True,
                   capture_output=True)
    devs = [dataclasses.replace(d, labgrid_coordinator=coordinator, labgrid_place=d.name) for d in fleet["devices"]]
    (sec,) = bench(fleet, devs, tmp_path / "lg", device_class="orin-nano")["devices"]
    assert sec["device"] == "board-b" and sec["status"] == "ok", sec["error"]
    lg = sec["labgrid"]
    # while the benchmark ran, `labgrid-client reservations` listed our reservation as acquired, allocated board-b
    assert lg["place"] == "board-b" and lg["reservations"]["state"] == "acquired"
    assert lg["reservations"]["allocations"] == {"main": "board-b"} and lg["reservations"]["filters"] == {"main": "class=orin-nano"}
    assert lg["acquired_by"] == f"{socket.gethostname()}/{getpass.getuser()}"
    # released and cancelled after the run; board-a is still the other workstation's
    assert lg["token"] not in parse_reservations(client(coordinator, "reservations").stdout)
    assert "acquired: None" in client(coordinator, "-p", "board-b", "show").stdout
    assert f"acquired: ws1/{getpass.getuser()}" in client(coordinator, "-p", "board-a", "show").stdout
    # the held place named directly: refused at once, naming the holder
    from edgetransfer.remote.lock import BoardBusyError

    with pytest.raises(BoardBusyError, match=f"labgrid place board-a is acquired by ws1/{getpass.getuser()}"):
        bench(fleet, devs[:1], tmp_path / "lg2")


def test_devices_setup_installs_this_wheel_in_a_venv_on_the_board(fleet, tmp_path):
    """The board gets a venv with this checkout's wheel and its [device] dependencies from the
    board's index; the inventory then points at it, and a remote benchmark runs in it."""
    import dataclasses

    from typer.testing import CliRunner

    from edgetransfer import __version__
    from edgetransfer.cli import app

    b = fleet["devices"][1]
    dev = dataclasses.replace(b, workdir=str(tmp_path / "wd"), env={"PYTHONPATH": b.env["PYTHONPATH"].split(":")[0]})  # no checkout on the path
    inv = Inventory(tmp_path / "devices.yaml", {dev.name: dev})
    inv.save()
    r = CliRunner().invoke(app, ["devices", "setup", dev.name, "--inventory", str(inv.path)])
    assert r.exit_code == 0, r.output
    venv_py = tmp_path / "wd" / "venv" / "bin" / "python"
    assert Inventory.load(inv.path).get(dev.name).python == str(venv_py)
    assert list((tmp_path / "wd" / "wheels").glob(f"edgetransfer-{__version__}-*.whl"))
    site = subprocess.run([str(venv_py), "-c", "import edgetransfer, onnxruntime; print(edgetransfer.__file__)"],
                          capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path).stdout
    assert str(tmp_path / "wd" / "venv") in site  # the wheel's copy, not this checkout
    (sec,) = bench(fleet, [Inventory.load(inv.path).get(dev.name)], tmp_path / "rep")["devices"]
    assert sec["status"] == "ok", sec["error"]
    assert sec["remote"]["edgetransfer_path"].startswith(str(tmp_path / "wd" / "venv"))


def test_sustained_run_on_a_board_and_its_plot_in_the_device_report(fleet, tmp_path):
    import dataclasses

    settings = dataclasses.replace(SETTINGS, sustained=2.0, min_seconds=0.0)
    from edgetransfer.remote.bench import benchmark_on_devices

    (sec,) = benchmark_on_devices(fleet["bundle"], fleet["devices"][:1], settings=settings, report_dir=tmp_path)["devices"]
    assert sec["status"] == "ok", sec["error"]
    s = sec["report"]["sustained"]
    assert s["seconds"] >= 2.0 and s["calls"] > 10 and s["samples"] and len(s["rules"]) == 3
    md = (tmp_path / "report.md").read_text()
    assert "Sustained run (model.onnx [onnxruntime], batch 1" in md
    pytest.importorskip("matplotlib")
    assert s["plot"] == "board-a-sustained.png" and (tmp_path / "board-a-sustained.png").read_bytes()[:4] == b"\x89PNG"
