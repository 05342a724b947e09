"""Benchmark every artifact of a bundle on this host: accuracy + latency, one row per
artifact x runtime. Torch-free: only the PyTorch runner itself needs torch, and its absence
turns its row into ``unavailable``."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Manifest, manifest_path, read_manifest
from ..data import ImageFolder, PreprocessSpec, Sample, load_arrays, scan_image_folder
from ..errors import ArtifactError, DataError
from ..progress import log, task
from ..runtime import get_runner_class
from ..runtime.base import _REGISTRY
from ..targets import Target
from ..types import Format, Precision, Runtime, Status
from .accuracy import accuracy, predict
from .latency import measure_latency
from .report import write_report

BUNDLE_FILE = "bundle.json"


@dataclass(frozen=True)
class BenchSettings:
    """Latency settings (see :class:`edgetransfer.targets.BenchmarkSettings`); ``None`` = target's."""

    batch_sizes: tuple[int, ...] | None = None
    warmup: int | None = None
    min_iterations: int | None = None
    min_seconds: float | None = None
    threads: int | None = None
    max_samples: int | None = None  # cap on validation images (None: all)


def cpu_info() -> dict[str, Any]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "f16c", "fma", "asimd", "asimddp", "i8mm", "sve"]
    return {"cpu": name, "cpu_features": [f for f in keep if f in flags], "arch": platform.machine()}


