"""The benchmark: the report of a real (tiny) bundle, class-order safety, failing and missing runtimes."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from ..fixtures.bundles import FAST
from ..fixtures.cli import cli
from ..fixtures.images import colour_folder
from ..fixtures.colour import write_colour_onnx
from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
from edgetransfer.bench.report import SCHEMA_VERSION, validate_report
from edgetransfer.data import scan_image_folder
from edgetransfer.errors import DataError
from edgetransfer.runtime import base as runtime_base
from edgetransfer.runtime.openvino import OpenVinoRunner
from edgetransfer.targets import load_target
from edgetransfer.types import Format, Runtime

X86 = load_target("x86-cpu")


def _rows(report):
    return {(r["name"], r["runtime"]): r for r in report["results"]}


def test_pipeline_report_has_every_figure(tiny_bundle):
    report = json.loads((tiny_bundle / "report.json").read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    assert validate_report(report) == []
    rows = _rows(report)
    assert set(rows) == {("model.pt", "torch"), ("model.onnx", "onnxruntime"), ("model.onnx", "openvino"),
                         ("model.int8.qdq.onnx", "onnxruntime"), ("model.int8.qdq.onnx", "openvino")}
    has_ov = importlib.util.find_spec("openvino") is not None
    for key, r in rows.items():
        if key[1] == "openvino" and not has_ov:
            assert r["status"] == "unavailable" and "edgetransfer[openvino]" in r["error"]
            continue
        assert r["status"] == "ok", (key, r["error"])
        assert r["accuracy"]["num_samples"] == 6 and r["accuracy"]["split"] == "test"  # half of val/ carved for test
        assert r["accuracy_by_split"]["val"]["num_samples"] == 6
        assert r["accuracy"]["top1"] >= 5 / 6 and r["accuracy_by_split"]["val"]["top1"] >= 5 / 6  # the head separates colours
        assert sum(map(sum, r["accuracy"]["confusion"])) == 6
        assert r["accuracy"]["top1_interval95"][0] < r["accuracy"]["top1"] <= r["accuracy"]["top1_interval95"][1] + 1e-12
        assert [s["batch_size"] for s in r["latency"]] == [1, 4]
        for s in r["latency"]:
            assert s["iterations"] >= 5 and s["warmup"] == 2
            assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"]
            assert s["throughput_ips"] == pytest.approx(s["batch_size"] * 1000 / s["mean_ms"])
        e2e = r["latency_e2e"]
        phases = e2e["decode_p50_ms"] + e2e["preprocess_p50_ms"] + e2e["infer_p50_ms"] + e2e["postprocess_p50_ms"]
        assert e2e["batch_size"] == 1 and e2e["num_payloads"] == 12
        assert 0 < e2e["decode_p50_ms"] and 0 < e2e["preprocess_p50_ms"] and 0 < e2e["infer_p50_ms"]
        assert phases <= e2e["p99_ms"] * 1.5 and phases >= e2e["min_ms"] * 0.5
        assert r["memory"]["growth_mib"] >= 0 and r["memory"]["peak_rss_mib"] >= r["memory"]["rss_before_mib"]
        assert r["execution_provider"]
    ref = rows[("model.onnx", "onnxruntime")]
    assert ref["reference"] and ref["accuracy"]["agreement_with_fp32"] == 1.0
    assert ref["execution_provider"] == "CPUExecutionProvider" and ref["providers"] == ["CPUExecutionProvider"]
    assert rows[("model.pt", "torch")]["threads"] >= 1
    if has_ov:
        assert rows[("model.onnx", "openvino")]["execution_provider"] == "OpenVINO CPU (f32)"
    assert rows[("model.int8.qdq.onnx", "onnxruntime")]["size_mib"] < ref["size_mib"] / 2
    assert any(r["pareto"] for r in rows.values())
    md = (tiny_bundle / "report.md").read_text()
    assert "| artifact | precision | runtime |" in md and "e2e p50 ms" in md and "model.int8.qdq.onnx" in md
    assert (tiny_bundle / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["plot"] == "report.png"


def test_labels_follow_the_manifest_not_the_folder_order(tmp_path):
    """Manifest order red, green, blue; on disk the folders sort blue, green, red."""
    write_colour_onnx(tmp_path / "b", ("red", "green", "blue"))
    val = colour_folder(tmp_path / "val", ("red", "green", "blue"), per_class=3)
    assert scan_image_folder(val).class_names == ["blue", "green", "red"]  # what a folder-order benchmark would use
    rep = benchmark_bundle(tmp_path / "b", X86, data=val, settings=BenchSettings(**FAST, e2e=False), write=False)
    assert rep["dataset"]["class_names"] == ["red", "green", "blue"]
    assert rep["dataset"]["counts"] == {"red": 3, "green": 3, "blue": 3}
    r = _rows(rep)[("model.onnx", "onnxruntime")]
    assert r["accuracy"]["top1"] == 1.0
    assert r["accuracy"]["per_class"] == {"red": 1.0, "green": 1.0, "blue": 1.0}
    assert np.array_equal(np.asarray(r["accuracy"]["confusion"]), 3 * np.eye(3, dtype=int))


def test_extra_or_missing_validation_class_is_an_error(tmp_path, capsys):
    write_colour_onnx(tmp_path / "b", ("red", "green", "blue"))
    extra = colour_folder(tmp_path / "extra", ("red", "green", "blue", "purple"), per_class=2)
    with pytest.raises(DataError, match="purple.*not a class of the training set"):
        benchmark_bundle(tmp_path / "b", X86, data=extra, settings=BenchSettings(**FAST), write=False)
    missing = colour_folder(tmp_path / "missing", ("red", "blue"), per_class=2)
    with pytest.raises(DataError, match=r"no images of the trained class\(es\) \['green'\].*--allow-missing-classes"):
        benchmark_bundle(tmp_path / "b", X86, data=missing, settings=BenchSettings(**FAST), write=False)
    rep = benchmark_bundle(tmp_path / "b", X86, data=missing, settings=BenchSettings(**FAST, e2e=False, allow_missing_classes=True), write=False)
    assert rep["dataset"]["counts"] == {"red": 2, "green": 0, "blue": 2}
    assert _rows(rep)[("model.onnx", "onnxruntime")]["accuracy"]["top1"] == 1.0
    # the CLI turns it into exit code 2 with the message
    capsys.readouterr()
    assert cli(["benchmark", tmp_path / "b", "--data", extra, "--target", "x86-cpu"]) == 2
    assert "purple" in capsys.readouterr().err


class _Raising(OpenVinoRunner):
    backend_module = ""  # "installed"

    def activate(self):
        self.active = True

    def infer(self, feeds):
        raise RuntimeError("simulated runtime crash")


def test_a_raising_runner_is_a_failed_row_and_the_others_are_measured(tmp_path, monkeypatch):
    monkeypatch.setitem(runtime_base._REGISTRY, (Format.ONNX, Runtime.OPENVINO), _Raising)
    write_colour_onnx(tmp_path / "b")
    val = colour_folder(tmp_path / "val", per_class=2)
    rep = benchmark_bundle(tmp_path / "b", X86, data=val, settings=BenchSettings(**FAST), write=True)
    rows = _rows(rep)
    bad, good = rows[("model.onnx", "openvino")], rows[("model.onnx", "onnxruntime")]
    assert bad["status"] == "failed" and "RuntimeError: simulated runtime crash" in bad["error"]
    assert bad["accuracy"] is None and bad["latency"] == []
    assert good["status"] == "ok" and good["accuracy"]["top1"] == 1.0 and len(good["latency"]) == 2
    assert validate_report(json.loads((tmp_path / "b" / "report.json").read_text())) == []
    assert "simulated runtime crash" in (tmp_path / "b" / "report.md").read_text()


def test_a_missing_runtime_is_an_unavailable_row_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(OpenVinoRunner, "is_available", classmethod(lambda cls: False))
    write_colour_onnx(tmp_path / "b")
    val = colour_folder(tmp_path / "val", per_class=2)
    rep = benchmark_bundle(tmp_path / "b", X86, data=val, settings=BenchSettings(**FAST, e2e=False), write=False)
    row = _rows(rep)[("model.onnx", "openvino")]
    assert row["status"] == "unavailable" and "pip install 'edgetransfer[openvino]'" in row["error"]
    assert _rows(rep)[("model.onnx", "onnxruntime")]["status"] == "ok"
