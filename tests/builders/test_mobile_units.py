"""Mobile targets, registries and the pieces of the mobile builds that need no backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetransfer.artifacts import Manifest, atomic_dir
from edgetransfer.bench.benchmark import measure_artifact
from edgetransfer.builders import get_builder, registered_builders
from edgetransfer.builders.coreml import folded_preprocessing
from edgetransfer.builders.ort_mobile import operator_config_ops, ort_target_platform
from edgetransfer.errors import ConfigError, MissingExtraError, TargetError
from edgetransfer.runtime import get_runner_class, registered
from edgetransfer.runtime.litert import dequantize_tensor, quantize_tensor
from edgetransfer.targets import _parse, load_target
from edgetransfer.types import Format, Runtime, Status


@pytest.mark.parametrize("name,formats,runtimes", [
    ("android-arm64", ("tflite", "pte", "ort"), ("litert", "executorch", "onnxruntime")),
    ("ios-arm64", ("mlpackage", "pte"), ("coreml", "executorch")),
    ("rpi5-arm64", ("onnx", "tflite"), ("onnxruntime", "litert")),
])
def test_mobile_targets_load_with_their_formats(name, formats, runtimes):
    t = load_target(name)
    assert t.formats == formats
    assert tuple(map(str, t.runtimes)) == runtimes
    assert t.arch == "aarch64"
    # every format of the target has a converter (onnx: export/quantize) and a runner for a runtime it lists
    for f in t.formats:
        if f != "onnx":
            assert get_builder(f).format == Format(f)
        assert any((Format(f), r) in registered() for r in t.runtimes), f


def test_host_is_target_reads_arch_and_platform():
    android, rpi = load_target("android-arm64"), load_target("rpi5-arm64")
    assert not android.host_is_target("x86_64", "linux")
    assert not android.host_is_target("aarch64", "linux")  # an arm64 Linux box is not a phone
    assert android.host_is_target("arm64", "android")
    assert rpi.host_is_target("aarch64", "linux") and not rpi.host_is_target("x86_64", "linux")
    assert load_target("x86-cpu").host_is_target("AMD64", "linux")


def test_target_rejects_unknown_format_and_platform():
    base = {"description": "d", "arch": "aarch64", "runtimes": ["litert"], "precisions": ["fp32"]}
    with pytest.raises(TargetError, match="unknown formats \\['tfl'\\]"):
        _parse("t", {**base, "formats": ["tfl"]}, "t.yaml")
    with pytest.raises(TargetError, match="platform must be one of"):
        _parse("t", {**base, "platform": "symbian"}, "t.yaml")


def test_builder_and_runner_registries():
    assert set(registered_builders()) == {Format.TFLITE, Format.PTE, Format.MLPACKAGE, Format.ORT}
    with pytest.raises(ConfigError, match="known formats"):
        get_builder("engine")
    assert get_runner_class("tflite", "litert").__name__ == "LiteRtRunner"
    assert get_runner_class("pte", "executorch").__name__ == "ExecuTorchRunner"
    assert get_runner_class("ort", "onnxruntime").__name__ == "OrtFormatRunner"
    assert get_runner_class("mlpackage", "coreml").__name__ == "CoreMlRunner"


def test_importing_runtime_and_build_loads_no_backend():
    code = ("import sys, edgetransfer.runtime, edgetransfer.builders, edgetransfer.pipeline;"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'executorch', 'litert_torch', 'ai_edge_litert', "
            "'ai_edge_quantizer', 'coremltools', 'tensorflow', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_int8_io_quantization_round_trip():
    x = np.linspace(-3.0, 3.0, 601, dtype=np.float32)
    scale, zp = 0.0235, -9
    q = quantize_tensor(x, scale, zp, np.dtype(np.int8))
    assert q.dtype == np.int8 and q.min() == -128 and q.max() == 119  # round(-127.7) - 9 clips at -128; round(127.7) - 9 = 119
    back = dequantize_tensor(q, scale, zp)
    inside = (x >= (-128 - zp) * scale) & (x <= (127 - zp) * scale)
    assert np.abs(back[inside] - x[inside]).max() <= scale / 2 + 1e-6


@pytest.mark.parametrize("mean,std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_coreml_folded_preprocessing_equals_the_normalisation(mean, std):
    pix = np.random.default_rng(0).integers(0, 256, size=(3, 5, 5)).astype(np.float64)
    expected = (pix / 255.0 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    scale, bias, mul, add = folded_preprocessing(mean, std)
    got = pix * scale + np.reshape(bias, (3, 1, 1))
    if mul is not None:
        got = got * mul.reshape(3, 1, 1) + add.reshape(3, 1, 1)
    else:
        assert len(set(std)) == 1  # a single Core ML scale holds the whole normalisation only for equal stds
    assert np.abs(got - expected).max() < 1e-5


def test_ort_platform_and_operator_config_parsing(tmp_path):
    assert ort_target_platform("aarch64") == "arm" and ort_target_platform("x86_64") == "amd64"
    cfg = tmp_path / "c.config"
    cfg.write_text("# Generated\nai.onnx;18;Conv,Gemm,Relu\ncom.microsoft;1;QLinearConv{\"inputs\": {\"0\": [\"uint8_t\"]}}\n")
    assert operator_config_ops(cfg) == {"ai.onnx;18": ["Conv", "Gemm", "Relu"], "com.microsoft;1": ["QLinearConv"]}


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "m.mlpackage"
    with atomic_dir(final) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text("2")
            raise RuntimeError("interrupted")
    assert (final / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["m.mlpackage"]  # no temporary left behind


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_row_is_not_runnable_off_macos(tmp_path):
    art = tmp_path / "model.fp16.mlpackage"
    art.mkdir()
    m = Manifest(format="mlpackage", precision="fp16", file=art.name, class_names=["a", "b"])
    x = np.zeros((2, 3, 8, 8), np.float32)
    row = measure_artifact(art, m, Runtime.COREML, x, np.zeros(2, np.int64), ["a", "b"], batch_sizes=(1,), warmup=0, iters=1,
                           min_s=0.0, threads=1)
    assert row["status"] == str(Status.NOT_RUNNABLE) == "not_runnable"
    assert row["error"].startswith("not runnable on this host") and row["latency"] == [] and row["accuracy"] is None


def test_run_fails_before_training_when_a_mobile_backend_is_missing(tmp_path, monkeypatch, tiny_folder):
    from edgetransfer import pipeline
    from edgetransfer.builders.tflite import TfliteFromTorch
    from edgetransfer.train import TrainConfig

    def missing(cls):
        raise MissingExtraError("litert_torch", "litert", "tflite conversion")

    monkeypatch.setattr(TfliteFromTorch, "require_backend", classmethod(missing))
    with pytest.raises(MissingExtraError, match=r"edgetransfer\[litert\]"):
        pipeline.run(tiny_folder, tmp_path / "out", TrainConfig(epochs=1), target="android-arm64")
    assert not (tmp_path / "out").exists()  # nothing trained


@pytest.mark.skipif(not get_builder("pte").is_available(), reason="pip install 'edgetransfer[executorch]'")
def test_pte_int8_observes_relu6_after_the_clamp():
    """conv -> BN -> ReLU6 (EfficientNet-Lite's block) is one quantized unit: the activation
    observer sits after the clamp and sees [0, 6]. ExecuTorch 1.5's quantizer alone observes the
    convolution's pre-activation output and shares that range with hardtanh: it quantized ReLU6's
    [0, 6] with a step of 0.59 on EfficientNet-Lite0 (the .pte INT8 logit error of issue 11)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from edgetransfer.builders.executorch import clamp_fusing_quantizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(inplace=True),
                                torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU6()).eval()
    x = 20 * torch.randn(4, 3, 12, 12)  # pre-activation values far outside [0, 6]
    q = clamp_fusing_quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(model, (x[:1],)).module(), q)
        for i in range(len(x)):
            prepared(x[i : i + 1])  # batch 1, as exported
    assert q.fused_clamps == 2
    nodes = list(prepared.graph.nodes)
    observed = {}
    for n in nodes:
        if n.op == "call_module" and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "call_function":
            obs = getattr(prepared, n.target)
            if obs.min_val.numel() == 1:
                observed[str(n.args[0].target)] = observed.get(str(n.args[0].target), []) + [(obs.min_val.item(), obs.max_val.item())]
    assert "aten.conv2d.default" not in observed, observed  # no observer between a conv and its clamp
    assert observed["aten.hardtanh_.default"] == [(0.0, 6.0)] and observed["aten.hardtanh.default"][0][0] == 0.0, observed


