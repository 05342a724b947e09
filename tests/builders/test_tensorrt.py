"""Engine builds, everything that does not need TensorRT: refusal of what a target cannot do
(before any work), the trtexec command lines per TensorRT version, build_engine.sh run against a
fake trtexec, engine reuse keyed by the parent ONNX, and the report rows on a host without GPU."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ..fixtures.bundles import bundles_with_presets, make_bundle, tiny_onnx
from edgetransfer.artifacts import read_manifest, write_manifest
from edgetransfer.bundle import Bundle
from edgetransfer.builders.tensorrt import (BUILD_SCRIPT, engine_is_current, plan_engine_build, write_build_script)
from edgetransfer.cli import app
from edgetransfer.errors import ArtifactError, ConfigError, EdgeTransferError, EngineMismatchError, TargetError
from edgetransfer.runtime.tensorrt import DeviceFacts, check_engine_compatible
from edgetransfer.targets import load_target

pytest.importorskip("onnxruntime.quantization")
BASH = shutil.which("bash")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return bundles_with_presets(tmp_path_factory.mktemp("trt"))


@pytest.fixture
def trt_bundle(bundles, tmp_path):
    """A private copy of the bundle quantized with the TensorRT preset."""
    return Path(shutil.copytree(bundles["tensorrt"], tmp_path / "b"))


def _files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


# -- refusals before any work -------------------------------------------------------------------

def test_int8_on_jetson_nano_is_refused_before_any_work(trt_bundle):
    before = _files(trt_bundle)
    with pytest.raises(TargetError, match="does not support int8"):
        plan_engine_build(trt_bundle, load_target("jetson-nano"), "int8")
    r = CliRunner().invoke(app, ["build", str(trt_bundle), "--target", "jetson-nano", "--precision", "int8"])
    assert isinstance(r.exception, TargetError) and "supported: fp32, fp16" in str(r.exception)
    assert _files(trt_bundle) == before  # no script, no cache, no engine


def test_best_on_jetson_nano_resolves_to_fp16(tmp_path):
    p = plan_engine_build(make_bundle(tmp_path, opset=13), load_target("jetson-nano"), "best")
    assert (p.precision, p.onnx, p.builder_flags) == ("fp16", "model.onnx", ("fp16",))


def test_x86_quantized_int8_onnx_is_not_used_silently(bundles, tmp_path):
    b = Path(shutil.copytree(bundles["x86"], tmp_path / "x86"))
    for precision in ("int8", "best"):
        with pytest.raises(TargetError) as e:
            plan_engine_build(b, load_target("jetson-orin-nano"), precision)
        msg = str(e.value)
        assert "uint8" in msg and "zero point" in msg and f"edgetransfer quantize {b} --target jetson-orin-nano" in msg
        assert "x86-cpu" in msg  # says which preset made it


def test_requantize_makes_a_tensorrt_ready_int8_onnx(bundles, tmp_path):
    b = Path(shutil.copytree(bundles["x86"], tmp_path / "x86"))
    recipe = tmp_path / "eight.yaml"
    recipe.write_text("num_samples: 8\nbatch_size: 4\n")
    r = CliRunner().invoke(app, ["build", str(b), "--target", "jetson-orin-nano", "--precision", "int8", "--script-only", "--requantize",
                                 "--calibration", str(recipe), "-q"])
    assert r.exit_code == 0, r.output
    p = plan_engine_build(b, load_target("jetson-orin-nano"), "int8")
    assert read_manifest(b / "model.int8.qdq.onnx").target == "jetson-orin-nano" and p.onnx == "model.int8.qdq.onnx"


@pytest.mark.parametrize("target,kwargs,match", [
    ("jetson-orin-nano", {"dla_core": 0}, "has no DLA cores"),
    ("jetson-agx-orin", {"dla_core": 2}, "DLA cores 0..1"),
    ("jetson-agx-orin", {"dla_core": 0, "precision": "fp32"}, "DLA runs fp16 or int8"),
    ("x86-cpu", {}, "has no TensorRT runtime"),
])
def test_target_refusals(trt_bundle, target, kwargs, match):
    precision = kwargs.pop("precision", "int8")
    with pytest.raises(TargetError, match=match):
        plan_engine_build(trt_bundle, load_target(target), precision, **kwargs)


def test_bad_precision_and_opset_ceiling(trt_bundle):
    with pytest.raises(ConfigError, match="not one of"):
        plan_engine_build(trt_bundle, load_target("jetson-orin-nano"), "int4")
    with pytest.raises(TargetError, match="opset 17, above target jetson-nano's ceiling 13"):
        plan_engine_build(trt_bundle, load_target("jetson-nano"), "fp16")


def test_modified_onnx_and_static_batch_are_refused(tmp_path):
    b = make_bundle(tmp_path, opset=13)
    (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        plan_engine_build(b, load_target("jetson-nano"), "fp16")
    tiny_onnx(b / "model.onnx", opset=13, batch=1)
    m = read_manifest(b / "model.onnx", verify=False)
    m.inputs[0]["shape"][0] = 1
    write_manifest(b / "model.onnx", m)
    with pytest.raises(ConfigError, match="batch axis .* is fixed to 1"):
        plan_engine_build(b, load_target("jetson-nano"), "fp16")


# -- trtexec command lines ----------------------------------------------------------------------

def test_trtexec_command_per_tensorrt_version(trt_bundle):
    sha = read_manifest(trt_bundle / "model.int8.qdq.onnx").sha256
    p = plan_engine_build(trt_bundle, load_target("jetson-orin-nano"), "int8")
    assert p.trtexec_args() == [
        "trtexec", "--onnx=model.int8.qdq.onnx", "--saveEngine=model.jetson-orin-nano.int8.engine",
        "--minShapes=input:1x3x16x16", "--optShapes=input:1x3x16x16", "--maxShapes=input:16x3x16x16",
        "--memPoolSize=workspace:1024", "--skipInference", f"--timingCacheFile=.trt-cache/timing-trt10.3-sm87-{sha[:16]}.cache", "--int8"]
    # TensorRT 8.5 (Xavier NX): --buildOnly; best = int8 Q/DQ with fp16 fallback; DLA with GPU fallback
    x = plan_engine_build(trt_bundle, load_target("jetson-xavier-nx"), "best", dla_core=1).trtexec_args()
    assert "--buildOnly" in x and "--memPoolSize=workspace:1024" in x and x[-4:] == ["--int8", "--fp16", "--useDLACore=1", "--allowGPUFallback"]
    # TensorRT 8.2 (Nano) predates --memPoolSize
    n = plan_engine_build(make_bundle(trt_bundle.parent / "nano", opset=13), load_target("jetson-nano"), "fp16").trtexec_args()
    assert "--workspace=512" in n and "--buildOnly" in n and n[-1] == "--fp16" and "--maxShapes=input:8x3x16x16" in n


def test_tensorrt_11_is_strongly_typed(trt_bundle):
    gpu = load_target("x86-nvidia-gpu")
    p = plan_engine_build(trt_bundle, gpu, "int8", tensorrt_version="11.0.0")
    args = p.trtexec_args()
    assert p.strongly_typed and p.builder_flags == () and "--stronglyTyped" in args
    assert not {"--int8", "--fp16", "--best"} & set(args)
    assert plan_engine_build(trt_bundle, gpu, "int8", tensorrt_version="10.8.0").builder_flags == ("int8",)
    with pytest.raises(ArtifactError, match="strongly typed .* fp16 ONNX"):
        plan_engine_build(trt_bundle, gpu, "fp16", tensorrt_version="11.0.0")


# -- build_engine.sh ----------------------------------------------------------------------------

FAKE_TRTEXEC = r'''#!/usr/bin/env bash
# stands in for trtexec: prints the lines real trtexec prints, writes a fake engine
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v${FAKE_TAG}] # trtexec $*" 
echo "[I] === Device Information ==="
echo "[I] Selected Device: ${FAKE_DEVICE}"
echo "[I] Compute Capability: ${FAKE_CC}"
echo "[I] TensorRT version: ${FAKE_TRT}"
printf '%s\n' "$@" > "$FAKE_ARGS"
for a in "$@"; do case "$a" in --saveEngine=*) printf 'fake-engine %s' "$FAKE_TRT" > "${a#--saveEngine=}";; esac; done
'''


@pytest.fixture
def fake_trtexec(tmp_path):
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(FAKE_TRTEXEC)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)

    def run(bundle, precision, trt="10.3.0", cc="8.7", device="Orin"):
        env = {**os.environ, "TRTEXEC": str(exe), "FAKE_TRT": trt, "FAKE_CC": cc, "FAKE_DEVICE": device,
               "FAKE_TAG": trt.replace(".", ""), "FAKE_ARGS": str(tmp_path / "args.txt")}
        return subprocess.run([BASH, str(bundle / BUILD_SCRIPT), precision], env=env, capture_output=True, text=True, timeout=60)
    run.args_file = tmp_path / "args.txt"
    return run


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_build_script_builds_with_trtexec_and_writes_the_manifest(trt_bundle, fake_trtexec):
    target = load_target("jetson-orin-nano")
    script = write_build_script(trt_bundle, target)
    assert os.access(script, os.X_OK)
    subprocess.run([BASH, "-n", str(script)], check=True)
    plan = plan_engine_build(trt_bundle, target, "int8")
    text = script.read_text()
    assert "--onnx=model.int8.qdq.onnx --saveEngine=model.jetson-orin-nano.int8.engine" in text
    r = fake_trtexec(trt_bundle, "int8")
    assert r.returncode == 0, r.stderr
    # the command it ran is the plan's trtexec command (the cache path with this GPU's tag)
    assert fake_trtexec.args_file.read_text().split() == plan.trtexec_args()[1:]
    m = read_manifest(trt_bundle / plan.engine)  # sha256 verified
    t = m.details["tensorrt"]
    assert (m.format, m.precision, m.target, m.parent_sha256) == ("engine", "int8", "jetson-orin-nano", plan.onnx_sha256)
    assert (t["version"], t["compute_capability"], t["device_name"]) == ("10.3.0", "8.7", "Orin")
    assert t["profile"] == plan.profile and t["builder_flags"] == ["int8"] and m.class_names == ["a", "b"]
    assert t["timing_cache"] == plan.timing_cache and "sm87" in t["timing_cache"]
    # the script never edits bundle.json: the bundle finds the engine through its manifest
    assert plan.engine not in [a["file"] for a in json.loads((trt_bundle / "bundle.json").read_text())["artifacts"]]
    assert plan.engine in [p.name for p, _ in Bundle(trt_bundle).artifacts()]
    # this engine passes the device check on the same TensorRT release and GPU, and only there
    check_engine_compatible(m, DeviceFacts("Orin", "8.7", "10.3.0.30"))
    with pytest.raises(EngineMismatchError):
        check_engine_compatible(m, DeviceFacts("Xavier", "7.2", "8.5.2.2"))
    # reuse: current for the same ONNX; stale once the ONNX is re-exported
    device = DeviceFacts("Orin", "8.7", "10.3.0.30")
    assert engine_is_current(trt_bundle, plan_engine_build(trt_bundle, target, "int8", tensorrt_version="10.3.0.30"), device)
    assert not engine_is_current(trt_bundle, plan_engine_build(trt_bundle, target, "int8", tensorrt_version="10.3.0.30"),
                                 DeviceFacts("Orin", "8.7", "10.4.0.1"))


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_build_script_refuses_wrong_device_changed_onnx_and_impossible_precisions(trt_bundle, fake_trtexec):
    write_build_script(trt_bundle, load_target("jetson-orin-nano"))
    r = fake_trtexec(trt_bundle, "fp16", trt="8.5.2", cc="7.2", device="Xavier")
    assert r.returncode == 3 and "needs TensorRT 10.3" in r.stderr
    assert not (trt_bundle / "model.jetson-orin-nano.fp16.engine").exists()  # no engine for the wrong device
    (trt_bundle / "model.onnx").write_bytes((trt_bundle / "model.onnx").read_bytes() + b"\0")
    r = fake_trtexec(trt_bundle, "fp16")
    assert r.returncode == 2 and "changed since this script was written" in r.stderr
    nano = make_bundle(trt_bundle.parent / "nano", opset=13)
    write_build_script(nano, load_target("jetson-nano"))
    r = fake_trtexec(nano, "int8", trt="8.2.1", cc="5.3", device="NVIDIA Tegra X1")
    assert r.returncode == 2 and "cannot build int8" in r.stderr and "does not support int8" in r.stderr
    r = fake_trtexec(nano, "best", trt="8.2.1", cc="5.3", device="NVIDIA Tegra X1")
    assert r.returncode == 0, r.stderr
    assert read_manifest(nano / "model.jetson-nano.best.engine").precision == "fp16"


def test_rebuilt_onnx_gets_a_new_timing_cache_key(trt_bundle):
    target = load_target("jetson-orin-nano")
    before = plan_engine_build(trt_bundle, target, "fp16")
    tiny_onnx(trt_bundle / "model.onnx", opset=16)  # "re-export"
    m = read_manifest(trt_bundle / "model.onnx", verify=False)
    write_manifest(trt_bundle / "model.onnx", m)
    after = plan_engine_build(trt_bundle, target, "fp16")
    assert before.onnx_sha256 != after.onnx_sha256 and before.timing_cache != after.timing_cache
    assert "trt10.3-sm87" in after.timing_cache


def test_cli_build_on_a_host_without_gpu(trt_bundle):
    r = CliRunner().invoke(app, ["build", str(trt_bundle), "--target", "jetson-orin-nano", "--precision", "int8", "-q"])
    assert isinstance(r.exception, EdgeTransferError) and "not built on this host" in str(r.exception)
    assert (trt_bundle / BUILD_SCRIPT).is_file()  # the recipe is left for the device
    assert not list(trt_bundle.glob("*.engine"))
    r = CliRunner().invoke(app, ["build", str(trt_bundle), "--target", "jetson-orin-nano", "--script-only"], terminal_width=400)
    assert r.exit_code == 0 and "--saveEngine=model.jetson-orin-nano.best.engine" in r.output.replace("\n", "")
