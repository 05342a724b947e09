"""`edgetransfer compare`: differences, budgets, exit code 3 on a regression; the report schema and plot."""

from __future__ import annotations

import copy
import json

import pytest

from ..fixtures.cli import cli
from edgetransfer.bench import report as report_mod
from edgetransfer.bench.compare import compare_reports
from edgetransfer.bench.plot import pareto_front
from edgetransfer.bench.report import validate_report, write_report


def _degrade(rep, name="model.int8.qdq.onnx", runtime="onnxruntime", top1_drop=0.0, p50_factor=1.0):
    new = copy.deepcopy(rep)
    for r in new["results"]:
        if (r["name"], r["runtime"]) == (name, runtime):
            r["accuracy"]["top1"] -= top1_drop
            for s in r["latency"]:
                s["p50_ms"] *= p50_factor
    return new


def test_compare_budgets(tiny_bundle):
    old = json.loads((tiny_bundle / "report.json").read_text())
    same = compare_reports(old, old, max_top1_drop=0.005, max_p50_ratio=1.1)
    assert same.passed and any(c.metric == "top-1" for c in same.changes)
    drop = compare_reports(old, _degrade(old, top1_drop=0.01), max_top1_drop=0.005)
    assert not drop.passed
    (reg,) = drop.regressions
    assert (reg.artifact, reg.runtime, reg.metric) == ("model.int8.qdq.onnx", "onnxruntime", "top-1")
    assert compare_reports(old, _degrade(old, top1_drop=0.004), max_top1_drop=0.005).passed
    slow = _degrade(old, p50_factor=1.5)
    assert compare_reports(old, slow, max_top1_drop=0.005).passed  # no latency budget given
    assert [c.metric for c in compare_reports(old, slow, max_top1_drop=0.005, max_p50_ratio=1.2).regressions] == ["p50 ms b1", "p50 ms b4"]
    gone = copy.deepcopy(old)
    gone["results"] = [r for r in gone["results"] if r["name"] != "model.onnx"]
    assert {c.metric for c in compare_reports(old, gone, max_top1_drop=0.005).regressions} == {"row"}
    broken = copy.deepcopy(old)
    broken["results"][1].update(status="failed", error="boom")
    assert [c.metric for c in compare_reports(old, broken, max_top1_drop=0.005).regressions] == ["status"]


def test_compare_cli_exit_codes(tiny_bundle, tmp_path, capsys):
    old = json.loads((tiny_bundle / "report.json").read_text())
    (tmp_path / "new.json").write_text(json.dumps(_degrade(old, top1_drop=0.02)))
    (tmp_path / "ok.json").write_text(json.dumps(old))
    assert cli(["compare", tiny_bundle / "report.json", tmp_path / "ok.json", "--max-p50-ratio", "1.5"]) == 0
    capsys.readouterr()
    assert cli(["compare", tiny_bundle / "report.json", tmp_path / "new.json"]) == 3  # x86-cpu: max_top1_drop 0.005
    err = capsys.readouterr().err
    assert "breaks the budgets" in err and "model.int8.qdq.onnx [onnxruntime] top-1: drop 2.00 pt > budget 0.50 pt" in err
    assert cli(["compare", tiny_bundle / "report.json", tmp_path / "new.json", "--max-top1-drop", "0.05", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert cli(["compare", tmp_path / "missing.json", tmp_path / "ok.json"]) == 2


def test_schema_rejects_a_broken_report(tiny_bundle):
    rep = json.loads((tiny_bundle / "report.json").read_text())
    assert validate_report(rep) == []
    bad = copy.deepcopy(rep)
    del bad["results"][0]["latency"][0]["p99_ms"]
    bad["results"][1]["status"] = "great"
    bad["results"][2]["accuracy"]["top1"] = "1.0"
    problems = validate_report(bad)
    assert any("latency[0]: missing 'p99_ms'" in p for p in problems)
    assert any("status: 'great' is not one of" in p for p in problems)
    assert any("accuracy.top1: expected number" in p for p in problems)


def test_pareto_front():
    pts = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.89), (3.0, 0.95), (0.5, 0.80), (2.0, 0.95)]
    # (1.5, .89) is dominated by (1.0, .90); (3.0, .95) by (2.0, .95); the duplicate (2.0, .95) ties
    assert pareto_front(pts) == [4, 0, 1, 5]


def test_plot_is_skipped_with_a_note_without_matplotlib(tiny_bundle, tmp_path, monkeypatch):
    rep = json.loads((tiny_bundle / "report.json").read_text())
    (tmp_path / "report.png").write_bytes(b"stale")
    monkeypatch.setattr(report_mod, "matplotlib_available", lambda: False)
    write_report(rep, tmp_path)
    out = json.loads((tmp_path / "report.json").read_text())
    assert out["plot"] is None and not (tmp_path / "report.png").exists()
    assert "report.png skipped: matplotlib is not installed (pip install 'edgetransfer[plot]')" in out["notes"]
    assert "matplotlib is not installed" in (tmp_path / "report.md").read_text()
    pytest.importorskip("matplotlib")
    monkeypatch.undo()
    write_report(rep, tmp_path)
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert not any(n.startswith("report.png") for n in json.loads((tmp_path / "report.json").read_text())["notes"])
