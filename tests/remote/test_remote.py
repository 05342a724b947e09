"""Benchmark on boards over SSH, against a real sshd on a loopback port (tests/fixtures/sshboard.py).

The stand-in board runs this repository's edgetransfer in this interpreter, with a
``sitecustomize`` that makes ``import torch`` fail there (a torch-free board). Skipped, with the
reason, when sshd / ssh-keygen / asyncssh are not installed (.ci/run installs openssh-server).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import platform
import sys
from pathlib import Path

import pytest

from ..fixtures.sshboard import CutProxy, LoopbackBoard, free_port, keygen, missing_reason, public_key

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle  # noqa: E402
from edgetransfer import __version__  # noqa: E402
from edgetransfer.errors import HostKeyError, RemoteConnectionError  # noqa: E402
from edgetransfer.remote.inventory import Device, Inventory  # noqa: E402
from edgetransfer.targets import load_target  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SETTINGS = BenchSettings(batch_sizes=(1,), warmup=1, min_iterations=5, min_seconds=0.0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two loopback boards (two sshd ports), a user key, a torch blocker, known_hosts for both."""
    root = tmp_path_factory.mktemp("ssh")
    user_key = keygen(root / "id_ed25519")
    blocker = root / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # this stand-in board has no torch\n")
    boards = []
    try:
        for name in ("board-a", "board-b"):
            boards.append(LoopbackBoard(root / name, user_key, name).start())
        kh = root / "known_hosts"
        kh.write_text("".join(b.known_hosts_line() for b in boards))
        yield {"root": root, "key": user_key, "blocker": blocker, "boards": boards, "known_hosts": kh}
    finally:
        for b in boards:
            b.stop()


def device(ctx, name: str, port: int, workdir: Path, **kw) -> Device:
    """A device entry for a loopback board: this interpreter, this repository's package, no torch."""
    base = dict(name=name, host="127.0.0.1", port=port, identity_file=str(ctx["key"]), known_hosts=str(ctx["known_hosts"]),
                workdir=str(workdir), python=sys.executable, env={"PYTHONPATH": f"{ctx['blocker']}:{REPO}"}, connect_timeout_s=10, timeout_s=300)
    base.update(kw)
    return Device(**base)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small real bundle: timm mobilenetv3_small_050 (random init) trained 2 epochs on a 3-class
    synthetic ImageFolder, exported (TorchScript exporter, fast) and INT8-quantized."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from ..fixtures.images import make_image_folder
    from edgetransfer.export.onnx import ExportConfig
    from edgetransfer.pipeline import stage_export, stage_quantize, stage_train
    from edgetransfer.train import TrainConfig

    root = tmp_path_factory.mktemp("bundle")
    data = make_image_folder(root / "data", classes=("ants", "bees", "wasps"), per_class=8, size=48)
    torch.manual_seed(0)
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), root / "init.pt")
    (root / "cal.yaml").write_text("num_samples: 12\nallow_fewer: true\nbatch_size: 6\n")
    tgt = load_target("x86-cpu")
    out = root / "bees"
    cfg = TrainConfig(model=f"file:{root / 'init.pt'}", arch="timm:mobilenetv3_small_050", epochs=3, batch_size=8, lr=1e-2)
    stage_train(data, out, cfg, val_fraction=0.5, target=tgt)
    stage_export(out, tgt, ExportConfig(dynamo=False))
    stage_quantize(out, tgt, str(root / "cal.yaml"))
    return out


def digest(tree: Path) -> dict[str, str]:
    return {p.relative_to(tree).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tree.rglob("*")) if p.is_file()}


def bundle_files(tree: Path) -> dict[str, str]:
    """Everything in the bundle except the device reports this feature writes into BUNDLE/devices/."""
    return {k: v for k, v in digest(tree).items() if not k.startswith("devices/")}


