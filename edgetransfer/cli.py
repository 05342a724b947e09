"""Command line: argument parsing, exit codes and progress display only.

Exit codes: 0 success; 1 ``selftest`` found an artifact that does not reproduce its golden
logits; 2 bad input or environment (an EdgeTransferError, the message says how to fix it); 3 a
result breaks the target's budget (``compare``: NEW regresses against OLD).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import EdgeTransferError
from .progress import console, set_quiet

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Pretrained image model -> measured, deployable edge artifact.")
targets_app = typer.Typer(no_args_is_help=True, help="List and show target device profiles.")
app.add_typer(targets_app, name="targets")
devices_app = typer.Typer(no_args_is_help=True, help="Your own boards, reached over SSH: list, add, remove, check, trust.")
app.add_typer(devices_app, name="devices")

from .bundle import DEFAULT_TARGET  # noqa: E402


def _target_for(bundle: Path, target: Optional[str]):
    """The one target rule (:meth:`edgetransfer.bundle.Bundle.resolve_target`)."""
    from .bundle import Bundle

    return Bundle(Path(bundle)).resolve_target(target)


def _settings(batch_sizes, warmup, iterations, min_seconds, threads, max_samples=None, e2e=True, allow_missing_classes=False):
    from .bench.benchmark import BenchSettings

    return BenchSettings(batch_sizes=tuple(batch_sizes) if batch_sizes else None, warmup=warmup, min_iterations=iterations,
                         min_seconds=min_seconds, threads=threads, max_samples=max_samples, e2e=e2e,
                         allow_missing_classes=allow_missing_classes)


def _train_cfg(no_cache: bool, **kw):
    from .train import TrainConfig

    return TrainConfig(feature_cache=not no_cache, **kw)


_RECIPE = ("model", "arch", "epochs", "batch_size", "lr", "seed", "head", "hidden", "dropout", "freeze", "trainable_blocks",
           "freeze_bn", "finetune_epochs", "unfreeze", "finetune_lr", "backbone_lr_factor", "layer_decay", "warmup_epochs",
           "weight_decay", "label_smoothing", "class_weights", "balanced_sampler", "augment", "views", "early_stopping",
           "strict", "resume", "cache_dir", "device", "amp", "input_size")


def _recipe(params: dict) -> dict:
    """The TrainConfig fields among a command's parameters."""
    kw = {k: params[k] for k in _RECIPE}
    kw["cache_dir"] = str(kw["cache_dir"]) if kw["cache_dir"] else None
    return kw


def _finish(report, as_json: bool):
    from .bench.report import print_table

    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        print_table(report)
    failed = [r for r in report["results"] if r["status"] == "failed"]
    if failed:
        console.print(f"[yellow]{len(failed)} artifact(s) failed; see their error in the report")


# -- options shared by several commands --------------------------------------------------------
ModelOpt = typer.Option("efficientnet-lite0", "--model", help="efficientnet-lite0 (offline ImageNet weights) | timm:NAME | torchvision:NAME[:WEIGHTS] | file:PATH")
ArchOpt = typer.Option(None, "--arch", help="architecture of a plain state dict given with file:PATH (timm:NAME or torchvision:NAME)")
TargetOpt = typer.Option(None, "--target", help="target profile name (targets/*.yaml) or path")
BatchSizesOpt = typer.Option(None, "--bench-batch", help="latency batch sizes (repeat), default: the target's")
InventoryOpt = typer.Option(None, "--inventory", help="device inventory YAML (default $EDGETRANSFER_DEVICES or ~/.config/edgetransfer/devices.yaml)")
# the transfer-learning recipe (train and run); see edgetransfer.train.TrainConfig
FreezeOpt = typer.Option("backbone", "--freeze", help="backbone (train the new head) | none (train everything)")
BlocksOpt = typer.Option(0, "--trainable-blocks", min=0, help="with --freeze backbone: the last N backbone stages train too")
FreezeBnOpt = typer.Option(False, "--freeze-bn", help="keep every BatchNorm frozen, even in trainable stages (small datasets)")
FtEpochsOpt = typer.Option(0, "--finetune-epochs", min=0, help="second phase: unfreeze and fine-tune for N epochs")
UnfreezeOpt = typer.Option("last:1", "--unfreeze", help="stages the fine-tune phase trains: last:K | all")
FtLrOpt = typer.Option(None, "--finetune-lr", help="head lr of the fine-tune phase (default --lr / 10)")
BbFactorOpt = typer.Option(0.1, "--backbone-lr-factor", help="backbone lr = head lr x this")
LayerDecayOpt = typer.Option(None, "--layer-decay", help="lr x this per stage away from the head (e.g. 0.7)")
WarmupOpt = typer.Option(0.0, "--warmup-epochs", help="linear lr warm-up per phase, then cosine")
WdOpt = typer.Option(1e-4, "--weight-decay")
SmoothOpt = typer.Option(0.1, "--label-smoothing")
ClassWOpt = typer.Option(False, "--class-weights", help="class-weighted loss (imbalanced data)")
BalancedOpt = typer.Option(False, "--balanced-sampler", help="class-balanced sampling (imbalanced data)")
AugmentOpt = typer.Option(False, "--augment", help="random resized crop + flip when the whole network runs")
ViewsOpt = typer.Option(1, "--views", min=1, help="cached feature views per image (view 0 plain, others augmented)")
EarlyOpt = typer.Option(None, "--early-stopping", help="end a phase after N epochs without a better validation result")
StrictOpt = typer.Option(False, "--strict", help="an undecodable image is an error instead of being skipped")
ResumeOpt = typer.Option(False, "--resume", help="continue the interrupted run in --out (OUT/last.pt)")
CacheDirOpt = typer.Option(None, "--cache-dir", help="on-disk feature cache directory (default: memory only)")
DeviceOpt = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: cuda when available)")
AmpOpt = typer.Option("auto", "--amp", help="auto | off | bf16 | fp16 (auto: bf16 on CUDA where supported, else fp16; off on CPU)")
InputSizeOpt = typer.Option(None, "--input-size", help="crop size in px (default: the model's)")


