"""The generated app's end-to-end latency against the report's e2e figure, in one run.

    python benchmarks/app_latency.py BUNDLE [--rounds 5] [--target x86-cpu]

Writes BUNDLE/app/ (edgetransfer app), then alternates ROUNDS times: (a) the benchmark's own
end-to-end measurement (bench.e2e.measure_end_to_end: JPEG bytes -> top-k, batch 1) of the app's
ONNX artifact over the bundle's validation images, (b) the app (run_onnxruntime.py --json, a fresh
torch-free process) over the same images. Prints each round, the medians of both, their ratio,
and whether the app's top-1 equals the report row's top-1. Target: |app / report - 1| <= 15 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgetransfer.appgen import write_app
from edgetransfer.artifacts import read_manifest
from edgetransfer.bench.e2e import measure_end_to_end
from edgetransfer.bundle import Bundle
from edgetransfer.data import PreprocessSpec
from edgetransfer.runtime import get_runner_class
from edgetransfer.targets import load_target
from edgetransfer.types import Runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target", default="x86-cpu")
    a = ap.parse_args()
    tgt = load_target(a.target)
    app, cfg = write_app(a.bundle, tgt)
    art = (app / cfg["artifacts"]["onnxruntime"]).resolve()
    b = Bundle(a.bundle)
    val, _ = b.validation(cfg["labels"], None)
    files = [s.path for s in val.samples]
    payloads = [f.read_bytes() for f in files]
    m = read_manifest(art)
    cls = get_runner_class(m.format, Runtime.ONNXRUNTIME)
    runner = cls(art, m, threads=cfg["threads"], options=cls.options_for(tgt, m, None))
    runner.activate()
    spec = PreprocessSpec.from_dict(m.preprocessing)
    blocker = Path(tempfile.mkdtemp()) / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\nsys.modules['edgetransfer'] = None\n")
    rep, ours, top1 = [], [], None
    for r in range(a.rounds):
        st = measure_end_to_end(runner, spec, cfg["labels"], payloads, warmup=3, min_iterations=len(payloads), min_seconds=0.0)
        rep.append(st.latency.p50_ms)
        out = subprocess.run([sys.executable, str(app / "run_onnxruntime.py"), *map(str, files), "--json"], capture_output=True,
                             text=True, check=True, env={"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"})
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        ours.append(lines[-1]["median_ms"])
        pred = [cfg["labels"].index(x["top"][0][0]) for x in lines[:-1]]
        top1 = float(np.mean([p == s.label for p, s in zip(pred, val.samples)]))
        print(f"round {r + 1}: report e2e p50 {rep[-1]:.2f} ms, app median {ours[-1]:.2f} ms")
    rp = Path(a.bundle) / "report.json"
    report = json.loads(rp.read_text()) if rp.is_file() else {"results": []}
    row = next((x for x in report["results"] if x["name"] == art.name and x["runtime"] == "onnxruntime"), None)
    r50, a50 = float(np.median(rep)), float(np.median(ours))
    print(json.dumps({"images": len(files), "artifact": art.name, "rounds": a.rounds, "report_e2e_p50_ms": r50, "app_median_ms": a50,
                      "app_vs_report_pct": (a50 / r50 - 1) * 100, "app_top1": top1,
                      "report_top1": row and row["accuracy"]["top1"], "top1_equal": bool(row and row["accuracy"]["top1"] == top1)}))


if __name__ == "__main__":
    main()
