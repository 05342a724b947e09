"""report.json's ``gates`` / report.md's "Gates" table (issue 11, small data): every gate's
decision and sample size, read from the manifests the jobs wrote."""

from types import SimpleNamespace

import numpy as np

from edgetransfer.bench.gates_report import collect_gates, gate_lines
from edgetransfer.bench.report import validate_report
from edgetransfer.gates import flip_gate


def _logits(n: int, c: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (n, c))


def test_flip_gates_and_budget_rows_carry_decision_and_sample_size():
    ref = _logits(24)
    cand = ref.copy()
    cand[0] = cand[0][::-1]  # one flip of 24
    oo = flip_gate(ref, cand, name="ONNX Runtime graph optimisations on vs off").to_dict()
    mobile = flip_gate(ref, -ref, name="pte int8 conversion of model.pt parity").to_dict()  # every image flips
    manifests = {
        "model.onnx": SimpleNamespace(details={"parity": {}}),  # no gate: no row
        "model.int8.qdq.onnx": SimpleNamespace(details={
            "optimizations_on_off": {"applies": True, **oo},
            "budget": {"max_top1_drop": 0.005, "judgement": {"holds": False, "n": 16, "lost": 1, "gained": 0,
                                                             "decided_by": "fidelity", "reason": "one image > budget"}},
            "chosen_rung": "c:bias_correction:mse", "calibration": {"method": "entropy"}, "float_compute_share": 0.04,
            "ladder": [{"rung": "a:ranges:entropy", "estimator": "entropy"}, {"rung": "c:bias_correction:mse", "estimator": "mse"}]}),
        "model.trt.int8.qdq.onnx": SimpleNamespace(details={"optimizations_on_off": {"applies": False, "reason": "TensorRT"}}),
        "model.int8.pte": SimpleNamespace(details={"gate": mobile}),
    }
    rows = collect_gates(manifests)
    assert [(r["artifact"], r["decision"], r["images"]) for r in rows] == [
        ("model.int8.qdq.onnx", "passed", 24),  # 1 decisive flip of 24, passed on the logit tolerance (1.5 %)
        ("model.int8.qdq.onnx", "exceeded", 16),
        ("model.trt.int8.qdq.onnx", "not_applicable", None),
        ("model.int8.pte", "failed", 24),
    ]
    assert rows[0]["flips"] == 1 and rows[0]["decisive_images"] == 24 and rows[0]["allowed_flips"] == 0 and rows[3]["flips"] == 24 and rows[3]["passed"] is False
    assert rows[1]["gate"] == "INT8 accuracy budget (0.50 pt, val)" and rows[1]["lost"] == 1
    # which ladder candidate the file is, and that its ranges are not the recipe's (asked: entropy)
    assert rows[1]["reason"] == ("one image > budget; the file is ladder candidate c:bias_correction:mse, ranges mse where "
                                 "the recipe asked for entropy, 4% of compute nodes in float")
    md = "\n".join(gate_lines({"gates": rows}))
    assert md.count("\n| model.") == 4 and "| **failed** | 24 |" in md and "| **exceeded** | 16 |" in md
    assert "| not_applicable | — |" in md and "-1 / +0 (paired)" in md
    assert gate_lines({"gates": []}) == []


def test_report_schema_checks_the_gate_rows():
    base = {"schema_version": None, "target": "x", "created_at": "t", "environment": {"cpu": "c", "arch": "a", "python": "3",
            "versions": {}}, "settings": {"batch_sizes": [1], "warmup": 1, "min_iterations": 1, "min_seconds": 0, "threads": 1},
            "dataset": {"class_names": ["a"], "num_images": 1, "counts": {}}, "results": [], "notes": []}
    from edgetransfer.bench.report import SCHEMA_VERSION

    base["schema_version"] = SCHEMA_VERSION
    ok = {**base, "gates": [{"artifact": "m", "gate": "g", "decision": "passed", "passed": True, "images": 16}]}
    bad = {**base, "gates": [{"artifact": "m", "gate": "g", "decision": "maybe", "passed": True}]}
    assert validate_report(ok) == []
    assert len(validate_report(bad)) == 2  # unknown decision, missing sample size


def test_data_lines_say_which_split_was_carved_from_a_shared_folder():
    from edgetransfer.bench.report_sections import data_lines

    report = {"dataset": {"split": "test", "splits": {"test": {"root": "/d/val", "num_images": 8},
                                                      "val": {"root": "/d/val", "num_images": 8}},
                          "roles": [{"folder": "/d/val", "role": "val", "note": "picks the best epoch"},
                                    {"folder": "/d/val", "role": "test", "note": "carved: 50% of val/ per class (seed 1); "
                                                                                  "the report's headline figures"}]}}
    line = data_lines(report)[0]
    assert "test 8 images (carved: 50% of val/ per class (seed 1) of /d/val)" in line
    assert "val 8 images (/d/val)" in line


def test_judgement_lines_warn_when_one_image_outweighs_the_budget():
    from edgetransfer.bench.report_sections import judgement_lines
    from edgetransfer.stats import budget_judge

    ref = _logits(8)
    j = budget_judge(ref, ref + 0.01, ref.argmax(1), 0.005).to_dict()
    assert j["resolvable"] is False  # 1 image = 12.5 pt > 0.5 pt
    row = {"name": "model.int8.qdq.onnx", "runtime": "onnxruntime", "judgement": {**j, "vs": "model.onnx", "split": "test"}}
    text = "\n".join(judgement_lines({"results": [row], "budget": {"max_top1_drop": 0.005}}))
    assert "one image is 12.50 pt of test here, more than the 0.50 pt budget" in text
    assert "model.int8.qdq.onnx [onnxruntime]: decisive agreement 1.000 of" in text
