"""End to end: the main job on real photos (hymenoptera), and the stage sub-commands on a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgetransfer.artifacts import read_manifest, sha256_file

from .fixtures.images import make_image_folder

# bees_bundle (the main job on hymenoptera) lives in conftest.py: test_quantize_real.py shares it.


@pytest.mark.slow
def test_main_job_on_hymenoptera_meets_the_numbers(bees_bundle):
    out, report = bees_bundle
    rows = {(r["name"], r["runtime"]): r for r in report["results"]}
    # x86-cpu lists onnxruntime, openvino, torch: each ONNX file has an OpenVINO row too (unavailable without the extra)
    assert set(rows) == {("model.pt", "torch"), ("model.onnx", "onnxruntime"), ("model.int8.qdq.onnx", "onnxruntime"),
                         ("model.onnx", "openvino"), ("model.int8.qdq.onnx", "openvino")}
    assert all(r["status"] == "ok" and r["error"] is None for k, r in rows.items() if k[1] != "openvino")
    assert all(r["status"] in ("ok", "unavailable") for k, r in rows.items() if k[1] == "openvino")
    fp32 = rows[("model.onnx", "onnxruntime")]["accuracy"]
    int8 = rows[("model.int8.qdq.onnx", "onnxruntime")]["accuracy"]
    torch_row = rows[("model.pt", "torch")]["accuracy"]
    # headline figures on test: 77 of val/'s 153 images carved (seeded, per class), never seen by a decision
    assert fp32["num_samples"] == 77 and fp32["split"] == "test"
    assert rows[("model.onnx", "onnxruntime")]["accuracy_by_split"]["val"]["num_samples"] == 76
    assert fp32["top1"] >= 0.9 and fp32["top1_interval95"][0] >= 0.8
    assert torch_row["top1"] == fp32["top1"]
    assert int8["top1"] >= fp32["top1"] - 2 / 77
    assert int8["agreement_with_fp32"] >= 0.97
    j = rows[("model.int8.qdq.onnx", "onnxruntime")]["judgement"]  # paired, on test, vs the fp32 ONNX model
    assert j["split"] == "test" and j["n"] == 77 and j["vs"] == "model.onnx [onnxruntime]"
    assert j["drop_interval95"][0] <= j["drop"] <= j["drop_interval95"][1]
    # 245 training images, the GIF among them
    bundle = json.loads((out / "bundle.json").read_text())
    train_files = [f for f, _ in bundle["dataset"]["train_files"]]
    assert len(train_files) == 245 and any(f.endswith("imageNotFound.gif") for f in train_files)
    assert bundle["dataset"]["num_skipped"] == 0
    # parity of the fp32 ONNX export
    onnx_m = read_manifest(out / "model.onnx")
    assert onnx_m.details["parity"]["max_abs"] <= 1e-3 and onnx_m.details["parity"]["agreement"] == 1.0
    assert onnx_m.parent_sha256 == read_manifest(out / "model.pt").sha256
    q = read_manifest(out / "model.int8.qdq.onnx")
    assert q.parent_sha256 == onnx_m.sha256
    assert q.details["node_counts"]["QuantizeLinear"] > 50 and q.details["node_counts"]["DequantizeLinear"] > 100
    assert q.details["num_calibration_images"] == 128
    calib = set(q.details["calibration_images"])
    assert calib <= set(train_files)  # calibration never sees validation images
    test_files = {f for f, _ in bundle["dataset"]["test_files"]}
    assert len(test_files) == 77 and not test_files & (set(train_files) | {f for f, _ in bundle["dataset"]["val_files"]})
    assert q.details["budget"]["judgement"]["n"] == 76  # the INT8 decision: on val


@pytest.mark.slow
def test_report_is_well_formed(bees_bundle):
    out, _ = bees_bundle
    r = json.loads((out / "report.json").read_text())
    assert r["schema_version"] >= 1 and r["target"] == "x86-cpu"
    assert r["environment"]["threads"] >= 1 and r["environment"]["cpu"]
    assert r["dataset"]["class_names"] == ["ants", "bees"] and r["dataset"]["num_images"] == 77
    assert r["dataset"]["splits"]["val"]["num_images"] == 76 and r["recommended"]["name"]
    for row in r["results"]:
        if row["status"] == "unavailable":
            continue
        for k in ("name", "format", "precision", "runtime", "path", "sha256", "size_mib", "status", "error", "accuracy", "latency"):
            assert k in row
        assert row["sha256"] == sha256_file(row["path"])
        assert {"top1", "agreement_with_fp32", "num_samples"} <= set(row["accuracy"])
        assert [l["batch_size"] for l in row["latency"]] == [1, 8]
        for lat in row["latency"]:
            assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
            assert lat["iterations"] >= 5 and lat["throughput_ips"] > 0
    md = (out / "report.md").read_text()
    assert "| model.int8.qdq.onnx | int8 | onnxruntime | ok |" in md


def _cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "edgetransfer", *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def test_stage_commands_compose_on_a_tiny_model(tmp_path):
    import timm

    data = make_image_folder(tmp_path / "data", classes=("red", "green"), per_class=12, size=64)
    (data / "red" / "broken.jpg").write_bytes(b"")  # reported, skipped, counted; the run goes on
    sd = tmp_path / "sd.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), sd)
    out = tmp_path / "bundle"
    _cli("train", data, "--out", out, "--model", f"file:{sd}", "--arch", "timm:mobilenetv3_small_050", "--epochs", "30",
         "--lr", "0.01", "--quiet")
    assert (out / "model.pt").is_file() and read_manifest(out / "model.pt").class_names == ["green", "red"]
    _cli("export", out, "--quiet")
    assert read_manifest(out / "model.onnx").details["parity"]["max_abs"] <= 1e-3
    # a recipe of one's own asking for more images than train has (allow_fewer defaults to false): a clear error
    strict = tmp_path / "strict.yaml"
    strict.write_text("num_samples: 128\nmethod: minmax\n")
    p = _cli("quantize", out, "--calibration", strict, "--quiet", check=False)
    assert p.returncode == 2 and "asks for 128 images" in p.stdout + p.stderr
    assert not (out / "model.int8.qdq.onnx").exists()
    recipe = tmp_path / "small.yaml"
    recipe.write_text("num_samples: 16\nseed: 1\nmethod: minmax\n")
    _cli("quantize", out, "--calibration", recipe, "--quiet")
    assert read_manifest(out / "model.int8.qdq.onnx").details["num_calibration_images"] == 16
    p = _cli("benchmark", out, "--json", "--bench-batch", "1", "--warmup", "1", "--iterations", "3", "--min-seconds", "0")
    report = json.loads(p.stdout)
    assert {r["name"] for r in report["results"]} == {"model.pt", "model.onnx", "model.int8.qdq.onnx"}
    assert all(r["status"] == "ok" for r in report["results"] if r["runtime"] != "openvino")
    assert report["dataset"]["num_images"] == 4 and report["dataset"]["split"] == "test"  # 2 per class of 12, seeded
    assert report["dataset"]["splits"]["val"]["num_images"] == 4
    assert report["dataset"]["training"]["num_skipped"] == 1
    assert report["dataset"]["training"]["skipped"][0]["path"].endswith("broken.jpg")
    fp32 = next(r for r in report["results"] if r["name"] == "model.onnx")
    assert fp32["accuracy"]["top1"] >= 0.8  # colour classes are easy even for a random backbone


def test_bad_input_fails_fast_with_exit_code_2(tmp_path):
    p = _cli("run", "--data", tmp_path / "missing", "--out", tmp_path / "o", check=False)
    assert p.returncode == 2 and "is not a directory" in p.stdout + p.stderr
    p = _cli("run", "--data", tmp_path, "--out", tmp_path / "o", "--target", "nope", check=False)
    assert p.returncode == 2 and "known targets" in p.stdout + p.stderr
    assert not (tmp_path / "o").exists()