def _fake_builder(ref: np.ndarray, cand: np.ndarray, y: np.ndarray, budget: float | None):
    """A Builder whose fp32 reference and candidate logits are given (no checkpoint, no backend)."""
    from edgetransfer.builders.base import Builder, BuildInputs

    class Fake(Builder):
        format = Format.PTE

        def convert(self, precision, out):  # pragma: no cover - parity only
            raise AssertionError

        def candidate_logits(self, path, x):
            return cand

    b = object.__new__(Fake)
    b.source, b.class_names, b._reference = Path("model.pt"), ["a", "b"], ref
    b.inputs = BuildInputs(parity_x=np.zeros((len(y), 3, 4, 4), np.float32), parity_y=y, max_top1_drop=budget)
    return b


def test_mobile_int8_over_the_budget_is_written_budget_exceeded_and_exits_3():
    """A mobile INT8 file is held to the target's accuracy budget on val like the ONNX INT8 model:
    status budget_exceeded in its manifest (the benchmark row takes it), BudgetExceededError (exit 3)."""
    from edgetransfer.errors import BudgetExceededError, GateFailedError
    from edgetransfer.pipeline import build_failure
    from edgetransfer.types import Precision

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    ref = np.stack([np.where(y == 0, 2.0, -2.0), np.where(y == 0, -2.0, 2.0)], 1).astype(np.float32)  # fp32 right on all
    ref += rng.normal(0, 0.1, ref.shape).astype(np.float32)
    same = _fake_builder(ref, ref + 0.01, y, 0.01).parity(Path("m"), Precision.INT8)
    assert same["budget"]["held"] and same.get("status") is None and same["budget"]["max_top1_drop"] == 0.01
    assert same["budget"]["judgement"]["holds"] and same["budget"]["top1_drop"] == 0.0
    bad = ref.copy()
    bad[:20] = bad[:20, ::-1]  # 20 of 400 decisively right images now wrong: 5 pt > 1 pt
    over = _fake_builder(ref, bad, y, 0.01).parity(Path("m"), Precision.INT8)
    assert over["status"] == "budget_exceeded" and not over["budget"]["held"]
    assert over["budget"]["top1_drop"] == pytest.approx(20 / 400)
    assert not over["gate"]["passed"]  # the flip gate fails too; budget_exceeded is the status either way
    assert _fake_builder(ref, bad, y, None).parity(Path("m"), Precision.INT8)["status"] == "gate_failed"  # no budget given
    m = Manifest(format="pte", precision="int8", file="model.int8.pte", class_names=["a", "b"], details=over)
    assert isinstance(build_failure([m]), BudgetExceededError) and build_failure([m]).exit_code == 3
    gated = Manifest(format="pte", precision="int8", file="model.int8.pte", class_names=["a", "b"],
                     details={"status": "gate_failed", "gate_failed_reason": "r"})
    assert isinstance(build_failure([gated]), GateFailedError) and build_failure([gated]).exit_code == 3
    assert build_failure([Manifest(format="pte", precision="int8", file="f", class_names=["a", "b"], details=same)]) is None


