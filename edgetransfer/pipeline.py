"""Composition of the stages. Stages talk only through files in the bundle directory:

``bundle.json`` (dataset split, class names, artifact list), ``model.pt`` (checkpoint),
``model.onnx`` (fp32), ``model.int8.qdq.onnx`` (INT8 QDQ), ``model.fp16.onnx`` (fp16, on request), the
target's mobile formats (``model[.int8].tflite``, ``model[.int8].pte``, ``model.{fp16,int8w}.mlpackage``,
``model*.ort`` + ``ort.required_operators.config``), ``golden/`` (golden images and the fp32 model's
logits, for ``edgetransfer selftest``), ``report.json`` / ``report.md`` / ``report.png``, each artifact
with its ``<file>.json`` manifest; for TensorRT targets ``build_engine.sh`` (the trtexec commands that
build the engines on the device); ``cache/calibration/`` holds the calibration tensor ranges (keyed,
see :mod:`edgetransfer.quantize.calibration`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import __version__
from .artifacts import atomic_write_json, read_manifest
from .bench.benchmark import BUNDLE_FILE, BenchSettings, benchmark_bundle
from .data import ImageFolder, PreprocessSpec, Sample, load_arrays, resolve_splits
from .errors import ArtifactError, BudgetExceededError, ConfigError, DataError, TargetError
from .progress import log
from .targets import Target, load_target
from .types import Runtime

CHECKPOINT = "model.pt"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.qdq.onnx"
ONNX_FP16 = "model.fp16.onnx"
CALIBRATION_CACHE = "cache/calibration"
PARITY_MAX_IMAGES = 256
GOLDEN_COUNT = 8


def read_bundle(bundle: Path) -> dict[str, Any]:
    p = Path(bundle) / BUNDLE_FILE
    if not p.is_file():
        raise ArtifactError(f"{bundle} is not an edgetransfer bundle (no {BUNDLE_FILE}); create one with 'edgetransfer train' or 'edgetransfer run'")
    return json.loads(p.read_text())


def register_artifact(bundle: Path, file: str) -> None:
    """Add ``file`` (validated against its manifest) to bundle.json's artifact list, atomically."""
    info = read_bundle(bundle)
    m = read_manifest(Path(bundle) / file)
    arts = [a for a in info.get("artifacts", []) if a["file"] != file]
    arts.append({"file": file, "format": m.format, "precision": m.precision, "sha256": m.sha256})
    order = {CHECKPOINT: 0, ONNX_FP32: 1}
    arts.sort(key=lambda a: order.get(a["file"], 2))
    info["artifacts"] = arts
    atomic_write_json(Path(bundle) / BUNDLE_FILE, info)


def _folder_from_bundle(info: dict[str, Any], key: str) -> ImageFolder:
    ds = info["dataset"]
    names = ds["class_names"]
    idx = {n: i for i, n in enumerate(names)}
    files = ds[key]
    missing = [f for f, _ in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"images recorded in the bundle are missing on this machine (e.g. {missing[0]}); re-run 'edgetransfer train' here")
    return ImageFolder(Path(ds["train_root" if key == "train_files" else "val_root"]), names, [Sample(Path(f), idx[c]) for f, c in files])


def parity_arrays(info: dict[str, Any], spec: PreprocessSpec):
    """Preprocessed validation images for parity checks (evenly spaced, at most PARITY_MAX_IMAGES)."""
    val = _folder_from_bundle(info, "val_files")
    s = val.samples
    if len(s) > PARITY_MAX_IMAGES:
        step = len(s) / PARITY_MAX_IMAGES
        s = [s[int(i * step)] for i in range(PARITY_MAX_IMAGES)]
    return load_arrays(s, spec)


