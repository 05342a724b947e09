"""The summary table a user reads in the terminal and in report.md: percentile cells marked when
the loop was too short for them, and a narrow terminal never cuts a name."""

from __future__ import annotations

import io

from rich.console import Console

from edgetransfer.bench import report as R


def _lat(batch: int, iterations: int) -> dict:
    return {"batch_size": batch, "warmup": 2, "iterations": iterations, "mean_ms": 5.0, "std_ms": 0.1, "min_ms": 4.9,
            "p50_ms": 5.0, "p90_ms": 5.5, "p95_ms": 5.7, "p99_ms": 6.0, "throughput_ips": 200.0 * batch, "seconds": 1.0}


def _report() -> dict:
    res = []
    for name, prec, rt in [("model.onnx", "fp32", "onnxruntime"), ("model.int8.qdq.onnx", "int8", "onnxruntime"),
                           ("model.int8.qdq.onnx", "int8", "openvino")]:
        res.append({"name": name, "precision": prec, "runtime": rt, "status": "ok", "size_mib": 4.0,
                    "accuracy": {"top1": 0.95, "top1_interval95": [0.90, 0.98], "num_images": 77, "agreement_with_fp32": 1.0},
                    "latency": [_lat(1, 40), _lat(8, 400)], "memory": {"growth_mib": 20.0}})
    return {"target": "x86-cpu", "results": res}


def test_percentiles_marked_when_the_loop_is_too_short():
    header, rows = R.table_rows(_report())
    p90, p99 = header.index("p90 ms"), header.index("p99 ms")
    b1, b8 = rows[0], rows[1]
    assert b1[p99] == "6.00†" and b1[p90] == "5.50"  # 40 calls: enough for p90 (10), not for p99 (100)
    assert b8[p99] == "6.00" and b8[p90] == "5.50"   # 400 calls: both rest on calls above them
    assert R._pct_cell({"iterations": 9, "p90_ms": 1.0}, 90) == "1.00†"
    assert R._pct_cell({"iterations": 10, "p90_ms": 1.0}, 90) == "1.00"


def test_narrow_terminal_prints_a_compact_table_with_whole_names(monkeypatch):
    buf = io.StringIO()

    class Narrow(Console):
        def __init__(self, *a, **k):
            super().__init__(file=buf, width=80, force_terminal=False)

    monkeypatch.setattr("rich.console.Console", Narrow)
    R.print_table(_report())
    out = buf.getvalue()
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= 80
    assert "…" not in out
    assert sum("model.int8.qdq.onnx" in x for x in lines) == 4  # 2 runtimes x 2 batch sizes, name on one line
    assert "compact" in out and "p99 ms" not in out and "0.9500" in out  # point estimate, interval in report.md