def environment(threads: int) -> dict[str, Any]:
    versions = {}
    for pkg in ("numpy", "pillow", "onnxruntime", "openvino", "torch", "timm", "onnx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {**cpu_info(), "threads": threads or os.cpu_count(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def discover_artifacts(bundle: Path) -> list[tuple[Path, Manifest]]:
    """Artifacts of a bundle in the order bundle.json lists them (else every file with a manifest)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise ArtifactError(f"bundle {bundle} is not a directory; pass the --out directory of 'edgetransfer run'")
    files: list[str] = []
    bj = bundle / BUNDLE_FILE
    if bj.is_file():
        files = [a["file"] for a in json.loads(bj.read_text()).get("artifacts", [])]
    else:
        for mp in sorted(bundle.glob("*.json")):
            art = bundle / mp.name[: -len(".json")]
            if art.exists() and mp.name not in ("report.json",):
                files.append(art.name)
    out = []
    for f in files:
        p = bundle / f
        if manifest_path(p).is_file() and p.exists():
            out.append((p, Manifest.from_dict(json.loads(manifest_path(p).read_text()))))
    if not out:
        raise ArtifactError(f"bundle {bundle} holds no artifact with a manifest; run 'edgetransfer run' or the stages first")
    return out


def load_validation(bundle: Path, class_names: list[str], data: Path | None) -> tuple[ImageFolder, str]:
    """The labelled validation set: ``data`` (an ImageFolder), else the list recorded in bundle.json."""
    if data is not None:
        return scan_image_folder(data, class_names=class_names), str(data)
    bj = Path(bundle) / BUNDLE_FILE
    if bj.is_file():
        ds = json.loads(bj.read_text()).get("dataset", {})
        files = ds.get("val_files")
        if files:
            missing = [f for f in files if not Path(f[0]).is_file()]
            if not missing:
                idx = {n: i for i, n in enumerate(class_names)}
                return ImageFolder(Path(ds.get("val_root", "")), list(class_names), [Sample(Path(f), idx[c]) for f, c in files]), ds.get("val_root", "")
            raise DataError(f"the validation images recorded in {bj} are not on this machine (e.g. {missing[0][0]}); pass --data VAL_DIR")
    raise DataError(f"no validation data: pass --data VAL_DIR (an ImageFolder with the classes {class_names})")


def subsample(samples: list[Sample], max_samples: int | None) -> list[Sample]:
    """At most ``max_samples`` evenly spaced samples, in order (all when ``None`` or 0)."""
    if max_samples and len(samples) > max_samples:
        step = len(samples) / max_samples
        return [samples[int(i * step)] for i in range(max_samples)]
    return list(samples)


def _runtimes_for(fmt: Format, target: Target) -> list[Runtime]:
    rts = [r for r in target.runtimes if (fmt, r) in _REGISTRY]
    if not rts:
        rts = [r for (f, r) in _REGISTRY if f == fmt][:1]
    return rts


def benchmark_bundle(bundle: Path, target: Target, *, data: Path | None = None, settings: BenchSettings = BenchSettings(),
                     write: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every artifact of ``bundle`` (accuracy on the validation set, latency per batch size).

    A failing artifact becomes a row with status ``failed`` and its error; a missing runtime a row
    ``unavailable``; the others are still measured. Returns the report dict (also written as
    report.json / report.md when ``write``).
    """
    bundle = Path(bundle)
    arts = discover_artifacts(bundle)
    class_names = arts[0][1].class_names
    for p, m in arts:
        if m.class_names != class_names:
            raise ArtifactError(f"{p.name} has classes {m.class_names}, {arts[0][0].name} has {class_names}: mixed bundles are not supported")
    spec = PreprocessSpec.from_dict(arts[0][1].preprocessing)
    val, val_root = load_validation(bundle, class_names, data)
    samples = subsample(val.samples, settings.max_samples)
    log(f"preprocessing {len(samples)} validation images")
    x, y = load_arrays(samples, spec)
    tb = target.benchmark
    batch_sizes = tuple(settings.batch_sizes or tb.batch_sizes)
    warmup = tb.warmup if settings.warmup is None else settings.warmup
    iters = settings.min_iterations or tb.min_iterations
    min_s = tb.min_seconds if settings.min_seconds is None else settings.min_seconds
    threads = tb.threads if settings.threads is None else settings.threads

    plan: list[tuple[Path, Manifest, Runtime]] = []
    for p, m in arts:
        for rt in _runtimes_for(Format(m.format), target):
            plan.append((p, m, rt))
    # the fp32 reference: fp32 ONNX first, else the fp32 checkpoint; measured first
    def ref_key(item):
        p, m, rt = item
        return (m.precision != "fp32", m.format != "onnx")
    ref_item = min(plan, key=ref_key) if plan else None
    order = [ref_item] + [it for it in plan if it is not ref_item] if ref_item else plan
    results, ref_pred = [], None
    for p, m, rt in order:
        row = measure_artifact(p, m, rt, x, y, class_names, batch_sizes, warmup, iters, min_s, threads, ref_pred)
        if (p, m, rt) == ref_item and row["status"] == Status.OK:
            ref_pred = row.pop("_pred")
            row["accuracy"]["agreement_with_fp32"] = 1.0
            row["reference"] = True
        row.pop("_pred", None)
        results.append(row)
    # keep bundle order in the report
    rank = {(str(p), str(rt)): i for i, (p, m, rt) in enumerate(plan)}
    results.sort(key=lambda r: rank[(r["path"], r["runtime"])])
    notes = []
    if Precision.FP16 not in target.precisions:
        notes.append(f"fp16 is not among {target.name}'s precisions: it brings no speed on this kind of device, so no fp16 artifact is recommended for it")
    bj = bundle / BUNDLE_FILE
    bundle_info = json.loads(bj.read_text()) if bj.is_file() else {}
    report = {
        "target": target.name,
        "host_is_target": True,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bundle": str(bundle),
        "environment": environment(threads),
        "settings": {"batch_sizes": list(batch_sizes), "warmup": warmup, "min_iterations": iters, "min_seconds": min_s, "threads": threads},
        "dataset": {"val_root": val_root, "class_names": class_names, "num_images": len(samples),
                    "counts": {n: int((y == i).sum()) for i, n in enumerate(class_names)},
                    "skipped": val.skipped, "training": bundle_info.get("dataset", {}).get("training")},
        "results": results,
        "notes": notes,
        **(extra or {}),
    }
    if write:
        write_report(report, bundle)
    return report


def measure_artifact(path: Path, manifest: Manifest, runtime: Runtime, x: np.ndarray, y: np.ndarray, class_names: list[str],
                     batch_sizes, warmup: int, iters: int, min_s: float, threads: int, ref_pred) -> dict[str, Any]:
    """One report row. Never raises for a runtime/artifact failure: the row carries the error."""
    row: dict[str, Any] = {
        "name": path.name, "format": manifest.format, "precision": manifest.precision, "runtime": str(runtime),
        "path": str(path), "sha256": manifest.sha256, "size_mib": manifest.size_bytes / 2**20, "target": manifest.target,
        "status": str(Status.OK), "error": None, "accuracy": None, "latency": [], "execution_provider": None, "rss_mib": None,
    }
    try:
        cls = get_runner_class(manifest.format, runtime)
    except Exception as exc:
        row.update(status=str(Status.UNAVAILABLE), error=str(exc))
        return row
    if not cls.is_available():
        row.update(status=str(Status.UNAVAILABLE), error=cls.unavailable_reason())
        return row
    rss0 = rss_mib()
    runner = cls(path, manifest, threads=threads)
    try:
        read_manifest(path)  # sha256 must match before anything runs
        runner.activate()
        row["execution_provider"] = runner.execution_provider
        with task(f"Accuracy {path.name} [{runtime}]", len(x)) as advance:
            def fn(b):
                out = runner(b)
                advance(len(b))
                return out
            logits = predict(fn, x, batch_size=max(batch_sizes))
        acc = accuracy(logits, y, class_names, ref_pred)
        row["accuracy"] = acc.to_dict()
        row["_pred"] = logits.argmax(1)
        for b in batch_sizes:
            xb = np.ascontiguousarray(np.resize(x, (b,) + x.shape[1:])) if len(x) else np.zeros((b, 3, 224, 224), np.float32)
            runner.validate({runner.input_specs[0]["name"]: xb})
            with task(f"Latency {path.name} [{runtime}] b{b}", None):
                stats = measure_latency(lambda: runner(xb), b, warmup=warmup, min_iterations=iters, min_seconds=min_s)
            row["latency"].append(stats.to_dict())
        row["rss_mib"] = max(0.0, rss_mib() - rss0)
    except Exception as exc:  # a failing artifact is a row with its error, never a crash
        row.update(status=str(Status.FAILED), error=f"{type(exc).__name__}: {exc}")
    finally:
        try:
            runner.deactivate()
        except Exception:
            pass
    return row