def stage_train(data: Path, out: Path, cfg, *, val: Path | None = None, val_fraction: float = 0.2, target: Target | None = None):
    """Resolve the split, write bundle.json, train, register the checkpoint."""
    from .train import process_rank, train

    out = Path(out)
    train_set, val_set, how = resolve_splits(data, val, val_fraction=val_fraction, seed=cfg.seed)
    skipped = train_set.skipped + [s for s in val_set.skipped if s not in train_set.skipped]
    log(f"data: {how}; {len(train_set)} training and {len(val_set)} validation images, classes {train_set.class_names}")
    for s in skipped:
        log(f"[yellow]skipped {s['path']}: {s['reason']}")
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "edgetransfer_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": target.name if target else None,
        "dataset": {
            "data": str(Path(data).resolve()), "split": how, "class_names": train_set.class_names,
            "train_root": str(train_set.root), "val_root": str(val_set.root),
            "num_train": len(train_set), "num_val": len(val_set),
            "train_counts": train_set.counts(), "val_counts": val_set.counts(),
            "skipped": skipped, "num_skipped": len(skipped),
            "train_files": [[str(s.path.resolve()), train_set.class_names[s.label]] for s in train_set.samples],
            "val_files": [[str(s.path.resolve()), train_set.class_names[s.label]] for s in val_set.samples],
            "training": {"num_images": len(train_set), "counts": train_set.counts(), "num_skipped": len(skipped), "skipped": skipped},
        },
        "artifacts": [],
    }
    main = process_rank() == 0  # under torchrun only rank 0 writes files
    if main:
        atomic_write_json(out / BUNDLE_FILE, info)
    res = train(train_set, val_set, out, cfg)
    if main:
        register_artifact(out, CHECKPOINT)
    return res


def stage_export(bundle: Path, target: Target, cfg=None):
    from .export.onnx import ExportConfig, onnx_from_torch

    bundle = Path(bundle)
    info = read_bundle(bundle)
    ck = read_manifest(bundle / CHECKPOINT)
    x, _ = parity_arrays(info, PreprocessSpec.from_dict(ck.preprocessing))
    m = onnx_from_torch(bundle / CHECKPOINT, bundle / ONNX_FP32, x, opset_max=target.opset_max, target=target.name, cfg=cfg or ExportConfig())
    register_artifact(bundle, ONNX_FP32)
    stage_golden(bundle, info)
    return m


def stage_golden(bundle: Path, info: dict[str, Any] | None = None, count: int = GOLDEN_COUNT) -> Path:
    """Write ``bundle/golden/`` (``count`` validation images + the fp32 ONNX model's logits)."""
    from .bench.golden import write_golden

    bundle = Path(bundle)
    info = info or read_bundle(bundle)
    p = write_golden(bundle, bundle / ONNX_FP32, _folder_from_bundle(info, "val_files").samples, count)
    log(f"golden self-test set: {p.parent} ({count} images with fp32 logits)")
    return p


def quantization_preset(target: Target, preset: str | None = None, per_channel: bool | None = None):
    """The target's quantization preset, or the named one (``tensorrt``, ``ort-cpu``; "target" or
    None = the target's own) keeping the target's calibration recipe; ``per_channel`` overrides."""
    import dataclasses

    from .targets import QuantizationPreset

    q = target.quantization
    if preset not in (None, "target", q.name):
        q = QuantizationPreset.named(preset, calibration=q.calibration)
    if per_channel is not None and per_channel != q.per_channel:
        q = dataclasses.replace(q, per_channel=per_channel)
    return q


