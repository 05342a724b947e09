"""The stage commands: run, train, export, quantize, build, benchmark, demo.

Each parses its options, calls one function of :mod:`edgetransfer.pipeline` and hands the result
to :mod:`.present`. The training recipe, the benchmark settings and the export settings arrive as
their config dataclasses, built by :func:`.options.with_config` from options generated from the
dataclass fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..bundle import REPORT_MD
from ..progress import set_quiet
from . import present
from .options import (ADAROUND, CALIBRATION, DEFAULT_TARGET, INVENTORY, MAX_ACCURACY_DROP, MAX_FLOAT_SHARE, MAX_STEPS, OUT, QUIET, TEST,
                      TEST_FRACTION, VAL, VAL_FRACTION,
                      bench_group, export_group, json_option, target_option, train_group, with_config)


def one_data_dir(data: Optional[Path], data_option: Optional[Path]) -> Path:
    """``run``'s ImageFolder, given as its DATA argument or as ``--data``. Raises ConfigError when
    neither or two different ones are given."""
    from ..errors import ConfigError

    if data is None and data_option is None:
        raise ConfigError("no dataset: pass the ImageFolder as 'edgetransfer run DATA' (or --data DATA)")
    if data is not None and data_option is not None and Path(data) != Path(data_option):
        raise ConfigError(f"two datasets: DATA {data} and --data {data_option}; pass one of them")
    return Path(data if data is not None else data_option)


def target_for(bundle: Path, target: Optional[str]):
    """The one target rule (:meth:`edgetransfer.bundle.Bundle.resolve_target`)."""
    from ..bundle import Bundle

    return Bundle(Path(bundle)).resolve_target(target)


@with_config(train_group, bench_group, export_group, save_to="out", saved_as={"data_option": "data"})
def run(
    data: Optional[Path] = typer.Argument(None, metavar="DATA", show_default=False,
                                          help="ImageFolder: DIR/<class>/<images> or DIR/{train,val,test}/<class>/<images>"),
    data_option: Optional[Path] = typer.Option(None, "--data", show_default=False, help="the same as DATA (either spelling)"),
    out: Path = OUT,
    target: str = target_option(DEFAULT_TARGET),
    val: Optional[Path] = VAL,
    val_fraction: float = VAL_FRACTION,
    test: Optional[Path] = TEST,
    test_fraction: Optional[float] = TEST_FRACTION,
    calibration: Optional[str] = CALIBRATION,
    max_accuracy_drop: Optional[float] = MAX_ACCURACY_DROP,
    max_steps: int = MAX_STEPS,
    adaround: str = ADAROUND,
    as_json: bool = json_option(),
    quiet: bool = QUIET,
    force: bool = typer.Option(False, "--force", help="redo every stage, and replace an --out holding another dataset's bundle (moved to OUT/stale/)"),
    *, recipe=None, settings=None, export_cfg=None,
):
    """Train, export, quantize, build and benchmark in one go; writes the bundle to --out.

    Run again into the same --out, it skips train / export / quantize when their inputs and
    artifacts are unchanged (--force redoes them). The resolved options are saved as
    OUT/config.yaml (reuse with --config)."""
    from ..pipeline import run as run_pipeline

    data = one_data_dir(data, data_option)
    set_quiet(quiet or as_json)
    report = run_pipeline(data, out, recipe, target=target, val=val, recipe=calibration, settings=settings, export_cfg=export_cfg,
                          val_fraction=val_fraction, test=test, test_fraction=test_fraction, max_accuracy_drop=max_accuracy_drop,
                          max_steps=max_steps, adaround=adaround, force=force)
    if not report:  # torchrun rank > 0: rank 0 exports, quantizes and reports
        return
    present.report(report, as_json)
    if not as_json:
        present.info(f"bundle: {out}  ({_report_files(out)})")


@with_config(train_group, save_to="out")
def train(
    data: Path = typer.Argument(..., help="ImageFolder: DIR/<class>/<images> or DIR/{train,val,test}/<class>/<images>"),
    out: Path = OUT,
    target: str = target_option(DEFAULT_TARGET),
    val: Optional[Path] = VAL,
    val_fraction: float = VAL_FRACTION,
    test: Optional[Path] = TEST,
    test_fraction: Optional[float] = TEST_FRACTION,
    quiet: bool = QUIET,
    *, recipe=None,
):
    """Transfer learning: new head, frozen backbone, optional fine-tune -> OUT/model.pt.

    Writes OUT/model.pt (+ manifest, bundle.json), OUT/last.pt (for --resume), OUT/metrics.csv/.json
    and OUT/config.yaml (the resolved options, reusable with --config). Works under torchrun (DDP)."""
    from ..pipeline import stage_train
    from ..targets import load_target
    from ..train import process_rank

    set_quiet(quiet)
    tgt = load_target(target)
    res = stage_train(data, out, recipe, val=val, val_fraction=val_fraction, test=test, test_fraction=test_fraction, target=tgt)
    if process_rank() == 0:
        present.trained(res)


@with_config(export_group)
def export(
    bundle: Path = typer.Argument(..., help="bundle directory (with model.pt)"),
    target: Optional[str] = target_option(),
    quiet: bool = QUIET,
    *, export_cfg=None,
):
    """PyTorch checkpoint -> fp32 ONNX (eval mode, dynamic batch, shape-inferred, checked, parity vs PyTorch)."""
    from ..pipeline import stage_export

    set_quiet(quiet)
    m = stage_export(bundle, target_for(bundle, target), export_cfg)
    present.exported(bundle, m, export_cfg.simplify)


def quantize(
    bundle: Path = typer.Argument(..., help="bundle directory (with model.onnx)"),
    target: Optional[str] = target_option(),
    precision: str = typer.Option("int8", "--precision", help="int8 (static QDQ) | fp16 (for GPU targets)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="quantization preset: target (default: the target's own) | tensorrt (signed symmetric INT8, zero point 0) | ort-cpu"),
    per_channel: Optional[bool] = typer.Option(None, "--per-channel/--per-tensor", help="weight scales per output channel (default: the preset's)"),
    calibration: Optional[str] = CALIBRATION,
    max_accuracy_drop: Optional[float] = MAX_ACCURACY_DROP,
    max_steps: int = MAX_STEPS,
    max_float_share: float = MAX_FLOAT_SHARE,
    adaround: str = ADAROUND,
    exclude_node: Optional[List[str]] = typer.Option(None, "--exclude-node", help="node name kept in float (repeat)"),
    mode: str = typer.Option("static", "--mode", help="static (calibrated QDQ); dynamic is refused for convolutional models"),
    allow_unsupported_precision: bool = typer.Option(False, "--allow-unsupported-precision", help="write a precision the target does not list (recorded)"),
    quiet: bool = QUIET,
):
    """fp32 ONNX -> INT8 QDQ ONNX held to an accuracy budget (or fp16 ONNX with --precision fp16).

    Exit code 3 when the INT8 model stays over the budget (written with status budget_exceeded)."""
    from ..pipeline import stage_quantize

    set_quiet(quiet)
    tgt = target_for(bundle, target)
    m = stage_quantize(bundle, tgt, calibration, precision=precision, preset=preset, per_channel=per_channel,
                       max_accuracy_drop=max_accuracy_drop, max_steps=max_steps, nodes_to_exclude=exclude_node or (),
                       max_float_share=max_float_share, adaround=adaround, mode=mode, allow_unsupported_precision=allow_unsupported_precision)
    present.quantized(bundle, m, precision)


@with_config(bench_group)
def benchmark(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled validation ImageFolder (default: the bundle's split)"),
    target: Optional[str] = target_option(),
    device: Optional[List[str]] = typer.Option(None, "--device", help="run on this board of the inventory instead (repeat for several, in parallel)", rich_help_panel="Devices"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", help=INVENTORY.help, rich_help_panel="Devices"),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="with --device: where the combined report goes (default BUNDLE/devices)", rich_help_panel="Devices"),
    device_class: Optional[str] = typer.Option(None, "--device-class", help="run on the first free board of this device_class of the inventory", rich_help_panel="Devices"),
    wait_lock: float = typer.Option(0.0, "--wait-lock", min=0, help="seconds to wait for a board (or a board of --device-class) that another benchmark holds; 0: fail at once naming the holder", rich_help_panel="Devices"),
    as_json: bool = json_option(),
    quiet: bool = QUIET,
    *, settings=None,
):
    """Accuracy and latency of every artifact in BUNDLE here, or with --device on your boards over SSH.

    Without --device: measured on this machine, report.json/.md/.png written into BUNDLE; needs only
    the device extra (numpy, Pillow, PyYAML, onnxruntime): pip install 'edgetransfer\\[device]'. With
    --device (repeatable): the boards of the inventory run the benchmark in parallel; the combined
    report goes to BUNDLE/devices/ (or --report-dir). --target overrides the devices' targets."""
    set_quiet(quiet or as_json)
    if device or device_class:
        _benchmark_devices(bundle, device, inventory, target, data, settings, report_dir, as_json, wait_lock, device_class)
        return
    from ..pipeline import stage_benchmark

    present.report(stage_benchmark(bundle, target_for(bundle, target), data, settings), as_json)