@app.command()
def run(
    data: Path = typer.Option(..., "--data", help="ImageFolder: DIR/<class>/<images> or DIR/{train,val}/<class>/<images>"),
    out: Path = typer.Option(..., "--out", help="bundle directory to write"),
    model: str = ModelOpt,
    arch: Optional[str] = ArchOpt,
    target: str = typer.Option(DEFAULT_TARGET, "--target", help="target profile name (targets/*.yaml) or path"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    val: Optional[Path] = typer.Option(None, "--val", help="validation ImageFolder (default DIR/val, else a seeded split)"),
    val_fraction: float = typer.Option(0.2, "--val-fraction"),
    head: str = typer.Option("linear", "--head", help="linear | mlp"),
    hidden: int = typer.Option(512, "--hidden"),
    dropout: float = typer.Option(0.2, "--dropout"),
    no_cache: bool = typer.Option(False, "--no-feature-cache", help="run the whole network every step"),
    freeze: str = FreezeOpt, trainable_blocks: int = BlocksOpt, freeze_bn: bool = FreezeBnOpt, finetune_epochs: int = FtEpochsOpt,
    unfreeze: str = UnfreezeOpt, finetune_lr: Optional[float] = FtLrOpt, backbone_lr_factor: float = BbFactorOpt,
    layer_decay: Optional[float] = LayerDecayOpt, warmup_epochs: float = WarmupOpt, weight_decay: float = WdOpt,
    label_smoothing: float = SmoothOpt, class_weights: bool = ClassWOpt, balanced_sampler: bool = BalancedOpt,
    augment: bool = AugmentOpt, views: int = ViewsOpt, early_stopping: Optional[int] = EarlyOpt, strict: bool = StrictOpt,
    resume: bool = ResumeOpt, cache_dir: Optional[Path] = CacheDirOpt, device: Optional[str] = DeviceOpt, amp: str = AmpOpt,
    input_size: Optional[int] = InputSizeOpt,
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration recipe name or YAML path"),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help="INT8 top-1 budget vs fp32 (fraction); default: the target's"),
    max_steps: int = typer.Option(8, "--max-steps", min=0, help="INT8 budget steps (nodes kept in float)"),
    bench_batch: Optional[List[int]] = BatchSizesOpt,
    warmup: Optional[int] = typer.Option(None, "--warmup"),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="minimum timed iterations"),
    min_seconds: Optional[float] = typer.Option(None, "--min-seconds"),
    threads: Optional[int] = typer.Option(None, "--threads", help="inference threads (0 = all cores)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Train, export, quantize and benchmark in one go; writes the bundle to --out."""
    from .pipeline import run as run_pipeline

    set_quiet(quiet or as_json)
    cfg = _train_cfg(no_cache, **_recipe(locals()))
    report = run_pipeline(data, out, cfg, target=target, val=val, recipe=calibration,
                          settings=_settings(bench_batch, warmup, iterations, min_seconds, threads), val_fraction=val_fraction,
                          max_accuracy_drop=max_accuracy_drop, max_steps=max_steps)
    if not report:  # torchrun rank > 0: rank 0 exports, quantizes and reports
        return
    _finish(report, as_json)
    if not as_json:
        console.print(f"bundle: {out}  (report.json, report.md)")


@app.command()
def train(
    data: Path = typer.Argument(..., help="ImageFolder"),
    out: Path = typer.Option(..., "--out"),
    model: str = ModelOpt,
    arch: Optional[str] = ArchOpt,
    target: str = typer.Option(DEFAULT_TARGET, "--target"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    val: Optional[Path] = typer.Option(None, "--val"),
    val_fraction: float = typer.Option(0.2, "--val-fraction"),
    head: str = typer.Option("linear", "--head"),
    hidden: int = typer.Option(512, "--hidden"),
    dropout: float = typer.Option(0.2, "--dropout"),
    no_cache: bool = typer.Option(False, "--no-feature-cache"),
    freeze: str = FreezeOpt, trainable_blocks: int = BlocksOpt, freeze_bn: bool = FreezeBnOpt, finetune_epochs: int = FtEpochsOpt,
    unfreeze: str = UnfreezeOpt, finetune_lr: Optional[float] = FtLrOpt, backbone_lr_factor: float = BbFactorOpt,
    layer_decay: Optional[float] = LayerDecayOpt, warmup_epochs: float = WarmupOpt, weight_decay: float = WdOpt,
    label_smoothing: float = SmoothOpt, class_weights: bool = ClassWOpt, balanced_sampler: bool = BalancedOpt,
    augment: bool = AugmentOpt, views: int = ViewsOpt, early_stopping: Optional[int] = EarlyOpt, strict: bool = StrictOpt,
    resume: bool = ResumeOpt, cache_dir: Optional[Path] = CacheDirOpt, device: Optional[str] = DeviceOpt, amp: str = AmpOpt,
    input_size: Optional[int] = InputSizeOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Transfer learning: new head, frozen backbone, optional fine-tune; writes OUT/model.pt (+ manifest,
    bundle.json), OUT/last.pt (for --resume), OUT/metrics.csv/.json. Works under torchrun (DDP)."""
    from .pipeline import stage_train
    from .targets import load_target
    from .train import process_rank

    set_quiet(quiet)
    tgt = load_target(target)
    res = stage_train(data, out, _train_cfg(no_cache, **_recipe(locals())), val=val, val_fraction=val_fraction, target=tgt)
    if process_rank() == 0:
        console.print(f"checkpoint: {res.checkpoint} (val top-1 {res.best_val_top1:.4f}, {res.best_phase} phase, epoch {res.best_epoch})")


@app.command()
def export(
    bundle: Path = typer.Argument(...),
    target: Optional[str] = TargetOpt,
    opset: Optional[int] = typer.Option(None, "--opset", help="default: min(18, target's opset_max)"),
    no_dynamo: bool = typer.Option(False, "--no-dynamo", help="use the TorchScript exporter only"),
    simplify: bool = typer.Option(False, "--simplify", help="simplify with onnxslim (parity-checked against the unsimplified graph)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """PyTorch checkpoint -> fp32 ONNX (eval mode, dynamic batch, shape-inferred, checked, parity vs PyTorch)."""
    from .export.onnx import ExportConfig
    from .pipeline import stage_export

    set_quiet(quiet)
    m = stage_export(bundle, _target_for(bundle, target), ExportConfig(opset=opset, dynamo=not no_dynamo, simplify=simplify))
    p = m.details["parity"]
    console.print(f"{bundle / m.file}: opset {m.details['opset']}, {m.details['exporter']}"
                  + (f", onnxslim {m.details['simplified']['nodes_before']} -> {m.details['simplified']['nodes_after']} nodes" if simplify else "")
                  + f", parity max |diff| {p['max_abs']:.2e}, mean {p['mean_abs']:.2e}, agreement {p['agreement']:.4f}")


@app.command()
def quantize(
    bundle: Path = typer.Argument(...),
    target: Optional[str] = TargetOpt,
    precision: str = typer.Option("int8", "--precision", help="int8 (static QDQ) | fp16 (for GPU targets)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="quantization preset: target (default: the target's own) | tensorrt (signed symmetric INT8, zero point 0) | ort-cpu"),
    per_channel: Optional[bool] = typer.Option(None, "--per-channel/--per-tensor", help="weight scales per output channel (default: the preset's)"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration recipe name or YAML path"),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", help="largest top-1 drop vs fp32 ONNX, a fraction (0.005 = 0.5 pt); default: the target's budget"),
    max_steps: int = typer.Option(8, "--max-steps", min=0, help="budget steps that keep the most sensitive nodes in float (0: measure only)"),
    exclude_node: Optional[List[str]] = typer.Option(None, "--exclude-node", help="node name kept in float (repeat)"),
    mode: str = typer.Option("static", "--mode", help="static (calibrated QDQ); dynamic is refused for convolutional models"),
    allow_unsupported_precision: bool = typer.Option(False, "--allow-unsupported-precision", help="write a precision the target does not list (recorded)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """fp32 ONNX -> INT8 QDQ ONNX held to an accuracy budget (or fp16 ONNX with --precision fp16).

    Exit code 3 when the INT8 model stays over the budget (written with status budget_exceeded)."""
    from .pipeline import stage_quantize

    set_quiet(quiet)
    tgt = _target_for(bundle, target)
    m = stage_quantize(bundle, tgt, calibration, precision=precision, preset=preset, per_channel=per_channel,
                       max_accuracy_drop=max_accuracy_drop, max_steps=max_steps, nodes_to_exclude=exclude_node or (),
                       mode=mode, allow_unsupported_precision=allow_unsupported_precision)
    p = m.details.get("parity", {})
    if precision == "fp16":
        console.print(f"{bundle / m.file}: max |diff| {p['max_abs']:.2e}, mean {p['mean_abs']:.2e}, agreement {p['agreement']:.4f}")
        if m.details.get("target_note"):
            console.print(f"[yellow]note:[/] {m.details['target_note']}")
        return
    d = m.details
    console.print(f"{bundle / m.file}: preset {d['preset']['name']}, {d['calibration']['method']}, "
                  f"{'per-channel' if d['preset']['per_channel'] else 'per-tensor'}; agreement with fp32 {p.get('agreement', float('nan')):.4f}, "
                  f"top-1 {d.get('val_top1_int8', float('nan')):.4f} (fp32 {d.get('val_top1_fp32', float('nan')):.4f}, "
                  f"budget {d['budget']['max_top1_drop']:.4f}); {d['num_excluded_nodes']} node(s) kept in float")


@app.command()
def benchmark(
    bundle: Path = typer.Argument(...),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled validation ImageFolder (default: the bundle's split)"),
    target: Optional[str] = TargetOpt,
    bench_batch: Optional[List[int]] = BatchSizesOpt,
    warmup: Optional[int] = typer.Option(None, "--warmup"),
    iterations: Optional[int] = typer.Option(None, "--iterations"),
    min_seconds: Optional[float] = typer.Option(None, "--min-seconds"),
    threads: Optional[int] = typer.Option(None, "--threads"),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", help="cap on validation images (evenly spaced)"),
    e2e: bool = typer.Option(True, "--e2e/--no-e2e", help="also time JPEG bytes -> top-k (decode + preprocess + infer + softmax)"),
    allow_missing_classes: bool = typer.Option(False, "--allow-missing-classes", help="accept a --data folder lacking some trained classes"),
    device: Optional[List[str]] = typer.Option(None, "--device", help="run on this board of the inventory instead (repeat for several, in parallel)"),
    inventory: Optional[Path] = InventoryOpt,
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="with --device: where the combined report goes (default BUNDLE/devices)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Accuracy and latency of every artifact in BUNDLE here, or with --device on your boards over SSH.

    Without --device: measured on this machine, report.json/.md/.png written into BUNDLE; needs only
    the device extra (numpy, Pillow, PyYAML, onnxruntime): pip install 'edgetransfer[device]'. With
    --device (repeatable): the boards of the inventory run the benchmark in parallel; the combined
    report goes to BUNDLE/devices/ (or --report-dir). --target overrides the devices' targets."""
    settings = _settings(bench_batch, warmup, iterations, min_seconds, threads, max_samples, e2e, allow_missing_classes)
    set_quiet(quiet or as_json)
    if device:
        _benchmark_devices(bundle, device, inventory, target, data, settings, report_dir, as_json)
        return
    from .pipeline import stage_benchmark

    report = stage_benchmark(bundle, _target_for(bundle, target), data, settings)
    _finish(report, as_json)


def _benchmark_devices(bundle, names, inventory, target, data, settings, report_dir, as_json):
    from .remote.report import print_devices_table
    from .errors import RemoteError
    from .remote.bench import REPORT_DIR, benchmark_on_devices
    from .remote.inventory import Inventory

    inv = Inventory.load(inventory)
    devices = [inv.get(n) for n in names]
    combined = benchmark_on_devices(bundle, devices, target=target, data=data, settings=settings, report_dir=report_dir)
    out = Path(report_dir) if report_dir else Path(bundle) / REPORT_DIR
    if as_json:
        sys.stdout.write(json.dumps(combined, indent=2, default=str) + "\n")
    else:
        print_devices_table(combined)
        console.print(f"report: {out / 'report.md'} (and report.json)")
    failed = [s for s in combined["devices"] if s["status"] != "ok"]
    if failed:
        raise RemoteError(f"{len(failed)} of {len(combined['devices'])} device(s) failed ({', '.join(s['device'] for s in failed)}); "
                          f"their errors are in {out / 'report.md'}")


def _build_mobile(bundle: Path, tgt, formats: Optional[List[str]], calibration: Optional[str]) -> None:
    """The target's mobile formats (LiteRT, ExecuTorch, Core ML, ORT mobile), each parity-checked."""
    from .pipeline import stage_build

    made = stage_build(bundle, tgt, calibration, formats=list(formats) if formats else None)
    for m in made:
        p = m.details.get("parity") or {}
        figure = (f"agreement with fp32 {p['agreement']:.4f}, max |diff| {p['max_abs']:.2e}" if p
                  else m.details.get("parity_status", "parity not measured"))
        console.print(f"{bundle / m.file}: {m.format} {m.precision}, {m.size_bytes / 2**20:.2f} MiB, {figure}")
    if not made:
        console.print(f"[yellow]nothing to build: target {tgt.name} lists no mobile format (pass --format tflite|pte|mlpackage|ort)")


@app.command()
def build(
    bundle: Path = typer.Argument(..., help="bundle directory (from 'edgetransfer run' or a copy of it on the device)"),
    target: Optional[str] = TargetOpt,
    precision: str = typer.Option("best", "--precision", help="fp16 | int8 | best | fp32 (best: int8 with fp16 fallback where the target has INT8)"),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="build for this DLA core (GPU fallback on); targets with DLA cores only"),
    script_only: bool = typer.Option(False, "--script-only", help="only write BUNDLE/build_engine.sh (trtexec commands); needs no TensorRT"),
    requantize: bool = typer.Option(False, "--requantize", help="when the INT8 Q/DQ ONNX was made with another preset, requantize it with the target's (needs the training images)"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration recipe name or YAML path (mobile INT8 builds; TensorRT: with --requantize)"),
    force: bool = typer.Option(False, "--force", help="rebuild even when a current engine exists"),
    tensorrt_version: Optional[str] = typer.Option(None, "--tensorrt-version", help="with --script-only: write trtexec flags for this TensorRT version (default: the target's)"),
    fmt: Optional[List[str]] = typer.Option(None, "--format", help="mobile format to build (repeat): tflite, pte, mlpackage, ort; default: the target's formats"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Per-target builds. GPU targets (format 'engine'): a TensorRT engine built on this device (it
    only runs with the TensorRT version and GPU that built it; BUNDLE/build_engine.sh is always
    written too). Mobile targets: .tflite / .pte / .mlpackage / .ort from the bundle's checkpoint and
    ONNX files, each parity-checked against the fp32 model (calibration with --calibration for INT8)."""
    from .builders.tensorrt import build_engine, int8_onnx_problems, plan_engine_build, write_build_script
    from .errors import TargetError

    set_quiet(quiet)
    tgt = _target_for(bundle, target)
    if fmt or "engine" not in tgt.formats:
        _build_mobile(bundle, tgt, fmt, calibration)
        return
    try:
        plan = plan_engine_build(bundle, tgt, precision, dla_core=dla_core, tensorrt_version=tensorrt_version)
    except TargetError:
        if not (requantize and precision in ("int8", "best") and int8_onnx_problems(bundle, tgt)):
            raise
        from .pipeline import stage_quantize

        console.print(f"requantizing {bundle}/model.int8.qdq.onnx with target {tgt.name}'s preset")
        stage_quantize(bundle, tgt, calibration)
        plan = plan_engine_build(bundle, tgt, precision, dla_core=dla_core, tensorrt_version=tensorrt_version)
    script = write_build_script(bundle, tgt, tensorrt_version=tensorrt_version, dla_core=dla_core)
    if script_only:
        import shlex

        console.print(f"{script} written; on the device run: bash {script.name} {precision}")
        console.print("equivalent trtexec command: " + shlex.join(plan.trtexec_args()))
        return
    m, reused = build_engine(bundle, tgt, precision, dla_core=dla_core, force=force)
    t = m.details["tensorrt"]
    console.print(f"{bundle / m.file}: {'reused (current)' if reused else 'built'}; {m.precision} (asked {precision}), TensorRT {t['version']}, "
                  f"compute capability {t['compute_capability']} ({t['device_name']}), profile batch {t['profile']['min'][0]}..{t['profile']['max'][0]}")


@app.command()
def selftest(
    bundle: Path = typer.Argument(..., help="bundle directory (with golden/golden.json)"),
    target: Optional[str] = TargetOpt,
    threads: int = typer.Option(0, "--threads", help="inference threads (0 = runtime default)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
):
    """Check that every artifact reproduces the bundle's golden logits within its precision's
    tolerance. Exit 0 when all that can run here pass, 1 otherwise."""
    from rich.markup import escape
    from rich.table import Table

    from .bench.golden import selftest as run_selftest

    res = run_selftest(bundle, _target_for(bundle, target), threads=threads)
    if as_json:
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
    else:
        t = Table(title=f"selftest {bundle} — {res['golden_images']} golden images, reference {res['reference']['file']}")
        for c in ("artifact", "precision", "runtime", "status", "max |diff|", "tolerance", "agreement", "detail"):
            t.add_column(c)
        for r in res["rows"]:
            t.add_row(r["name"], r["precision"], r["runtime"], r["status"],
                      f"{r['max_abs']:.2e}" if r.get("max_abs") is not None else "—",
                      f"{r['tolerance']['max_abs']:.0e}" if r.get("tolerance") else "—",
                      f"{r['agreement']:.3f}" if r.get("agreement") is not None else "—", escape((r.get("error") or "")[:90]))
        console.print(t)
        console.print(f"preprocessed inputs match the reference host: {'yes' if res['input_ok'] else 'NO'} "
                      f"(max diff {res['input_max_diff']:.2e})")
        for n in res["notes"]:
            console.print(f"[yellow]note:[/] {escape(n)}")
        console.print("[bold green]PASS" if res["passed"] else "[bold red]FAIL")
    if not res["passed"]:
        raise SystemExit(1)


@app.command()
def compare(
    old: Path = typer.Argument(..., help="baseline report.json"),
    new: Path = typer.Argument(..., help="candidate report.json"),
    target: Optional[str] = typer.Option(None, "--target", help="target whose accuracy budget applies (default: NEW's target)"),
    max_top1_drop: Optional[float] = typer.Option(None, "--max-top1-drop", help="fraction, e.g. 0.005 (default: the target's budget)"),
    max_p50_ratio: Optional[float] = typer.Option(None, "--max-p50-ratio", help="fail when NEW p50 > this x OLD p50 (e.g. 1.10)"),
    max_p50_ms: Optional[float] = typer.Option(None, "--max-p50-ms", help="fail when NEW p50 (smallest batch) exceeds this"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON on stdout"),
):
    """Print what changed from OLD to NEW; exit 3 when NEW breaks the budgets (a CI regression gate)."""
    from rich.markup import escape
    from rich.table import Table

    from .bench.compare import compare_reports
    from .bench.report import load_report
    from .errors import BudgetExceededError, TargetError
    from .targets import load_target

    o, n = load_report(old), load_report(new)
    if max_top1_drop is None:
        try:
            max_top1_drop = load_target(target or n.get("target") or DEFAULT_TARGET).max_top1_drop
        except TargetError:
            if target:
                raise
            max_top1_drop = load_target(DEFAULT_TARGET).max_top1_drop
    res = compare_reports(o, n, max_top1_drop=max_top1_drop, max_p50_ratio=max_p50_ratio, max_p50_ms=max_p50_ms)
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict(), indent=2, default=str) + "\n")
    else:
        t = Table(title=f"{old} -> {new}")
        for c in ("artifact", "runtime", "metric", "old", "new", "change", "verdict"):
            t.add_column(c)
        for c in res.changes:
            style = "bold red" if c.verdict == "regression" else None
            t.add_row(c.artifact, c.runtime, c.metric, str(c.old), str(c.new), c.delta,
                      escape(c.verdict + (f": {c.reason}" if c.reason else "")), style=style)
        console.print(t)
        for note in res.notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
    if not res.passed:
        raise BudgetExceededError(f"{new} breaks the budgets against {old}: " + "; ".join(
            f"{c.artifact} [{c.runtime}] {c.metric}: {c.reason}" for c in res.regressions)
            + " — fix the regression, or relax the budget (--max-top1-drop / --max-p50-ratio) if it is intended")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    epochs: int = typer.Option(30, "--epochs"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """The main job on the embedded default: scikit-learn's handwritten digits, EfficientNet-Lite0."""
    from .demo import write_digits_imagefolder
    from .pipeline import run as run_pipeline
    from .train import TrainConfig

    set_quiet(quiet)
    data = write_digits_imagefolder(out.parent / f"{out.name}-data" / "digits")
    console.print(f"digits ImageFolder: {data}")
    report = run_pipeline(data, out, TrainConfig(epochs=epochs, lr=3e-3), target=DEFAULT_TARGET)
    _finish(report, False)
    console.print(f"bundle: {out}  (report.json, report.md)")


@targets_app.command("list")
def targets_list():
    """Known target profiles."""
    from rich.table import Table

    from .targets import list_targets, load_target

    t = Table()
    for c in ("name", "arch", "runtimes", "precisions", "TensorRT / CC / DLA", "description"):
        t.add_column(c)
    for n in list_targets():
        tg = load_target(n)
        gpu = (f"{tg.tensorrt_version} / {tg.compute_capability or '>=' + str(tg.min_compute_capability)} / {tg.dla_cores}"
               if tg.tensorrt_version else "—")
        t.add_row(n, tg.arch, ", ".join(map(str, tg.runtimes)), ", ".join(map(str, tg.precisions)), gpu, tg.description)
    console.print(t)


@targets_app.command("show")
def targets_show(name: str):
    """Every field of one target profile."""
    from .targets import load_target

    sys.stdout.write(json.dumps(load_target(name).to_dict(), indent=2) + "\n")


@devices_app.command("list")
def devices_list(inventory: Optional[Path] = InventoryOpt):
    """The boards of the inventory."""
    from rich.table import Table

    from .remote.inventory import Inventory

    inv = Inventory.load(inventory)
    if not inv.devices:
        console.print(f"no devices in {inv.path}; add one with 'edgetransfer devices add NAME --host USER@HOST --target TARGET'")
        return
    t = Table(title=str(inv.path))
    for c in ("name", "host", "target", "workdir", "runs in"):
        t.add_column(c)
    for d in inv.devices.values():
        t.add_row(d.name, d.destination, d.target or "(bundle's)", d.workdir, d.runs_in)
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 160).print(t)


@devices_app.command("add")
def devices_add(
    name: str = typer.Argument(..., help="a short name, e.g. orin-desk"),
    host: str = typer.Option(..., "--host", help="[USER@]HOST of the board"),
    port: int = typer.Option(22, "--port"),
    user: Optional[str] = typer.Option(None, "--user", help="login (or give it as USER@HOST)"),
    target: Optional[str] = typer.Option(None, "--target", help="target profile of the board (default: the bundle's)"),
    workdir: str = typer.Option("edgetransfer", "--workdir", help="directory on the board (relative = under the login's home)"),
    python: str = typer.Option("python3", "--python", help="the board's Python with edgetransfer[device] installed"),
    env: Optional[List[str]] = typer.Option(None, "--env", help="NAME=VALUE for the remote benchmark (repeat)"),
    docker_image: Optional[str] = typer.Option(None, "--docker-image", help="run the benchmark in this image (built from Dockerfile.jetson)"),
    docker_arg: Optional[List[str]] = typer.Option(None, "--docker-arg", help="extra 'docker run' argument (repeat), e.g. --docker-arg=--runtime=nvidia"),
    identity_file: Optional[str] = typer.Option(None, "--identity-file", help="private key for this board (else ssh-agent / ~/.ssh/id_*)"),
    known_hosts: Optional[str] = typer.Option(None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)"),
    replace: bool = typer.Option(False, "--replace", help="overwrite an existing entry"),
    inventory: Optional[Path] = InventoryOpt,
):
    """Add a board to the inventory (no connection is made; 'devices check NAME' tests it)."""
    from .errors import InventoryError
    from .remote.inventory import Device, Inventory, parse_host
    from .targets import load_target

    u, h = parse_host(host)
    if u and user and u != user:
        raise InventoryError(f"--host says user {u!r} but --user says {user!r}; give the login once")
    envd = {}
    for e in env or []:
        k, sep, v = e.partition("=")
        if not sep:
            raise InventoryError(f"--env {e!r} must be NAME=VALUE")
        envd[k] = v
    if target:
        load_target(target)  # unknown target: error listing the known ones
    dev = Device(name=name, host=h, user=user or u, port=port, target=target, workdir=workdir, python=python, env=envd,
                 docker_image=docker_image, docker_args=tuple(docker_arg or ()), identity_file=identity_file, known_hosts=known_hosts)
    inv = Inventory.load(inventory)
    inv.add(dev, replace_existing=replace)
    inv.save()
    console.print(f"added {name} ({dev.destination}) to {inv.path}; test it with 'edgetransfer devices check {name}'")


@devices_app.command("remove")
def devices_remove(name: str = typer.Argument(...), inventory: Optional[Path] = InventoryOpt):
    """Remove a board from the inventory (nothing on the board is touched)."""
    from .remote.inventory import Inventory

    inv = Inventory.load(inventory)
    inv.remove(name)
    inv.save()
    console.print(f"removed {name} from {inv.path}")


@devices_app.command("check")
def devices_check(
    name: str = typer.Argument(...),
    inventory: Optional[Path] = InventoryOpt,
    record: Optional[Path] = typer.Option(None, "--record", help="also save the board's raw state files here (test-fixture layout)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Connect and show what the board is (arch, OS, L4T/JetPack, Python, runtimes, disk, power state)."""
    from .remote.bench import check_device
    from .remote.inventory import Inventory

    dev = Inventory.load(inventory).get(name)
    res = check_device(dev)
    snap = res.pop("_snapshot")
    if record:
        snap.write_directory(record)
    if as_json:
        sys.stdout.write(json.dumps(res, indent=2, default=str) + "\n")
        return
    st, rem, ver = res["state"], res["remote"], res["version"]
    mods = rem.get("modules") or {}
    rows = [("architecture", f"{st.get('arch') or rem.get('machine')}"),
            ("OS", f"{st.get('os') or '?'}; kernel {st.get('kernel') or '?'}"),
            ("model", st.get("model") or "—"),
            ("L4T / JetPack", (f"L4T {st['l4t']}" + (f", JetPack {st['jetpack']}" if st.get("jetpack") else " (JetPack not in the table)"))
             if st.get("l4t") else "— (not a Jetson)"),
            ("Python", f"{rem.get('python_version')} ({rem.get('python')})")]
    if ver:
        missing = ver.get("device_extra_missing") or []
        rows += [("edgetransfer", f"{ver['remote']} ({ver['relation']}; this workstation has {ver['local']})"),
                 ("edgetransfer[device]", "installed" if not missing else f"missing {', '.join(missing)}: pip install 'edgetransfer[device]'")]
    else:
        rows.append(("edgetransfer", f"ERROR: {res['version_error']}"))
    from .runtime import probe_modules

    rts = [f"{m} {v}" for m, v in mods.items() if m in set(probe_modules().values()) and v]
    rows.append(("runtimes", ", ".join(rts) or "none"))
    if rem.get("onnxruntime_providers"):
        rows.append(("ORT providers", ", ".join(rem["onnxruntime_providers"])))
    free = st.get("free_disk_mib")
    rows.append(("free disk", f"{free / 1024:.1f} GiB (at {dev.workdir})" if free is not None else "?"))
    rows.append(("state", res["summary"]))
    rows += [("warning", w) for w in res["warnings"]]
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(show_header=False, title=f"{name} ({res['host']})")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:  # Text: values are shown verbatim (no Rich markup: 'edgetransfer[device]' stays)
        t.add_row(Text(k), Text(str(v), style="yellow" if k == "warning" else ("red" if v.startswith("ERROR") else "")))
    Console(width=None if sys.stdout.isatty() else 160).print(t)
    if res["version_error"]:
        raise SystemExit(2)


@devices_app.command("trust")
def devices_trust(
    name: str = typer.Argument(...),
    fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="the SHA256:... fingerprint you verified on the board (non-interactive)"),
    inventory: Optional[Path] = InventoryOpt,
):
    """Accept a board's SSH host key deliberately: show its fingerprint, record it once confirmed."""
    import asyncio

    from .errors import HostKeyError
    from .remote.inventory import Inventory
    from .remote.ssh import add_known_host, fetch_host_key, key_fingerprint

    dev = Inventory.load(inventory).get(name)
    key = asyncio.run(fetch_host_key(dev))
    fp = key_fingerprint(key)
    console.print(f"{name} ({dev.host}:{dev.port}) presents a {key.get_algorithm()} host key with fingerprint\n  {fp}\n"
                  "Compare it with the output of 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' (or the key type shown) run on the "
                  "board's own console.")
    if fingerprint is not None:
        if fingerprint.strip() != fp:
            raise HostKeyError(f"the board presents {fp}, not the fingerprint you gave ({fingerprint}); nothing was recorded")
    elif not sys.stdin.isatty() or not typer.confirm("Does it match, and do you trust this key?", default=False):
        raise HostKeyError("host key not accepted; nothing was recorded (non-interactive use: pass --fingerprint SHA256:...)")
    p = add_known_host(dev, key)
    console.print(f"recorded in {p}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except EdgeTransferError as exc:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(exc))}")  # escaped: "pip install 'edgetransfer[device]'" stays
        raise SystemExit(exc.exit_code)
    except typer.Abort:
        raise SystemExit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