def stage_quantize(bundle: Path, target: Target, recipe_name: str | None = None, *, precision: str = "int8",
                   preset: str | None = None, per_channel: bool | None = None, max_accuracy_drop: float | None = None,
                   max_steps: int = 8, nodes_to_exclude=(), mode: str = "static", allow_unsupported_precision: bool = False):
    """fp32 ONNX -> INT8 QDQ (``precision="int8"``) or fp16 (``"fp16"``) in the bundle; returns the manifest.

    INT8: calibrated on the training split (recipe ``recipe_name`` or the preset's), held to
    ``max_accuracy_drop`` (None = the target's ``accuracy_budget.max_top1_drop``) on the
    validation split with at most ``max_steps`` exclusion steps. Raises
    :class:`BudgetExceededError` (exit code 3) after writing and registering an artifact that
    stays over budget (its manifest says ``budget_exceeded``). ``mode="dynamic"`` is refused.
    A precision the target does not list is a :class:`TargetError` before any work, unless
    ``allow_unsupported_precision`` (recorded in the manifest).
    """
    from .quantize.calibration import load_recipe, select_calibration_set

    if precision not in ("int8", "fp16"):
        raise ConfigError(f"--precision must be int8 or fp16 (got {precision!r})")
    if mode not in ("static", "dynamic"):
        raise ConfigError(f"--mode must be static or dynamic (got {mode!r})")
    if not target.supports(precision):
        if not allow_unsupported_precision:
            from .quantize.fp16 import CPU_NOTE

            why = f" {CPU_NOTE}" if precision == "fp16" else ""
            raise TargetError(f"target {target.name!r} does not list {precision} among its precisions "
                              f"({', '.join(map(str, target.precisions))}).{why} Choose a target that lists it "
                              "(edgetransfer targets list), or pass --allow-unsupported-precision to write it anyway")
        log(f"[yellow]{precision} is not among {target.name}'s precisions; written anyway (--allow-unsupported-precision)")
    bundle = Path(bundle)
    info = read_bundle(bundle)
    fp32 = read_manifest(bundle / ONNX_FP32)
    spec = PreprocessSpec.from_dict(fp32.preprocessing)
    if precision == "fp16":
        from .quantize.fp16 import fp16_from_onnx

        x, _ = parity_arrays(info, spec)
        m = fp16_from_onnx(bundle / ONNX_FP32, bundle / ONNX_FP16, x, target=target.name,
                           target_supports_fp16=target.supports("fp16"))
        register_artifact(bundle, ONNX_FP16)
        return m
    from .quantize.int8 import AccuracyBudget, qdq_int8_from_onnx, refuse_dynamic

    if mode == "dynamic":
        refuse_dynamic(bundle / ONNX_FP32)
    q = quantization_preset(target, preset, per_channel)
    budget = AccuracyBudget(max_top1_drop=target.max_top1_drop if max_accuracy_drop is None else max_accuracy_drop,
                            max_steps=max_steps)
    recipe = load_recipe(recipe_name or q.calibration)
    train = _folder_from_bundle(info, "train_files")
    calib = select_calibration_set(train, recipe)  # fails fast when the split is too small
    x, y = parity_arrays(info, spec)
    m = qdq_int8_from_onnx(bundle / ONNX_FP32, bundle / ONNX_INT8, calib, q, recipe, parity_x=x, parity_y=y,
                           target=target.name, nodes_to_exclude=tuple(nodes_to_exclude), budget=budget,
                           cache_dir=bundle / CALIBRATION_CACHE, opset_max=target.opset_max)
    register_artifact(bundle, ONNX_INT8)
    if m.details.get("status") == "budget_exceeded":
        b = m.details["budget"]
        raise BudgetExceededError(
            f"{ONNX_INT8}: top-1 drop {b['top1_drop']:.4f} vs fp32 ONNX exceeds the budget {b['max_top1_drop']:.4f} after "
            f"{len(b['steps']) - 1} exclusion step(s) ({m.details['num_excluded_nodes']} node(s) kept in float); the file is "
            "written with status budget_exceeded. Raise --max-steps, relax --max-accuracy-drop, try another calibration "
            "recipe (--calibration), or ship the fp32 model")
    return m


def build_formats(target: Target) -> list[str]:
    """The formats of ``target`` that :func:`stage_build` makes through the converter registry
    (``onnx`` is export/quantize's; TensorRT ``engine`` files are built on the device)."""
    from .builders import registered_builders

    mobile = {str(f) for f in registered_builders()}
    return [f for f in target.formats if f in mobile]


def check_build_backends(target: Target) -> None:
    """Fail before any long work when a converter the target needs is not installed
    (:class:`~edgetransfer.errors.MissingExtraError` naming the pip extra)."""
    from .builders import get_builder

    for fmt in build_formats(target):
        get_builder(fmt).require_backend()