def test_mobile_ladder_chooses_a_candidate_that_holds_then_the_lowest_kl():
    """``Builder.rung`` judges each mobile INT8 candidate like an ONNX ladder rung; ``choose`` takes
    one that holds the budget, then the lowest mean KL vs fp32 (never a closer one that does not hold)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    ref = np.stack([np.where(y == 0, 2.0, -2.0), np.where(y == 0, -2.0, 2.0)], 1).astype(np.float32)
    b = _fake_builder(ref, ref, y, 0.01)
    near = b.rung("c:near", ref + rng.normal(0, 0.02, ref.shape).astype(np.float32), 1.0)
    far = b.rung("a:far", ref + rng.normal(0, 0.3, ref.shape).astype(np.float32), 2.0, activation_observer="X")
    flipped = ref.copy()
    flipped[:20] = flipped[:20, ::-1]  # 5 pt lost: does not hold, although most logits are exact
    broken = b.rung("c:broken", flipped, 1.0)
    assert near["holds"] and far["holds"] and not broken["holds"] and far["activation_observer"] == "X"
    assert near["fidelity"]["mean_kl"] < far["fidelity"]["mean_kl"] and near["seconds"] == 1.0
    assert near["top1_drop"] == 0.0 and broken["top1_drop"] == pytest.approx(0.05)
    assert b.choose([far, broken, near]) is near and b.choose([broken, far]) is far
    closer_but_over = {**near, "holds": False, "fidelity": {**near["fidelity"], "mean_kl": 0.0}}
    assert b.choose([closer_but_over, far]) is far
    with pytest.raises(ValueError, match="no INT8 candidate"):
        b.choose([])
