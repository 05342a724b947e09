"""Usable CPUs = min(affinity mask, cgroup quota), and thread counts that follow them
(``taskset -c 0 edgetransfer benchmark`` runs one thread per runtime and says so)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from edgetransfer.host import affinity_cpus, cgroup_cpu_quota, usable_cpus


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == min(affinity_cpus(), 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == affinity_cpus()
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert usable_cpus(tmp_path) == 1


def test_cgroup_v1_quota(tmp_path):
    d = tmp_path / "cpu"
    d.mkdir()
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (d / "cpu.cfs_quota_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.0 and usable_cpus(tmp_path) == 1
    assert cgroup_cpu_quota(tmp_path / "absent") is None


needs_taskset = pytest.mark.skipif(shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"),
                                   reason="needs taskset (util-linux) and sched_getaffinity")


@needs_taskset
def test_taskset_one_cpu_benchmark_runs_one_thread_per_runtime(bundle_copy):
    env = {**os.environ, "EDGETRANSFER_QUIET": "1"}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "edgetransfer", "benchmark", str(bundle_copy), "--json",
                          "--bench-batch", "1", "--warmup", "1", "--iterations", "3", "--min-seconds", "0", "--e2e-images", "2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    e = report["environment"]
    assert e["usable_cpus"] == 1 and e["affinity_cpus"] == 1 and e["threads"] == 1
    rows = [r for r in report["results"] if r["status"] == "ok"]
    assert {r["runtime"] for r in rows} >= {"torch", "onnxruntime"}
    for r in rows:
        assert r["threads_requested"] == 1 and r["threads"] == 1, (r["name"], r["runtime"], r["threads"])
    ort = [r for r in rows if r["runtime"] == "onnxruntime"]
    assert all(r["intra_op_spinning"] == "on (onnxruntime default)" for r in ort)  # compute-only figures: ORT's default
    assert all(r["latency_e2e"]["intra_op_spinning"] == "off" for r in ort)  # end to end: the decoder keeps its core


def test_ort_spinning_can_be_turned_off_and_is_reported(tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np

    from edgetransfer.artifacts import read_manifest
    from edgetransfer.runtime.ort import OnnxRuntimeRunner

    from .fixtures.colour import write_colour_onnx

    path = write_colour_onnx(tmp_path)
    x = np.zeros((1, 3, 16, 16), np.float32)
    with OnnxRuntimeRunner(path, read_manifest(path), threads=1, options={"spinning": False}) as off, \
            OnnxRuntimeRunner(path, read_manifest(path), threads=1) as on:
        np.testing.assert_array_equal(off(x), on(x))
        assert off.runtime_info()["intra_op_spinning"] == "off"
        assert on.runtime_info()["intra_op_spinning"] == "on (onnxruntime default)"
