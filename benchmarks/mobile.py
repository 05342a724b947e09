"""Mobile formats on this host, in one run: p50 latency (batch 1) and top-1 of every runnable
artifact, fp32 and INT8, relative to ONNX Runtime fp32 (``model.onnx``) measured in the same run.

Usage (a bundle trained with edgetransfer, e.g. ``edgetransfer run --target android-arm64``)::

    python benchmarks/mobile.py --bundle runs/bees-android [--build] [--threads 2]

``--build`` first builds the mobile formats missing from the bundle (.ort, .tflite, .pte,
.mlpackage) whose backend is installed. Core ML rows are ``not_runnable`` off macOS (no number).
These are HOST measurements: they rank the formats on this CPU; a phone's numbers differ.

Prints a table, then one final JSON line:
``{"benchmark": "mobile", "reference": "model.onnx/onnxruntime", "rows": [{"artifact", "format",
"precision", "runtime", "status", "p50_ms", "p50_vs_ort_fp32", "top1", "top1_vs_ort_fp32",
"agreement_with_fp32"}...], ...}`` — ``p50_vs_ort_fp32`` < 1 means faster than ORT fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
from edgetransfer.builders import get_builder
from edgetransfer.bundle import Bundle
from edgetransfer.pipeline import stage_build
from edgetransfer.progress import set_quiet
from edgetransfer.targets import load_target

MOBILE_FORMATS = ("ort", "tflite", "pte", "mlpackage")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "executorch", "coremltools"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_missing(bundle: Path, threads: int) -> list[str]:
    """Build the mobile formats not yet in ``bundle`` whose backend is installed; return what was skipped."""
    have = {a["format"] for a in Bundle.open(bundle).registered()}
    skipped = []
    for fmt in MOBILE_FORMATS:
        cls = get_builder(fmt)
        if fmt in have:
            continue
        if not cls.is_available():
            skipped.append(f"{fmt}: backend not installed (pip install 'edgetransfer[{cls.extra}]')")
            continue
        target = load_target("ios-arm64" if fmt == "mlpackage" else "android-arm64")
        stage_build(bundle, target, formats=[fmt], threads=threads)
    return skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--build", action="store_true", help="build the missing mobile formats first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--max-samples", type=int, default=None, help="validation images for top-1 (default: all)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    set_quiet(a.quiet)
    skipped = build_missing(a.bundle, a.threads) if a.build else []
    target = load_target("android-arm64")  # runtimes litert, executorch, onnxruntime; Core ML by registry fallback
    settings = BenchSettings(batch_sizes=(1,), warmup=a.warmup, min_iterations=a.iterations, min_seconds=a.min_seconds,
                             threads=a.threads, max_samples=a.max_samples)
    report = benchmark_bundle(a.bundle, target, settings=settings, write=False)
    rows = report["results"]
    ref = next((r for r in rows if r["name"] == "model.onnx" and r["runtime"] == "onnxruntime" and r["status"] == "ok"), None)
    if ref is None:
        print("error: the bundle has no measurable model.onnx (the ORT fp32 reference)", file=sys.stderr)
        return 2
    ref_p50 = ref["latency"][0]["p50_ms"]
    ref_top1 = ref["accuracy"]["top1"]
    out_rows = []
    for r in rows:
        if r["format"] not in ("onnx",) + MOBILE_FORMATS:
            continue
        lat = r["latency"][0] if r["latency"] else None
        acc = r["accuracy"] or {}
        out_rows.append({
            "artifact": r["name"], "format": r["format"], "precision": r["precision"], "runtime": r["runtime"],
            "status": r["status"], "error": r["error"], "size_mib": round(r["size_mib"], 2),
            "p50_ms": round(lat["p50_ms"], 3) if lat else None,
            "p50_vs_ort_fp32": round(lat["p50_ms"] / ref_p50, 3) if lat else None,
            "top1": acc.get("top1"), "top1_vs_ort_fp32": round(acc["top1"] - ref_top1, 4) if "top1" in acc else None,
            "agreement_with_fp32": acc.get("agreement_with_fp32"),
        })
    header = f"{'artifact':26} {'prec':5} {'runtime':12} {'status':13} {'MiB':>6} {'p50 ms':>8} {'x ORT32':>8} {'top-1':>7} {'Δtop-1':>7}"
    print(f"host: {report['environment']['cpu']} ({a.threads} threads); HOST measurements, batch 1, "
          f"{report['dataset']['num_images']} validation images", file=sys.stderr)
    print(header, file=sys.stderr)
    for o in out_rows:
        f = lambda v, nd: "—" if v is None else f"{v:.{nd}f}"  # noqa: E731
        print(f"{o['artifact']:26} {o['precision']:5} {o['runtime']:12} {o['status']:13} {o['size_mib']:6.2f} "
              f"{f(o['p50_ms'], 2):>8} {f(o['p50_vs_ort_fp32'], 2):>8} {f(o['top1'], 4):>7} {f(o['top1_vs_ort_fp32'], 4):>7}",
              file=sys.stderr)
    summary = {"benchmark": "mobile", "host_is_target": False, "cpu": report["environment"]["cpu"], "threads": a.threads,
               "reference": "model.onnx/onnxruntime", "reference_p50_ms": round(ref_p50, 3), "reference_top1": ref_top1,
               "num_images": report["dataset"]["num_images"], "rows": out_rows, "not_built": skipped,
               "versions": {**report["environment"]["versions"], **_versions()}}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
