"""The public Python API (edgetransfer.Bundle): train -> export -> quantize -> build -> benchmark on
a tiny random-weight model, returning typed results, on the same code path as the CLI."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

import edgetransfer as et  # noqa: E402
from edgetransfer.errors import ConfigError  # noqa: E402

from .conftest import make_image_folder  # noqa: E402
from .fixtures.cli import cli  # noqa: E402

TINY = dict(model="timm:resnet10t", pretrained=False, input_size=32, epochs=3, batch_size=4, lr=1e-2, seed=3)


def test_train_export_quantize_build_benchmark_from_python(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=10, size=40)
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) \['epoch'\]"):
        et.Bundle.train(data, tmp_path / "x", epoch=3)
    b = et.Bundle.train(data, tmp_path / "b", target="x86-cpu", **{k: v for k, v in TINY.items() if k != "model"},
                        model=TINY["model"])
    assert isinstance(b, et.Bundle) and b.last_train.checkpoint == b.checkpoint and 0.0 <= b.last_train.val_top1 <= 1.0
    assert b.info["target"] == "x86-cpu"

    onnx = b.export()
    assert isinstance(onnx, et.Artifact) and onnx.path == b.onnx_fp32 and onnx.format == "onnx"
    assert onnx.parity["max_abs"] <= 1e-3 and onnx.parity["agreement"] == 1.0  # the export's parity contract

    recipe = tmp_path / "small.yaml"
    recipe.write_text("num_samples: 8\nseed: 1\nmethod: minmax\n")
    int8 = b.quantize(calibration=str(recipe), max_accuracy_drop=1.0, max_steps=0)
    assert int8.precision == "int8" and int8.manifest.details["num_calibration_images"] == 8

    ort = b.build(target="android-arm64", formats=["ort"], calibration=str(recipe))  # the one format needing no extra
    assert sorted(a.path.name for a in ort) == ["model.int8.qdq.ort", "model.ort"] and all(a.format == "ort" for a in ort)
    assert b.operator_config.is_file()
    assert b.info["target"] == "android-arm64"  # the build recorded its target

    report = b.benchmark(target="x86-cpu", batch_sizes=[1], warmup=0, iterations=3, min_seconds=0.0, e2e=False)
    assert isinstance(report, et.Report) and report.path == b.path("report.json") and report.path.is_file()
    ok = {(r.name, r.runtime) for r in report.rows if r.status == "ok"}
    assert {("model.pt", "torch"), ("model.onnx", "onnxruntime"), ("model.int8.qdq.onnx", "onnxruntime")} <= ok
    fp32 = report.row("model.onnx", "onnxruntime")
    assert fp32.batch_size == 1 and fp32.p50_ms > 0 and fp32.agreement_with_fp32 == 1.0
    assert report.row("model.pt", "torch").top1 == fp32.top1  # PyTorch and its ONNX export agree
    assert report.best().status == "ok"

    # the CLI runs the same stage on the same bundle: the same rows
    capsys.readouterr()
    assert cli(["benchmark", b.dir, "--target", "x86-cpu", "--json", "--bench-batch", "1", "--warmup", "0",
                "--iterations", "3", "--min-seconds", "0", "--no-e2e"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert {(r["name"], r["runtime"], r["status"]) for r in rows} == {(r.name, r.runtime, r.status) for r in report.rows}
    assert {r["name"]: r["accuracy"]["top1"] for r in rows if r["status"] == "ok"} == \
           {r.name: r.top1 for r in report.rows if r.status == "ok"}