def test_remote_benchmark_matches_local_and_skips_unchanged(env, bundle, tmp_path):
    from typer.testing import CliRunner

    from edgetransfer.cli import app
    from edgetransfer.remote.bench import benchmark_on_devices

    a = env["boards"][0]
    dev = device(env, "board-a", a.port, tmp_path / "remote")
    before = bundle_files(bundle)
    local = benchmark_bundle(bundle, load_target("x86-cpu"), settings=SETTINGS, write=False)
    comb = benchmark_on_devices(bundle, [dev], settings=SETTINGS, report_dir=tmp_path / "rep")
    sec = comb["devices"][0]
    assert sec["status"] == "ok", sec["error"]
    # the board is torch-free: its torch row is unavailable, the ONNX rows are measured there
    assert sec["remote"]["modules"]["torch"] is None and sec["remote"]["edgetransfer"] == __version__
    rows = {(r["name"], r["runtime"]): r for r in sec["report"]["results"]}
    lrows = {(r["name"], r["runtime"]): r for r in local["results"]}
    # x86-cpu lists onnxruntime, openvino and torch: ONNX files get an OpenVINO row too (unavailable where it is not installed)
    assert set(rows) == set(lrows) == {("model.pt", "torch"), ("model.onnx", "onnxruntime"), ("model.int8.qdq.onnx", "onnxruntime"),
                                       ("model.onnx", "openvino"), ("model.int8.qdq.onnx", "openvino")}
    assert rows[("model.pt", "torch")]["status"] == "unavailable" and lrows[("model.pt", "torch")]["status"] == "ok"
    for key in [("model.onnx", "onnxruntime"), ("model.int8.qdq.onnx", "onnxruntime")]:
        assert rows[key]["status"] == "ok" and rows[key]["sha256"] == lrows[key]["sha256"]
        assert rows[key]["accuracy"] == lrows[key]["accuracy"]  # top-1, per-class, confusion, agreement: identical
        assert rows[key]["latency"][0]["batch_size"] == 1 and rows[key]["latency"][0]["p50_ms"] > 0
    assert sec["report"]["dataset"]["num_images"] == local["dataset"]["num_images"] == 6  # test: half of the 12 held out
    assert sec["report"]["dataset"]["split"] == local["dataset"]["split"] == "test"
    assert sec["report"]["dataset"]["counts"] == local["dataset"]["counts"]
    # board state recorded before and after; everything was sent the first time
    assert sec["board"]["before"]["arch"] == sec["board"]["after"]["arch"] == platform.machine()
    tr = sec["transfer"]
    assert tr["files_sent"] == tr["files_total"] == 6 + 12 + 6 + 1 and tr["files_unchanged"] == 0  # 3 artifacts + manifests, 12 val + 6 test images, bundle.json
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| board-a | model.onnx | fp32 | onnxruntime | ok |" in md and "## board-a — ok" in md
    # the loopback board has no INA3221/tegrastats/PMIC: the report says so, with no energy number
    assert sec["report"]["power"]["sensor"] is None and "Power: no power sensor" in md
    assert all(r.get("power") is None for r in sec["report"]["results"])
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["devices"][0]["device"] == "board-a"
    assert bundle_files(bundle) == before  # the local bundle is only read

    # the same command again through the CLI: nothing is sent twice; the report goes to BUNDLE/devices/
    inv = Inventory(tmp_path / "devices.yaml", {"board-a": dev})
    inv.save()
    r = CliRunner().invoke(app, ["benchmark", str(bundle), "--device", "board-a", "--inventory", str(inv.path), "--bench-batch", "1",
                                 "--warmup", "1", "--iterations", "5", "--min-seconds", "0", "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout[r.stdout.index("{"):])["devices"][0]
    assert again["status"] == "ok"
    assert again["transfer"]["files_sent"] == 0 and again["transfer"]["bytes_sent"] == 0
    assert again["transfer"]["files_unchanged"] == tr["files_total"]
    assert (bundle / "devices" / "report.md").is_file()
    assert bundle_files(bundle) == before

    # one file changed on the board: exactly that one is sent again
    remote_int8 = Path(sec["remote_bundle"]) / "model.int8.qdq.onnx"
    remote_int8.write_bytes(remote_int8.read_bytes()[:-10])
    stats = sync_only(dev, bundle)
    assert stats.sent == ["model.int8.qdq.onnx"] and stats.bytes_sent == (bundle / "model.int8.qdq.onnx").stat().st_size
    assert digest(Path(sec["remote_bundle"]))["model.int8.qdq.onnx"] == digest(bundle)["model.int8.qdq.onnx"]


def sync_only(dev: Device, bundle: Path):
    """Send the bundle to ``dev`` without running the benchmark (returns TransferStats)."""
    from edgetransfer.remote.bench import _workdir
    from edgetransfer.remote.ssh import connect
    from edgetransfer.remote.sync import plan_bundle, sync

    plan = plan_bundle(bundle)

    async def go():
        conn = await connect(dev)
        async with conn:
            async with conn.start_sftp_client() as sftp:
                wd = await _workdir(sftp, dev)
                remote_dir = f"{wd}/bundles/{plan.key}"
                return await sync(conn, sftp, dev, plan.items_for(remote_dir), remote_dir)

    return asyncio.run(go())


def test_two_devices_in_parallel_and_one_unreachable(env, bundle, tmp_path):
    from edgetransfer.remote.bench import benchmark_on_devices

    a, b = env["boards"]
    devs = [device(env, "board-a", a.port, tmp_path / "ra"), device(env, "board-b", b.port, tmp_path / "rb"),
            device(env, "board-off", free_port(), tmp_path / "rc")]  # nothing listens there
    before = bundle_files(bundle)
    comb = benchmark_on_devices(bundle, devs, settings=SETTINGS, report_dir=tmp_path / "rep")
    secs = {s["device"]: s for s in comb["devices"]}
    assert [s["device"] for s in comb["devices"]] == ["board-a", "board-b", "board-off"]
    assert secs["board-a"]["status"] == secs["board-b"]["status"] == "ok"
    assert secs["board-off"]["status"] == "failed" and secs["board-off"]["stage"] == "connect"
    assert "connection refused" in secs["board-off"]["error"] and "sshd running" in secs["board-off"]["error"]
    # both boards ran at the same time (a sequential implementation would not overlap)
    sa, sb = secs["board-a"], secs["board-b"]
    assert sa["started_at"] < sb["finished_at"] and sb["started_at"] < sa["finished_at"]
    # one combined report: every device's rows in one table, the same accuracy on both boards
    md = (tmp_path / "rep" / "report.md").read_text()
    for n in ("board-a", "board-b"):
        assert f"| {n} | model.int8.qdq.onnx | int8 | onnxruntime | ok |" in md
    assert "| board-off | — | — | — | failed (connect): " in md
    acc = lambda s: [r["accuracy"] for r in s["report"]["results"] if r["status"] == "ok"]  # noqa: E731
    has_openvino = importlib.util.find_spec("openvino") is not None
    assert acc(sa) == acc(sb) and len(acc(sa)) == 2 + 2 * has_openvino
    assert bundle_files(bundle) == before


def test_unknown_and_changed_host_keys_are_refused(env, bundle, tmp_path):
    from typer.testing import CliRunner

    from edgetransfer.cli import app
    from edgetransfer.remote.bench import benchmark_on_devices, check_device

    a = env["boards"][0]
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    dev = device(env, "board-a", a.port, tmp_path / "r", known_hosts=str(kh))
    with pytest.raises(HostKeyError) as ei:
        check_device(dev)
    msg = str(ei.value)
    assert "is not in" in msg and "refusing to connect" in msg and "edgetransfer devices trust board-a" in msg
    assert f"ssh-keyscan -p {a.port} 127.0.0.1 >> {kh}" in msg
    comb = benchmark_on_devices(bundle, [dev], settings=SETTINGS, write=False)
    assert comb["devices"][0]["status"] == "failed" and comb["devices"][0]["error_type"] == "HostKeyError"
    assert not (tmp_path / "r").exists()  # nothing was sent
    # a different key recorded for this host:port: refused as a possible interception
    other = keygen(tmp_path / "other_host_key")
    kh.write_text(f"[127.0.0.1]:{a.port} {public_key(other)}\n")
    with pytest.raises(HostKeyError, match="DIFFERS.*ssh-keygen -R"):
        check_device(dev)
    # deliberate acceptance: `devices trust` shows the fingerprint and records the key only when it matches
    kh.write_text("")
    inv = Inventory(tmp_path / "devices.yaml", {"board-a": dev})
    inv.save()
    r = CliRunner().invoke(app, ["devices", "trust", "board-a", "--inventory", str(inv.path), "--fingerprint", "SHA256:not-it"])
    assert isinstance(r.exception, HostKeyError) and "nothing was recorded" in str(r.exception) and kh.read_text() == ""
    import subprocess

    fp = subprocess.run(["ssh-keygen", "-lf", str(a.host_key) + ".pub"], capture_output=True, text=True, check=True).stdout.split()[1]
    assert fp.startswith("SHA256:")
    r = CliRunner().invoke(app, ["devices", "trust", "board-a", "--inventory", str(inv.path), "--fingerprint", fp])
    assert r.exit_code == 0, r.output
    assert kh.read_text() == a.known_hosts_line()
    res = check_device(dev)  # now trusted
    assert res["remote"]["edgetransfer"] and res["state"]["arch"] == platform.machine()


def test_refused_and_killed_connections(env, bundle, tmp_path):
    from edgetransfer.remote.bench import benchmark_on_devices, check_device
    from edgetransfer.remote.sync import part_name

    a = env["boards"][0]
    before = digest(bundle)
    # refused: nothing listens on the port
    port = free_port()
    with (env["known_hosts"]).open() as fh:
        kh_text = fh.read()
    kh = tmp_path / "known_hosts"
    dead = device(env, "board-off", port, tmp_path / "r0", known_hosts=str(kh))
    kh.write_text(kh_text)
    with pytest.raises(RemoteConnectionError, match=f"board-off \\(127.0.0.1:{port}\\): connection refused"):
        check_device(dead)
    # killed mid-transfer: a proxy breaks the link after 1.2 MB of the upload
    proxy = CutProxy(a.port, cut_after=1_200_000)
    try:
        kh.write_text(kh_text + a.known_hosts_line(proxy.port))
        cut = device(env, "board-a", proxy.port, tmp_path / "remote", known_hosts=str(kh))
        comb = benchmark_on_devices(bundle, [cut], settings=SETTINGS, report_dir=tmp_path / "rep")
    finally:
        proxy.close()
    sec = comb["devices"][0]
    assert proxy.cut.is_set()
    assert sec["status"] == "failed" and sec["stage"] == "transfer" and sec["error_type"] == "TransferError"
    assert "broke while sending model.pt" in sec["error"] and "re-run the same command to resume" in sec["error"]
    assert "Nothing on this workstation was changed" in sec["error"]
    assert digest(bundle) == before  # byte-identical, and nothing new in it (the report went to --report-dir)
    remote_dir = Path(sec["remote_bundle"])
    part = remote_dir / part_name("model.pt", json.loads((bundle / "model.pt.json").read_text())["sha256"])
    size = (bundle / "model.pt").stat().st_size
    partial = part.stat().st_size
    assert 0 < partial < size and not (remote_dir / "model.pt").exists()
    # re-running (the link is back) resumes: the partial file continues, nothing is sent twice
    ok = device(env, "board-a", a.port, tmp_path / "remote")
    stats = sync_only(ok, bundle)
    assert stats.files_resumed == 1 and stats.bytes_resumed == partial
    assert stats.bytes_sent == stats.bytes_total - partial - stats.bytes_unchanged
    assert digest(remote_dir)["model.pt"] == before["model.pt"] and not part.exists()
    assert digest(bundle) == before


def test_incompatible_remote_version_says_what_to_install(env, tmp_path):
    from edgetransfer.remote.bench import check_device

    a = env["boards"][0]
    fake = tmp_path / "old" / "edgetransfer"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.0.3'\n")
    dev = device(env, "board-a", a.port, tmp_path / "r", env={"PYTHONPATH": f"{env['blocker']}:{fake.parent}"})
    res = check_device(dev)
    assert res["remote"]["edgetransfer"] == "0.0.3"
    assert "incompatible" in res["version_error"] and f"{sys.executable} -m pip install 'edgetransfer[device]==0.1.0'" in res["version_error"]


def test_data_folder_mode_and_devices_check_cli(env, bundle, tmp_path):
    """--data DIR with --device: the ImageFolder is sent and passed on; `devices check` prints the board."""
    from typer.testing import CliRunner

    from edgetransfer.cli import app
    from edgetransfer.remote.bench import benchmark_on_devices

    a = env["boards"][1]
    dev = device(env, "board-b", a.port, tmp_path / "remote")
    data = bundle.parent / "data"  # all 24 images, 3 classes
    settings = BenchSettings(batch_sizes=(1,), warmup=1, min_iterations=3, min_seconds=0.0, max_samples=9)
    local = benchmark_bundle(bundle, load_target("x86-cpu"), data=data, settings=settings, write=False)
    comb = benchmark_on_devices(bundle, [dev], data=data, settings=settings, report_dir=tmp_path / "rep")
    sec = comb["devices"][0]
    assert sec["status"] == "ok", sec["error"]
    assert sec["transfer"]["files_sent"] == 6 + 24 + 1
    assert sec["report"]["dataset"]["num_images"] == local["dataset"]["num_images"] == 9
    lrows = {r["name"]: r for r in local["results"]}
    for r in sec["report"]["results"]:
        if r["runtime"] == "onnxruntime":
            assert r["accuracy"] == lrows[r["name"]]["accuracy"]
    inv = Inventory(tmp_path / "devices.yaml", {"board-b": dev})
    inv.save()
    r = CliRunner().invoke(app, ["devices", "check", "board-b", "--inventory", str(inv.path), "--record", str(tmp_path / "rec")])
    assert r.exit_code == 0, r.output
    for text in ("architecture", platform.machine(), "edgetransfer", f"{__version__} (same; this workstation has {__version__})", "edgetransfer[device]", "installed",
                 "onnxruntime", "free disk"):
        assert text in r.output, r.output
    assert (tmp_path / "rec" / "_commands" / "uname+-m.txt").read_text().strip() == platform.machine()
