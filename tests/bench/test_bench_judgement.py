"""The report's judgement on constructed rows: paired judgement vs the fp32 parent, not_faster as a
flag beside status ok, the TensorRT-on-host note, the recommended artifact; report.png's labels."""

from __future__ import annotations

import numpy as np
import pytest

from edgetransfer.artifacts import Manifest
from edgetransfer.bench.judgement import judge_rows, recommend
from edgetransfer.targets import QuantizationPreset


def _row(name, precision, p50, logits, fmt="onnx", runtime="onnxruntime", reference=False):
    return {"name": name, "format": fmt, "precision": precision, "runtime": runtime, "status": "ok", "reference": reference,
            "accuracy": {"top1": 0.9, "split": "test"}, "latency": [{"batch_size": 1, "p50_ms": p50}], "_logits": logits}


def _man(name, preset=None, excluded=0):
    return Manifest(format="onnx", precision="int8", file=name, details={"preset": preset, "num_excluded_nodes": excluded})


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    ref = rng.normal(0, 0.1, (n, 2)).astype(np.float32)
    ref[np.arange(n), y] += 3
    return ref, y


def test_not_faster_is_a_flag_and_the_recommended_row_is_the_fastest_within_budget():
    ref, y = _data()
    cand = ref + 0.01
    rows = [_row("model.onnx", "fp32", 1.0, ref, reference=True), _row("model.int8.qdq.onnx", "int8", 0.97, cand)]
    splits = {"test": slice(0, 100), "val": slice(100, 200)}
    notes = judge_rows(rows, {"model.int8.qdq.onnx": _man("model.int8.qdq.onnx", excluded=15)}, y, splits, 0.005, ["a", "b"],
                       host_is_target=True)
    q = rows[1]
    assert q["status"] == "ok" and q["not_faster"] is True  # a flag beside status ok, never a status
    assert q["speed_vs_fp32"]["ratio"] == pytest.approx(0.97) and "15 node(s) kept in float" in q["not_faster_reason"]
    assert q["judgement"]["split"] == "test" and q["judgement"]["n"] == 100 and q["judgement"]["holds"]
    assert q["judgement_by_split"]["val"]["n"] == 100 and q["judgement"]["vs"] == "model.onnx [onnxruntime]"
    assert any("not faster than fp32" in n for n in notes)
    assert recommend(rows)["name"] == "model.onnx"  # the INT8 file is within budget but brings no speed
    rows[1]["latency"][0]["p50_ms"] = 0.5
    judge_rows(rows, {}, y, splits, 0.005, ["a", "b"], host_is_target=True)
    assert rows[1]["not_faster"] is False and recommend(rows)["name"] == "model.int8.qdq.onnx"
    # an INT8 file that loses decisive images is not recommended, however fast
    bad = ref.copy()
    bad[:10] = bad[:10, ::-1]
    rows[1]["_logits"] = bad
    judge_rows(rows, {}, y, splits, 0.005, ["a", "b"], host_is_target=True)
    assert not rows[1]["judgement"]["holds"] and recommend(rows)["name"] == "model.onnx"


def test_tensorrt_preset_rows_under_onnxruntime_on_a_host_say_so():
    ref, y = _data()
    rows = [_row("model.onnx", "fp32", 1.0, ref, reference=True), _row("model.int8.qdq.onnx", "int8", 2.5, ref.copy())]
    trt = _man("model.int8.qdq.onnx", preset=QuantizationPreset.named("tensorrt").to_dict())
    notes = judge_rows(rows, {"model.int8.qdq.onnx": trt}, y, {"test": slice(0, 200)}, 0.005, ["a", "b"], host_is_target=False)
    assert "not TensorRT's" in rows[1]["host_latency_note"] and rows[1]["not_faster"]
    assert "TensorRT-preset file under ONNX Runtime" in rows[1]["not_faster_reason"]
    assert any("not TensorRT's" in n for n in notes)
    rows[1].pop("host_latency_note")
    judge_rows(rows, {"model.int8.qdq.onnx": trt}, y, {"test": slice(0, 200)}, 0.005, ["a", "b"], host_is_target=True)
    assert "host_latency_note" not in rows[1]  # on the device itself the figure is the device's


def test_plot_labels_never_overlap_and_the_axis_stops_at_100(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from edgetransfer.bench.plot import place_labels, plot_points

    rows = [{"name": f"model.{i}.onnx", "runtime": "onnxruntime", "status": "ok",
             "accuracy": {"top1": 0.99 + i * 1e-4, "top1_interval95": [0.97, 1.0]},
             "latency": [{"batch_size": 1, "p50_ms": 1.0 + i * 0.01}]} for i in range(6)]
    pts = plot_points({"results": rows})
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for p in pts:
        ax.scatter(p["p50_ms"], p["top1"] * 100)
    boxes = place_labels(ax, fig, pts)
    assert len(boxes) == 6
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(6) for j in range(i + 1, 6))
    plt.close(fig)
    from edgetransfer.bench.plot import plot_title, write_plot, y_limits

    assert y_limits(pts)[1] == 100.0 and y_limits(pts)[0] < 97.0  # intervals shown, axis capped at 100 %
    assert "host measurement" in plot_title({"target": "jetson-orin-nano", "host_is_target": False})
    assert "host measurement" not in plot_title({"target": "x86-cpu", "host_is_target": True})

    out = write_plot({"results": rows, "target": "jetson-orin-nano", "host_is_target": False}, tmp_path / "r.png")
    assert out is not None and out.stat().st_size > 0
