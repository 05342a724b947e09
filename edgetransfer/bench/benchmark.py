"""Benchmark every artifact of a bundle on this host: accuracy + latency, one row per
artifact x runtime. Torch-free: only the PyTorch runner itself needs torch, and its absence
turns its row into ``unavailable``."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Manifest, read_manifest
from ..bundle import BUILD_SCRIPT, SUSTAINED_PNG, Bundle, subsample
from ..host import cpu_budget, cpu_info, cuda_device, load_average, usable_cpus  # noqa: F401 (cpu_info: re-exported)
from ..data import ImageFolder, PreprocessSpec, load_arrays
from ..errors import ArtifactError, ConfigError, DataError, MissingExtraError
from ..progress import log, task
from ..runtime.base import deactivate_quietly
from ..runtime import get_runner_class, runtimes_for
from ..stats import budget_reason
from ..targets import Target
from ..types import Format, Precision, Runtime, Status
from .accuracy import accuracy, predict
from .judgement import judge_rows, recommend, split_accuracy
from .e2e import encoded_payloads, measure_end_to_end
from .gates_report import collect_gates
from .latency import measure_latency
from .memory import PeakMemory
from .paired import measure_paired
from .power import energy_figures, power_setup, sampling
from .report import write_report

@dataclass(frozen=True)
class BenchSettings:
    """Latency settings (see :class:`edgetransfer.targets.BenchmarkSettings`); ``None`` = target's."""

    batch_sizes: tuple[int, ...] | None = None
    warmup: int | None = None
    min_iterations: int | None = None
    min_seconds: float | None = None
    threads: int | None = None
    max_samples: int | None = None  # cap on validation images (None: all)
    e2e: bool = True  # also time JPEG bytes -> top-k (batch 1)
    e2e_images: int = 16  # distinct validation images cycled through by the end-to-end timing
    allow_missing_classes: bool = False  # a validation folder lacking a trained class is an error unless True
    power: bool = True  # sample the board's power sensor during the timed loops (bench/power.py)
    idle_seconds: float = 2.0  # idle-power measurement before the run (only where a sensor exists)
    sustained: float | None = None  # seconds of one artifact at batch 1 with board sensors sampled (bench/sustained.py)
    sustained_artifact: str | None = None  # its file name (default: the first measured row)

    def __post_init__(self) -> None:
        """Raises ConfigError for settings no benchmark can run with (checked before any work starts)."""
        if self.e2e_images < 1:
            raise ConfigError(f"e2e_images must be >= 1 (got {self.e2e_images}); to skip the end-to-end timing pass --no-e2e")