def _benchmark_devices(bundle, names, inventory, target, data, settings, report_dir, as_json, wait_lock=0.0, device_class=None):
    from ..errors import RemoteError
    from ..remote.bench import REPORT_DIR, benchmark_on_devices
    from ..remote.inventory import Inventory

    inv = Inventory.load(inventory)
    if device_class and names:
        from ..errors import ConfigError

        raise ConfigError("give --device NAME or --device-class CLASS, not both")
    devices = inv.of_class(device_class) if device_class else [inv.get(n) for n in names]
    combined = benchmark_on_devices(bundle, devices, target=target, data=data, settings=settings, report_dir=report_dir,
                                    lock_wait_s=wait_lock, device_class=device_class)
    out = Path(report_dir) if report_dir else Path(bundle) / REPORT_DIR
    present.devices_report(combined, out, as_json)
    failed = [s for s in combined["devices"] if s["status"] != "ok"]
    if failed:
        raise RemoteError(f"{len(failed)} of {len(combined['devices'])} device(s) failed ({', '.join(s['device'] for s in failed)}); "
                          f"their errors are in {out / REPORT_MD}")


def build(
    bundle: Path = typer.Argument(..., help="bundle directory (from 'edgetransfer run' or a copy of it on the device)"),
    target: Optional[str] = target_option(),
    precision: str = typer.Option("best", "--precision", help="fp16 | int8 | best | fp32 (best: int8 with fp16 fallback where the target has INT8)"),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="build for this DLA core (GPU fallback on); targets with DLA cores only"),
    script_only: bool = typer.Option(False, "--script-only", help="only write BUNDLE/build_engine.sh (trtexec commands); needs no TensorRT"),
    requantize: bool = typer.Option(False, "--requantize", help="when the INT8 Q/DQ ONNX was made with another preset, requantize it with the target's (needs the training images)"),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="calibration recipe name or YAML path (mobile INT8 builds; TensorRT: with --requantize)"),
    force: bool = typer.Option(False, "--force", help="rebuild even when a current engine exists"),
    tensorrt_version: Optional[str] = typer.Option(None, "--tensorrt-version", help="with --script-only: write trtexec flags for this TensorRT version (default: the target's)"),
    fmt: Optional[List[str]] = typer.Option(None, "--format", help="mobile format to build (repeat): tflite, pte, mlpackage, ort; default: the target's formats"),
    quiet: bool = QUIET,
):
    """Per-target builds: a TensorRT engine (GPU targets) or the target's mobile formats.

    GPU targets (format 'engine'): a TensorRT engine built on this device (it
    only runs with the TensorRT version and GPU that built it; BUNDLE/build_engine.sh is always
    written too). Mobile targets: .tflite / .pte / .mlpackage / .ort from the bundle's checkpoint and
    ONNX files, each parity-checked against the fp32 model (calibration with --calibration for INT8)."""
    from ..builders.tensorrt import build_engine, int8_onnx_problems, plan_engine_build, write_build_script
    from ..errors import TargetError

    set_quiet(quiet)
    tgt = target_for(bundle, target)
    if fmt or "engine" not in tgt.formats:
        from ..pipeline import stage_build

        made = stage_build(bundle, tgt, calibration, formats=list(fmt) if fmt else None)
        present.built_mobile(bundle, made, tgt.name)
        return
    try:
        plan = plan_engine_build(bundle, tgt, precision, dla_core=dla_core, tensorrt_version=tensorrt_version)
    except TargetError:
        if not (requantize and precision in ("int8", "best") and int8_onnx_problems(bundle, tgt)):
            raise
        from ..pipeline import stage_quantize

        present.info(f"requantizing {bundle}/model.int8.qdq.onnx with target {tgt.name}'s preset")
        stage_quantize(bundle, tgt, calibration)
        plan = plan_engine_build(bundle, tgt, precision, dla_core=dla_core, tensorrt_version=tensorrt_version)
    script = write_build_script(bundle, tgt, tensorrt_version=tensorrt_version, dla_core=dla_core)
    if script_only:
        import shlex

        present.info(f"{script} written; on the device run: bash {script.name} {precision}")
        present.info("equivalent trtexec command: " + shlex.join(plan.trtexec_args()))
        return
    m, reused = build_engine(bundle, tgt, precision, dla_core=dla_core, force=force)
    present.built_engine(bundle, m, precision, reused)


def _report_files(out: Path) -> str:
    """The report files written into ``out`` (report.png only with matplotlib)."""
    from ..bundle import REPORT_JSON, REPORT_MD, REPORT_PNG

    return ", ".join(n for n in (REPORT_JSON, REPORT_MD, REPORT_PNG) if (Path(out) / n).is_file())


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="bundle directory to write (the digits ImageFolder goes beside it)"),
    epochs: int = typer.Option(30, "--epochs", help="head epochs"),
    quiet: bool = QUIET,
):
    """The main job on the embedded default: scikit-learn's handwritten digits, EfficientNet-Lite0."""
    from ..demo import write_digits_imagefolder
    from ..pipeline import run as run_pipeline
    from ..train import TrainConfig

    set_quiet(quiet)
    data = write_digits_imagefolder(out.parent / f"{out.name}-data" / "digits")
    present.info(f"digits ImageFolder: {data}")
    report = run_pipeline(data, out, TrainConfig(epochs=epochs, lr=3e-3), target=DEFAULT_TARGET)
    present.report(report, False)
    present.info(f"bundle: {out}  ({_report_files(out)})")
