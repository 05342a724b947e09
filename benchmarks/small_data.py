"""Small data, end to end: ``edgetransfer run`` on 20 training, 8 validation and 8 test images per
class, for each dataset x target, and what the report says about INT8 and every agreement gate.

The subsets are folders of SYMLINKS in a temp dir (``DIR/{train,val,test}/<class>/``; no image is
copied), taken in sorted-name order, so every run sees the same files:

- hymenoptera: train/ <- the first 20 of train/<class>; val/ <- the first 8 of val/<class>,
  test/ <- the next 8 of val/<class>;
- pizza_steak_sushi (train/ and test/ only): train/ <- the first 20 of train/<class>;
  val/ <- the first 8 of test/<class>, test/ <- the next 8 of test/<class>.

Usage::

    python benchmarks/small_data.py                       # both datasets, x86-cpu + jetson-orin-nano
    python benchmarks/small_data.py --targets android-arm64 --python .venv-mobile/bin/python
    python benchmarks/small_data.py --datasets hymenoptera --targets x86-cpu --epochs 3

``--python`` is the interpreter that runs ``python -m edgetransfer`` (android-arm64 needs the
mobile extras: a venv with ``edgetransfer[mobile]``). Runs go one at a time under ``nice -n 10``.

Prints one table row per run, then ONE final JSON line::

    {"runs": {"hymenoptera/x86-cpu": {"exit": 0, "seconds": 61.2, "int8_status": "ok",
      "int8_reason": "...", "gates": [{"artifact": .., "gate": .., "passed": .., "images": ..,
      "decisive_images": .., "reason": ..}, ...], "out": "/tmp/..."}, ...}}

``exit`` is ``edgetransfer run``'s exit code (0 ok, 3 a budget / gate status in the report, 2 bad
input, anything else a crash); ``seconds`` is wall time of the whole run (train on CPU included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the real datasets: $EDGETRANSFER_DATA, default ../shared/data beside the checkout (as the tests)
DATA = Path(os.environ.get("EDGETRANSFER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# dataset -> (source folder of train, source folder of val + test)
SOURCES = {"hymenoptera": ("train", "val"), "pizza_steak_sushi": ("train", "test")}
# latency is not what this checks (2 shared cores): short timing loops unless --full-bench
QUICK_BENCH = ["--bench-batch", "1", "--warmup", "3", "--iterations", "10", "--min-seconds", "0.5", "--no-e2e"]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)


def make_subset(name: str, dest: Path, *, n_train: int = 20, n_val: int = 8, n_test: int = 8) -> Path:
    """Symlink subset of ``DATA/name`` under ``dest/name`` (layout in the module docstring); returns it.
    :class:`ValueError` when a class has fewer images than asked for."""
    src_train, src_eval = SOURCES[name]
    root = dest / name
    for cls_dir in sorted(p for p in (DATA / name / src_train).iterdir() if p.is_dir()):
        cls = cls_dir.name
        tr = _images(cls_dir)
        ev = _images(DATA / name / src_eval / cls)
        if len(tr) < n_train or len(ev) < n_val + n_test:
            raise ValueError(f"{name}/{cls}: {len(tr)} train, {len(ev)} {src_eval} images; need {n_train} and {n_val + n_test}")
        for split, files in (("train", tr[:n_train]), ("val", ev[:n_val]), ("test", ev[n_val:n_val + n_test])):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in files:
                (d / f.name).symlink_to(f.resolve())
    return root


def summarize(report: dict) -> dict:
    """INT8 status / reason (worst INT8 row of ``results``) and every gate (report.json ``gates``:
    decision + sample size) from a report.json dict."""
    int8 = [r for r in report.get("results", []) if r.get("precision") == "int8" and r.get("status") != "not_built"]
    statuses = [r.get("status", "?") for r in int8]
    worst = next((s for s in ("failed", "gate_failed", "budget_exceeded", "ok") if s in statuses), statuses[0] if statuses else "none")
    reasons = []
    for r in int8:
        if r.get("status") != worst:
            continue
        why = r.get("error") or (r.get("judgement") or {}).get("reason") or ""
        reasons.append(f"{r['name']} [{r['runtime']}]: {why}")
    gates = [{k: g.get(k) for k in ("artifact", "gate", "decision", "images", "decisive_images", "flips", "decided_by")
              if g.get(k) is not None} for g in report.get("gates", [])]
    return {"int8_status": worst, "int8_reason": " | ".join(dict.fromkeys(reasons)), "gates": gates}


def run_one(python: str, data: Path, target: str, out: Path, epochs: int, extra: list[str]) -> dict:
    cmd = ["nice", "-n", "10", python, "-m", "edgetransfer", "run", "--data", str(data), "--out", str(out),
           "--target", target, "--epochs", str(epochs), "--force", "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    (out / "small_data.stderr.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "small_data.stderr.txt").write_text(proc.stderr)
    row = {"exit": proc.returncode, "seconds": seconds, "out": str(out)}
    rep = out / "report.json"
    if rep.is_file():
        row.update(summarize(json.loads(rep.read_text())))
    else:
        row.update({"int8_status": "no_report", "int8_reason": (proc.stderr.strip().splitlines() or [""])[-1], "gates": []})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--targets", nargs="+", default=["x86-cpu", "jetson-orin-nano"])
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs edgetransfer")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="runs go to OUT/<dataset>-<target> (default: a temp dir)")
    ap.add_argument("--full-bench", action="store_true", help="the target's own timing loops (default: short ones)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `edgetransfer run` options")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="small-data-"))
    out_root = a.out or work / "runs"
    runs = {}
    for ds in a.datasets:
        data = make_subset(ds, work / "data")
        for target in a.targets:
            row = run_one(a.python, data, target, out_root / f"{ds}-{target}", a.epochs,
                          ([] if a.full_bench else QUICK_BENCH) + a.extra)
            runs[f"{ds}/{target}"] = row
            gates = "; ".join(f"{g['artifact']} {g['gate'][:40]}: {g['decision']} n={g.get('images', '-')}" for g in row["gates"])
            print(f"{ds + '/' + target:40s} exit {row['exit']:>3}  {row['seconds']:7.1f} s  int8 {row['int8_status']:16s} {gates}",
                  file=sys.stderr, flush=True)
    print(json.dumps({"runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