def environment(threads: int) -> dict[str, Any]:
    """Host facts for the report. ``threads``: the intra-op threads each runtime was given, or
    the usable CPUs when 0; ``usable_cpus``: min(affinity mask, cgroup quota) (:func:`edgetransfer.host.cpu_budget`),
    ``cpu_count``: the host's logical CPUs; ``threads_requested``: as asked."""
    versions = {}
    from ..runtime import runtime_distributions

    for pkg in dict.fromkeys(["numpy", "pillow", *runtime_distributions(), "timm", "onnx", "matplotlib"]):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {**cpu_info(), **cpu_budget(), "threads": threads or usable_cpus(), "threads_requested": threads,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def discover_artifacts(bundle: Path) -> list[tuple[Path, Manifest]]:
    """Artifacts of a bundle (:meth:`edgetransfer.bundle.Bundle.artifacts`)."""
    return Bundle(bundle).artifacts()


def load_validation(bundle: Path, class_names: list[str], data: Path | None, *, allow_missing_classes: bool = False) -> tuple[ImageFolder, str]:
    """The labelled validation set (:meth:`edgetransfer.bundle.Bundle.validation`)."""
    return Bundle(bundle).validation(class_names, data, allow_missing_classes=allow_missing_classes)


def evaluation_sets(bundle: Path, class_names: list[str], data: Path | None, *, allow_missing_classes: bool = False,
                    max_samples: int | None = None) -> tuple[list[tuple[str, ImageFolder, str]], list[str]]:
    """The labelled sets the report measures, headline first: ``[(role, folder, root)]`` and notes.

    ``data`` given: that folder alone (role ``data``). Else the bundle's test split (the headline
    figures, seen by no decision) then its val split; a bundle without a test split (made before
    the data roles, or ``--test-fraction 0``), or whose test images are not on this machine,
    measures val alone and the notes say that its figures are optimistic."""
    b = Bundle(bundle)
    if data is not None:
        folder, root = b.validation(class_names, data, allow_missing_classes=allow_missing_classes)
        return [("data", _cap(folder, max_samples), root)], []
    val, val_root = b.validation(class_names, None)
    sets, notes = [], []
    if b.has_test:
        try:
            test = b.folder("test")
            sets.append(("test", _cap(test, max_samples), str(test.root)))
        except DataError as exc:
            notes.append(f"figures are on val: the bundle's test images are not on this machine ({exc})")
    elif b.exists:
        notes.append("this bundle has no test split (made before train/val/test data roles, or with --test-fraction 0): "
                     "its figures are on val, which chose the best epoch and the INT8 model, so they are optimistic")
    sets.append(("val", _cap(val, max_samples), val_root))
    return sets, notes


def _cap(folder: ImageFolder, max_samples: int | None) -> ImageFolder:
    return dataclasses.replace(folder, samples=subsample(folder.samples, max_samples))


def runtimes_for_target(fmt: Format, target: Target) -> list[Runtime]:
    """Runtimes to measure ``fmt`` on: the target's runtimes (its priority order) that have a
    registered runner for ``fmt``, installed or not (a missing one becomes an ``unavailable``
    row); else the first registered runner for ``fmt``."""
    have = runtimes_for(fmt)
    rts = [r for r in target.runtimes if r in have]
    return rts or have[:1]


def plan_rows(arts: list[tuple[Path, Manifest]], target: Target) -> tuple[list[tuple[Path, Manifest, Runtime]], tuple | None]:
    """(artifact, manifest, runtime) triples in bundle order, and the fp32 reference triple
    (the fp32 ONNX on the target's first runtime, else the fp32 checkpoint)."""
    plan = [(p, m, rt) for p, m in arts for rt in runtimes_for_target(Format(m.format), target)]
    ref = min(plan, key=lambda it: (it[1].precision != Precision.FP32, it[1].format != Format.ONNX)) if plan else None
    return plan, ref


def benchmark_bundle(bundle: Path, target: Target, *, data: Path | None = None, settings: BenchSettings = BenchSettings(),
                     write: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every artifact of ``bundle`` on every runtime the target lists for its format:
    accuracy on the validation set, compute-only latency per batch size, end-to-end latency
    (JPEG bytes in, batch 1) and peak memory.

    A failing artifact becomes a row with status ``failed`` and its error; a missing runtime a row
    ``unavailable`` naming the extra to install; the others are still measured. Returns the report
    dict (also written as report.json / report.md / report.png when ``write``).
    Raises :class:`DataError` / :class:`ArtifactError` before any measurement for an unusable
    validation folder or bundle.
    """
    bundle = Path(bundle)
    arts = discover_artifacts(bundle)
    class_names = arts[0][1].class_names
    for p, m in arts:
        if m.class_names != class_names:
            raise ArtifactError(f"{p.name} has classes {m.class_names}, {arts[0][0].name} has {class_names}: mixed bundles are not supported")
    spec = PreprocessSpec.from_dict(arts[0][1].preprocessing)
    sets, notes = evaluation_sets(bundle, class_names, data, allow_missing_classes=settings.allow_missing_classes,
                                  max_samples=settings.max_samples)
    role, val, val_root = sets[0]
    samples = [s for _, f, _ in sets for s in f.samples]
    splits, at = {}, 0
    for r, f, _ in sets:
        splits[r], at = slice(at, at + len(f.samples)), at + len(f.samples)
    if not len(val.samples):
        raise DataError(f"{role} set {val_root} has no usable images")
    log(f"preprocessing {len(samples)} images ({', '.join(f'{r} {len(f.samples)}' for r, f, _ in sets)})")
    x, y = load_arrays(samples, spec)
    payloads = encoded_payloads(samples, settings.e2e_images, policy=spec.image) if settings.e2e else []
    tb = target.benchmark
    batch_sizes = tuple(settings.batch_sizes or tb.batch_sizes)
    warmup = tb.warmup if settings.warmup is None else settings.warmup
    iters = settings.min_iterations or tb.min_iterations
    min_s = tb.min_seconds if settings.min_seconds is None else settings.min_seconds
    threads = tb.threads if settings.threads is None else settings.threads
    on_target = host_is_target(target)
    if not on_target:
        notes.append(f"host measurement: this {platform.machine()} host is not the target {target.name} "
                     f"({target.arch}, {target.platform}); latency here ranks the artifacts, it is not the device's latency")
    usable, requested_threads = usable_cpus(), threads
    if threads and threads > usable:
        notes.append(f"{target.name} runs {threads} threads; this process may use {usable} CPU(s) (affinity mask / cgroup quota "
                     f"of a host with {os.cpu_count()} logical CPUs), so {usable} were used")
        threads = usable
    threads = threads or usable  # a runtime's own default (ONNX Runtime: physical cores) ignores affinity and quotas
    timing = dict(batch_sizes=batch_sizes, warmup=warmup, iters=iters, min_s=min_s, threads=threads)

    load_start = load_average()
    power_src, power_info = power_setup(settings.power, settings.idle_seconds)
    timing["power"] = (power_src, power_info.get("idle_w"))
    plan, ref_item = plan_rows(arts, target)
    order = [ref_item] + [it for it in plan if it is not ref_item] if ref_item else plan
    results, ref_pred = [], None
    for p, m, rt in order:
        row = measure_artifact(p, m, rt, x, y, class_names, target=target, ref_pred=ref_pred, payloads=payloads, spec=spec,
                               splits=splits, cache_dir=Bundle(bundle).trt_cache / "ort" / (m.sha256 or "unknown")[:16], **timing)
        if (p, m, rt) == ref_item and row["status"] == Status.OK:
            ref_pred = row["_pred"]
            row["accuracy"]["agreement_with_fp32"] = 1.0
            for a in row["accuracy_by_split"].values():
                a["agreement_with_fp32"] = 1.0
            row["reference"] = True
        results.append(row)
    measure_paired(results, order, x, target, threads, Bundle(bundle).trt_cache)  # INT8 vs fp32, interleaved
    sustained = None
    if settings.sustained:
        sustained = measure_sustained(results, order, x, target, threads, settings, power_src, Bundle(bundle).trt_cache)
    if power_src is not None:
        power_src.close()
    # keep bundle order in the report
    rank = {(str(p), str(rt)): i for i, (p, m, rt) in enumerate(plan)}
    results.sort(key=lambda r: rank[(r["path"], r["runtime"])])
    notes += judge_rows(results, {p.name: m for p, m in arts}, y, splits, target.max_top1_drop, class_names,
                        host_is_target=on_target)
    for r in results:
        r.pop("_pred", None)
        r.pop("_logits", None)
    results += not_built_rows(bundle, target)
    env = environment(threads)
    env["threads_requested"] = requested_threads
    env["load_average"] = {"start": load_start, "end": load_average()}
    busy = max([v[0] for v in env["load_average"].values() if v] or [0.0])
    if busy > (os.cpu_count() or 1):
        notes.append(f"the host was busy (1-minute load average up to {busy:.1f} on {os.cpu_count()} logical CPUs): "
                     "latency figures include contention from other processes; re-measure on an idle device")
    if ref_pred is None:
        notes.append("the fp32 reference could not be measured, so agreement_with_fp32 is missing for every row")
    if Precision.FP16 not in target.precisions:
        fp16 = [p.name for p, m in arts if m.precision == Precision.FP16]
        notes.append(f"fp16 is not among {target.name}'s precisions: it brings no speed on this kind of device, so no fp16 artifact is recommended for it"
                     + (f" ({', '.join(fp16)} exists for GPU targets; do not deploy it here)" if fp16 else ""))
    for p, m in arts:
        if m.details.get("status") == Status.BUDGET_EXCEEDED:
            b = m.details.get("budget", {})
            notes.append(f"{p.name} does not hold the {b.get('max_top1_drop', float('nan')) * 100:.2f} pt accuracy budget against "
                         f"the {b.get('vs') or 'fp32 ONNX model'} on val: {budget_reason(b)}")
        elif m.details.get("status") == Status.GATE_FAILED:
            notes.append(f"{p.name}: gate failed: {m.details.get('gate_failed_reason') or 'see its manifest'}")
    by_name = {p.name: m for p, m in arts}
    for p, m in arts:  # a bundle of mixed generations: an artifact made from an earlier version of its parent
        parent = by_name.get(m.parent_file or "")
        if parent is not None and m.parent_sha256 and parent.sha256 and parent.sha256 != m.parent_sha256:
            notes.append(f"{p.name} was made from an earlier {m.parent_file} (parent sha256 {m.parent_sha256[:12]}, now "
                         f"{parent.sha256[:12]}): it is not the current model's; re-make it (edgetransfer run does)")
    for r in results:
        if r.get("fallback"):
            notes.append(f"{r['name']} [{r['runtime']}]: {r['fallback']}")
    bundle_info = Bundle(bundle).info
    report = {
        "target": target.name,
        "host_is_target": on_target,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bundle": str(bundle),
        "environment": env,
        "settings": {"batch_sizes": list(batch_sizes), "warmup": warmup, "min_iterations": iters, "min_seconds": min_s,
                     "threads": threads, "e2e_images": len(payloads)},
        "dataset": {"val_root": val_root, "split": role, "class_names": class_names, "num_images": len(val.samples),
                    "counts": {n: int((y[splits[role]] == i).sum()) for i, n in enumerate(class_names)},
                    "splits": {r: {"root": root, "num_images": len(f.samples),
                                   "counts": {n: int((y[splits[r]] == i).sum()) for i, n in enumerate(class_names)}}
                               for r, f, root in sets},
                    "roles": bundle_info.get("dataset", {}).get("roles"),
                    "skipped": val.skipped, "training": bundle_info.get("dataset", {}).get("training"),
                    "image_policy": spec.image.to_dict(), "ignored": val.ignored,
                    "image_cases": val.image_cases() or (bundle_info.get("dataset", {}).get("image_cases") or {}).get(role, {})},  # the evaluated split's own counts
        "budget": {"max_top1_drop": target.max_top1_drop, "judged_on": role, "rule": "edgetransfer.stats.budget_judge"},
        "recommended": recommend(results),
        "results": results,
        "gates": collect_gates(by_name),
        "power": power_info,
        **({"sustained": sustained} if sustained else {}),
        "notes": notes,
        **(extra or {}),
    }
    if write:
        if sustained and not sustained.get("error"):
            from .report_board import write_sustained_plot

            sustained["plot"] = SUSTAINED_PNG if write_sustained_plot(sustained, Path(bundle) / SUSTAINED_PNG) else None
        write_report(report, bundle)
    return report


def measure_sustained(results, order, x, target: Target, threads: int, settings: BenchSettings, power_src, trt_cache: Path) -> dict[str, Any]:
    """The ``--sustained`` run (:func:`.sustained.run_sustained`) of one measured row at batch 1:
    ``settings.sustained_artifact`` or the first ``ok`` row; ``{"error": ...}`` when there is none."""
    from .sustained import BoardSensors, run_sustained

    ok = [r for r in results if r["status"] == Status.OK and (not settings.sustained_artifact or r["name"] == settings.sustained_artifact)]
    if not ok:
        return {"error": f"no measured row named {settings.sustained_artifact}" if settings.sustained_artifact else "no measured row"}
    row = ok[0]
    p, m, rt = next(it for it in order if str(it[0]) == row["path"] and str(it[2]) == row["runtime"])
    cls = get_runner_class(m.format, rt)
    runner = cls(p, m, threads=threads, options=cls.options_for(target, m, trt_cache / "ort" / (m.sha256 or "unknown")[:16]))
    try:
        runner.activate()
        call = runner.timed_call(np.ascontiguousarray(x[:1]))
        for _ in range(5):
            call()
        with task(f"Sustained {p.name} ({rt}), {settings.sustained:g} s", None):
            out = run_sustained(call, float(settings.sustained), sensors=BoardSensors(), power=power_src, sync=runner.synchronize)
    finally:
        deactivate_quietly(runner)
    return {"name": row["name"], "runtime": row["runtime"], "batch_size": 1, **out}


def host_is_target(target: Target) -> bool:
    """Whether this machine can stand for ``target``: same CPU architecture, and a CUDA GPU of a
    fitting compute capability when the target is a GPU target."""
    if not target.host_is_target():  # CPU architecture and operating system (an Android phone is not an arm64 Linux box)
        return False
    if target.compute_capability or target.min_compute_capability:
        from ..targets import parse_compute_capability

        dev = cuda_device()
        if dev is None:
            return False
        if target.compute_capability:
            return dev[1] == target.compute_capability
        return parse_compute_capability(dev[1]) >= parse_compute_capability(target.min_compute_capability)
    return True


def not_built_rows(bundle: Path, target: Target) -> list[dict[str, Any]]:
    """Rows for the engines a TensorRT target expects that the bundle does not hold: status
    ``not_runnable``, error ``not built on this host ...`` — never a number."""
    from ..runtime.tensorrt import NOT_BUILT_HERE

    rows = []
    for name, precision in Bundle(bundle).planned_engines(target):
        rows.append({
            "name": name, "format": str(Format.ENGINE), "precision": precision, "runtime": str(Runtime.TENSORRT),
            "path": str(Path(bundle) / name), "sha256": None, "size_mib": None, "target": target.name,
            "status": str(Status.NOT_RUNNABLE), "accuracy": None, "latency": [], "execution_provider": None, "rss_mib": None,
            "error": f"{NOT_BUILT_HERE}: build it on the {target.name} device with `edgetransfer build BUNDLE --target {target.name} "
                     f"--precision {precision}` or `bash {BUILD_SCRIPT} {precision}`, then benchmark there",
        })
    return rows


def _base_row(path: Path, manifest: Manifest, runtime: Runtime) -> dict[str, Any]:
    return {
        "name": path.name, "format": manifest.format, "precision": manifest.precision, "runtime": str(runtime),
        "path": str(path), "sha256": manifest.sha256, "size_mib": manifest.size_bytes / 2**20, "target": manifest.target,
        "status": str(Status.OK), "error": None, "accuracy": None, "latency": [], "latency_e2e": None, "memory": None,
        "execution_provider": None, "threads": None,
    }


def measure_artifact(path: Path, manifest: Manifest, runtime: Runtime, x: np.ndarray, y: np.ndarray, class_names: list[str], *,
                     batch_sizes, warmup: int, iters: int, min_s: float, threads: int, ref_pred=None, target: Target | None = None,
                     payloads: list[bytes] | None = None, spec: PreprocessSpec | None = None, cache_dir: Path | None = None,
                     splits: dict[str, slice] | None = None, power: tuple | None = None) -> dict[str, Any]:
    """One report row. Never raises for a runtime/artifact failure: the row carries the error.

    ``x`` float32 (N, 3, S, S) / ``y`` int64 (N,): the preprocessed validation set; ``payloads``:
    encoded images for the end-to-end figure (none: skipped); ``ref_pred`` int64 (N,): the fp32
    reference's predictions for ``agreement_with_fp32``; ``splits``: the data roles' slices of
    ``x``, headline first (None: one role, ``data``): ``accuracy`` is the headline role's (with
    ``split`` and its Wilson interval), ``accuracy_by_split`` each role's. The row's private
    ``_pred`` / ``_logits`` hold this artifact's predictions and logits over all of ``x``.
    ``power``: (power source or None, idle W) — each latency entry then
    carries ``power`` (:func:`.power.energy_figures`) and the row ``power``, its first batch size's.
    """
    row = _base_row(path, manifest, runtime)
    try:
        cls = get_runner_class(manifest.format, runtime)
    except Exception as exc:
        row.update(status=str(Status.UNAVAILABLE), error=str(exc))
        return row
    if not cls.is_available():
        row.update(status=str(cls.unavailable_status), error=cls.unavailable_reason())
        return row
    runner = None
    mem = PeakMemory()
    try:
        read_manifest(path)  # sha256 must match before anything runs
        runner = cls(path, manifest, threads=threads, options=cls.options_for(target, manifest, cache_dir))
        with mem:
            try:
                runner.activate()
            except MissingExtraError as exc:  # importable name, unusable package (or blocked)
                row.update(status=str(Status.UNAVAILABLE), error=str(exc))
                return row
            row.update(runner.runtime_info())
            static_batch = runner.input_specs[0]["shape"][0]  # .tflite/.pte/.mlpackage: a fixed batch of 1
            static_batch = static_batch if isinstance(static_batch, int) else None
            with task(f"Accuracy {path.name} ({runtime})", len(x)) as advance:
                def fn(b):
                    out = runner(b)
                    advance(len(b))
                    return out
                logits = predict(fn, x, batch_size=static_batch or max(batch_sizes))
            splits = splits or {"data": slice(0, len(y))}
            head = next(iter(splits))
            hs = splits[head]
            row["accuracy"] = {**accuracy(logits[hs], y[hs], class_names, None if ref_pred is None else ref_pred[hs]).to_dict(),
                               "split": head, "top1_interval95": split_accuracy(logits[hs], y[hs], None)["top1_interval95"]}
            row["accuracy_by_split"] = {r: split_accuracy(logits[sl], y[sl], None if ref_pred is None else ref_pred[sl])
                                        for r, sl in splits.items()}
            row["_pred"], row["_logits"] = logits.argmax(1), logits
            for b in batch_sizes:
                if static_batch is not None and b != static_batch:
                    row.setdefault("latency_skipped", []).append(f"batch {b}: the artifact has a static batch of {static_batch}")
                    continue
                xb = np.ascontiguousarray(np.resize(x, (b,) + x.shape[1:]))
                call = runner.timed_call(xb)  # inputs checked once; infer_impl is what is timed
                src, idle_w = power or (None, None)
                with task(f"Latency {path.name} ({runtime}) b{b}", None), sampling(src) as sampler:
                    stats = measure_latency(call, b, warmup=warmup, min_iterations=iters, min_seconds=min_s,
                                            sync=runner.synchronize)
                row["latency"].append(stats.to_dict())
                if sampler is not None:
                    row["latency"][-1]["power"] = energy_figures(sampler.watts, stats.mean_ms, b, idle_w)
                    row.setdefault("power", {"batch_size": b, **row["latency"][-1]["power"]})
            if payloads and spec is not None:
                e2e = runner.end_to_end_variant()  # ONNX Runtime: spinning off, so the pool does not steal the decoder's core
                try:
                    if e2e is not None:
                        e2e.activate()
                    with task(f"End-to-end {path.name} ({runtime}), JPEG -> top-k", None):
                        row["latency_e2e"] = measure_end_to_end(e2e or runner, spec, class_names, payloads, warmup=warmup,
                                                                min_iterations=iters, min_seconds=min_s).to_dict()
                    if e2e is not None:
                        row["latency_e2e"]["intra_op_spinning"] = e2e.runtime_info().get("intra_op_spinning")
                finally:
                    deactivate_quietly(e2e)
        row["memory"] = mem.stats.to_dict()
        if manifest.details.get("status") == Status.BUDGET_EXCEEDED:  # measured, but never reported as fine
            row.update(status=str(Status.BUDGET_EXCEEDED), error="over the target's accuracy budget (see its manifest)")
        elif manifest.details.get("status") == Status.GATE_FAILED:  # an agreement gate failed: measured, flagged
            row.update(status=str(Status.GATE_FAILED), error=manifest.details.get("gate_failed_reason") or "an agreement gate failed")
    except Exception as exc:  # a failing artifact is a row with its error, never a crash
        row.update(status=str(Status.FAILED), error=f"{type(exc).__name__}: {exc}")
        row.pop("_pred", None)
        row.pop("_logits", None)
        if mem.stats is not None:
            row["memory"] = mem.stats.to_dict()
    finally:
        deactivate_quietly(runner)
    return row
