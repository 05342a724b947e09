"""Main-job benchmark: `edgetransfer run` on hymenoptera; wall time per stage and latency ratios.

Targets (issue 2): whole run < 300 s on 2 cores; ORT fp32 p50 <= 0.4x PyTorch eager p50;
ORT INT8 p50 < ORT fp32 p50. Ratios are measured inside this one run (absolute times on a
shared machine are not comparable between runs). Prints a final line of JSON.

    python benchmarks/pipeline.py [--data ../shared/data/hymenoptera] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgetransfer.pipeline import run
from edgetransfer.progress import set_quiet
from edgetransfer.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"hymenoptera not found at {args.data}; pass --data")
    set_quiet(True)
    out = args.out or Path(tempfile.mkdtemp(prefix="edgetransfer-bench-"))
    t0 = time.perf_counter()
    report = run(args.data, out, TrainConfig(epochs=args.epochs), target="x86-cpu")
    total = time.perf_counter() - t0
    p50 = {}
    for r in report["results"]:
        for lat in r["latency"]:
            p50[(r["runtime"], r["precision"], lat["batch_size"])] = lat["p50_ms"]
    res = {
        "total_s": round(total, 1),
        **{k: round(v, 1) for k, v in report["stage_seconds"].items()},
        "top1": {f"{r['name']}@{r['runtime']}": r["accuracy"]["top1"] for r in report["results"] if r["accuracy"]},
    }
    for b in (1, 8):
        t, f, q = p50.get(("torch", "fp32", b)), p50.get(("onnxruntime", "fp32", b)), p50.get(("onnxruntime", "int8", b))
        res[f"b{b}_p50_ms"] = {"torch_fp32": t, "ort_fp32": f, "ort_int8": q}
        res[f"b{b}_ort_fp32_over_torch"] = round(f / t, 3) if t and f else None
        res[f"b{b}_ort_int8_over_ort_fp32"] = round(q / f, 3) if q and f else None
    # the report's paired figure: the ONNX Runtime INT8 file and its fp32 parent timed in interleaved rounds
    sp = next((r.get("speed_vs_fp32") for r in report["results"] if r["runtime"] == "onnxruntime"
               and r["precision"] == "int8" and (r.get("speed_vs_fp32") or {}).get("method", "").startswith("paired")), None)
    res["b1_ort_int8_over_ort_fp32_paired"] = round(sp["ratio"], 3) if sp else None
    res["goals_met"] = {
        "run_under_300s": total < 300,
        "ort_fp32_le_0.4x_torch": (res["b1_ort_fp32_over_torch"] or 9) <= 0.4,
        "ort_int8_lt_ort_fp32": (res["b1_ort_int8_over_ort_fp32"] or 9) < 1.0,
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