def stage_build(bundle: Path, target: Target, recipe_name: str | None = None, formats: list[str] | None = None,
                threads: int | None = None) -> list[Any]:
    """Build the target's non-ONNX formats into the bundle and register them; returns their manifests.

    Dispatch is by format through the converter registry (:func:`edgetransfer.builders.get_builder`).
    A converter from the checkpoint makes every precision of the target it can hold (e.g. Core ML:
    fp16 and int8 weights); ``OrtFromOnnx`` converts each ONNX file of the bundle whose precision the
    target lists, then the bundle's reduced-operator config is (re)written. INT8 builds calibrate on
    the training images the target's calibration recipe selects, exactly as ONNX INT8 does.
    """
    from .builders import BuildInputs, get_builder
    from .builders.ort_mobile import ort_target_platform, write_operator_config
    from .quantize.calibration import load_recipe, select_calibration_set
    from .types import Format, Precision

    bundle = Path(bundle)
    info = read_bundle(bundle)
    fmts = list(formats) if formats is not None else build_formats(target)
    builders = {f: get_builder(f) for f in fmts}  # unknown format -> ConfigError before any work
    for cls in builders.values():
        cls.require_backend()
    ck = read_manifest(bundle / CHECKPOINT)
    x, y = parity_arrays(info, PreprocessSpec.from_dict(ck.preprocessing))
    calib, recipe = [], None
    if target.supports("int8") and any(Precision.INT8 in cls.precisions for cls in builders.values()):
        recipe = load_recipe(recipe_name or target.quantization.calibration)
        calib = select_calibration_set(_folder_from_bundle(info, "train_files"), recipe)
    options = {**target.extra, "ort_target_platform": ort_target_platform(target.arch)}
    if threads:
        options["threads"] = threads
    inputs = BuildInputs(parity_x=x, parity_y=y, calibration=calib, recipe=recipe, target=target.name, options=options)
    made = []
    for fmt, cls in builders.items():
        if cls.source_format == Format.ONNX:
            ort_files = []
            for a in read_bundle(bundle).get("artifacts", []):
                if a["format"] == "onnx" and target.supports(a["precision"]):
                    conv = cls(bundle / a["file"], inputs)
                    m = conv.build()
                    register_artifact(bundle, m.file)
                    made.append(m)
                    ort_files.append(bundle / m.file)
            if not ort_files:
                raise ArtifactError(f"format {fmt} converts the bundle's ONNX files but there are none; run 'edgetransfer export' first")
            cfg = write_operator_config(bundle, ort_files)
            log(f"reduced-operator config for a minimal ONNX Runtime build: {cfg}")
            continue
        conv = cls(bundle / CHECKPOINT, inputs)
        wanted = [p for p in cls.precisions if target.supports(p)]
        skipped = [str(p) for p in target.precisions if p not in cls.precisions]
        if skipped:
            log(f"{fmt}: {', '.join(skipped)} not made ({fmt} holds {', '.join(map(str, cls.precisions))})")
        for p in wanted:
            m = conv.build(p, bundle / cls.file_name(p))
            register_artifact(bundle, m.file)
            made.append(m)
    return made


def stage_benchmark(bundle: Path, target: Target, data: Path | None = None, settings: BenchSettings = BenchSettings()):
    return benchmark_bundle(Path(bundle), target, data=data, settings=settings)


def run(data: Path, out: Path, train_cfg, *, target: str = "x86-cpu", val: Path | None = None, export_cfg=None,
        recipe: str | None = None, settings: BenchSettings = BenchSettings(), val_fraction: float = 0.2,
        max_accuracy_drop: float | None = None, max_steps: int = 8) -> dict[str, Any]:
    """The main job: train -> export -> quantize -> benchmark. Validates settings before work.

    An INT8 model over the accuracy budget is still benchmarked (its row says so) and then
    :class:`BudgetExceededError` is raised (exit code 3)."""
    tgt = load_target(target)
    if not Path(data).is_dir():
        raise DataError(f"--data {data} is not a directory; pass an ImageFolder (DIR/<class>/<images>)")
    if "int8" in map(str, tgt.precisions):
        from .quantize.calibration import load_recipe
        from .quantize.int8 import AccuracyBudget

        load_recipe(recipe or tgt.quantization.calibration)  # fail fast on a bad recipe
        AccuracyBudget(tgt.max_top1_drop if max_accuracy_drop is None else max_accuracy_drop, max_steps)
    check_build_backends(tgt)  # a missing mobile backend fails now, not after training
    times = {}
    t = time.perf_counter()
    stage_train(Path(data), Path(out), train_cfg, val=val, val_fraction=val_fraction, target=tgt)
    times["train_s"] = time.perf_counter() - t
    from .train import process_rank

    if process_rank() != 0:  # torchrun: the other ranks only helped to train
        return {}
    t = time.perf_counter()
    stage_export(Path(out), tgt, export_cfg)
    times["export_s"] = time.perf_counter() - t
    over_budget = None
    if tgt.supports("int8"):
        t = time.perf_counter()
        try:
            stage_quantize(Path(out), tgt, recipe, max_accuracy_drop=max_accuracy_drop, max_steps=max_steps)
        except BudgetExceededError as exc:
            over_budget = exc
        times["quantize_s"] = time.perf_counter() - t
    if build_formats(tgt):
        t = time.perf_counter()
        stage_build(Path(out), tgt, recipe)
        times["build_s"] = time.perf_counter() - t
    if Runtime.TENSORRT in tgt.runtimes:  # engines are built on the device: leave the recipe in the bundle
        from .builders.tensorrt import write_build_script

        write_build_script(Path(out), tgt)
    t = time.perf_counter()
    report = benchmark_bundle(Path(out), tgt, data=None, settings=settings, write=False)
    times["benchmark_s"] = time.perf_counter() - t
    report["stage_seconds"] = times
    from .bench.report import write_report

    write_report(report, Path(out))
    if over_budget is not None:
        raise over_budget
    return report
