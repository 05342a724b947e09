"""Command line: argument parsing, exit codes and progress display only.

Exit codes: 0 success; 2 bad input or environment (an EdgeTransferError, the message says how
to fix it); 3 a result breaks the target's budget.
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

DEFAULT_TARGET = "x86-cpu"


def _target_for(bundle: Path, target: Optional[str]):
    from .targets import load_target

    if target:
        return load_target(target)
    bj = Path(bundle) / "bundle.json"
    if bj.is_file():
        name = json.loads(bj.read_text()).get("target")
        if name:
            return load_target(name)
    return load_target(DEFAULT_TARGET)


def _settings(batch_sizes, warmup, iterations, min_seconds, threads, max_samples=None):
    from .bench.benchmark import BenchSettings

    return BenchSettings(batch_sizes=tuple(batch_sizes) if batch_sizes else None, warmup=warmup, min_iterations=iterations,
                         min_seconds=min_seconds, threads=threads, max_samples=max_samples)


def _train_cfg(model, arch, epochs, batch_size, lr, seed, head, hidden, dropout, no_cache):
    from .train import TrainConfig

    return TrainConfig(model=model, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, head=head, hidden=hidden,
                       dropout=dropout, feature_cache=not no_cache)


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
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration recipe name or YAML path"),
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
    cfg = _train_cfg(model, arch, epochs, batch_size, lr, seed, head, hidden, dropout, no_cache)
    report = run_pipeline(data, out, cfg, target=target, val=val, recipe=calibration,
                          settings=_settings(bench_batch, warmup, iterations, min_seconds, threads), val_fraction=val_fraction)
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
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Transfer learning: new head, frozen backbone; writes OUT/model.pt (+ manifest, bundle.json)."""
    from .pipeline import stage_train
    from .targets import load_target

    set_quiet(quiet)
    tgt = load_target(target)
    res = stage_train(data, out, _train_cfg(model, arch, epochs, batch_size, lr, seed, head, hidden, dropout, no_cache), val=val,
                      val_fraction=val_fraction, target=tgt)
    console.print(f"checkpoint: {res.checkpoint} (val top-1 {res.best_val_top1:.4f}, epoch {res.best_epoch})")


@app.command()
def export(
    bundle: Path = typer.Argument(...),
    target: Optional[str] = TargetOpt,
    opset: Optional[int] = typer.Option(None, "--opset", help="default: min(18, target's opset_max)"),
    no_dynamo: bool = typer.Option(False, "--no-dynamo", help="use the TorchScript exporter only"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """PyTorch checkpoint -> fp32 ONNX (dynamic batch, checked, parity vs PyTorch)."""
    from .export.onnx import ExportConfig
    from .pipeline import stage_export

    set_quiet(quiet)
    m = stage_export(bundle, _target_for(bundle, target), ExportConfig(opset=opset, dynamo=not no_dynamo))
    p = m.details["parity"]
    console.print(f"{bundle / m.file}: opset {m.details['opset']}, {m.details['exporter']}, parity max |diff| {p['max_abs']:.2e}, agreement {p['agreement']:.4f}")


@app.command()
def quantize(
    bundle: Path = typer.Argument(...),
    target: Optional[str] = TargetOpt,
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration recipe name or YAML path"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """fp32 ONNX -> INT8 QDQ ONNX, calibrated on training images (recipe from calibration/)."""
    from .pipeline import stage_quantize

    set_quiet(quiet)
    m = stage_quantize(bundle, _target_for(bundle, target), calibration)
    p = m.details.get("parity", {})
    console.print(f"{bundle / m.file}: agreement with fp32 {p.get('agreement', float('nan')):.4f}, "
                  f"top-1 {m.details.get('val_top1_int8', float('nan')):.4f} (fp32 {m.details.get('val_top1_fp32', float('nan')):.4f})")


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
    max_samples: Optional[int] = typer.Option(None, "--max-samples"),
    as_json: bool = typer.Option(False, "--json"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Accuracy and latency of every artifact in BUNDLE on this machine; writes report.json/.md."""
    from .pipeline import stage_benchmark

    set_quiet(quiet or as_json)
    report = stage_benchmark(bundle, _target_for(bundle, target), data, _settings(bench_batch, warmup, iterations, min_seconds, threads, max_samples))
    _finish(report, as_json)


@app.command()
def build(
    bundle: Path = typer.Argument(..., help="bundle directory (from 'edgetransfer run' or a copy of it on the device)"),
    target: Optional[str] = TargetOpt,
    precision: str = typer.Option("best", "--precision", help="fp16 | int8 | best | fp32 (best: int8 with fp16 fallback where the target has INT8)"),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="build for this DLA core (GPU fallback on); targets with DLA cores only"),
    script_only: bool = typer.Option(False, "--script-only", help="only write BUNDLE/build_engine.sh (trtexec commands); needs no TensorRT"),
    requantize: bool = typer.Option(False, "--requantize", help="when the INT8 Q/DQ ONNX was made with another preset, requantize it with the target's (needs the training images)"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="with --requantize: calibration recipe name or YAML path"),
    force: bool = typer.Option(False, "--force", help="rebuild even when a current engine exists"),
    tensorrt_version: Optional[str] = typer.Option(None, "--tensorrt-version", help="with --script-only: write trtexec flags for this TensorRT version (default: the target's)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """TensorRT engine for a GPU target, built on this device (the engine only runs with the
    TensorRT version and GPU that built it); always writes BUNDLE/build_engine.sh too."""
    from .build.tensorrt import build_engine, int8_onnx_problems, plan_engine_build, write_build_script
    from .errors import TargetError

    set_quiet(quiet)
    tgt = _target_for(bundle, target)
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


def main() -> None:
    try:
        app(standalone_mode=False)
    except EdgeTransferError as exc:
        console.print(f"[bold red]error:[/] {exc}")
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
