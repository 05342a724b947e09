"""Command-line options generated from the config dataclasses, and ``--config FILE.yaml``.

One description per setting: a :class:`~edgetransfer.train.TrainConfig` field's help text is its
``metadata["help"]``; the fields of :class:`~edgetransfer.bench.benchmark.BenchSettings` and
:class:`~edgetransfer.export.onnx.ExportConfig` get theirs from the tables below; options that are
no dataclass field (``--target``, ``--json``, ...) are defined once here and shared by the
commands that take them. :func:`with_config` adds every field of the given dataclasses to a
command as an option (so every field is reachable), builds the dataclass from them and hands it
to the command as one parameter — the shape of Polygraphy's argument groups and of timm's
``--config`` (a YAML file of option values; options given on the command line win).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.markup import escape

from ..errors import ConfigError

from ..bundle import DEFAULT_TARGET  # noqa: E402  (the one place it is written)
from ..bundle import RESOLVED_CONFIG  # noqa: E402


# -- options that are no dataclass field (one definition each) --------------------------------------

def target_option(default: str | None = None) -> Any:
    return typer.Option(default, "--target", show_default=bool(default),
                        help="target profile name (targets/*.yaml) or path" + ("" if default else " (default: the bundle's, else x86-cpu)"))


def json_option(what: str = "the report") -> Any:
    return typer.Option(False, "--json", help=f"print {what} as JSON on stdout (nothing else goes to stdout)")


QUIET = typer.Option(False, "--quiet", "-q", help="no progress bars or log lines (stderr)")
INVENTORY = typer.Option(None, "--inventory", help="device inventory YAML (default $EDGETRANSFER_DEVICES or ~/.config/edgetransfer/devices.yaml)")
VAL = typer.Option(None, "--val", help="validation ImageFolder: picks the best epoch and decides INT8 (default DIR/val, DIR/valid or DIR/validation, else carved from train)", rich_help_panel="Data")
VAL_FRACTION = typer.Option(0.2, "--val-fraction", help="share of train's images carved (seeded, per class) for validation when there is no val folder", rich_help_panel="Data")
TEST = typer.Option(None, "--test", help="test ImageFolder: the report's headline figures, seen by no decision (default DIR/test, else carved)", rich_help_panel="Data")
TEST_FRACTION = typer.Option(None, "--test-fraction", help="share carved for test when there is no test folder: of val (default 0.5) when val is a folder, else of DIR (default 0.2); 0 = no test split", rich_help_panel="Data")
OUT = typer.Option(..., "--out", help="bundle directory to write")
CALIBRATION = typer.Option(None, "--calibration", help="calibration recipe name (calibration/*.yaml) or YAML path", rich_help_panel="Quantization")
MAX_ACCURACY_DROP = typer.Option(None, "--max-accuracy-drop", rich_help_panel="Quantization",
                                 help="largest INT8 top-1 drop vs fp32 ONNX, a fraction (0.005 = 0.5 pt); default: the target's budget")
MAX_STEPS = typer.Option(8, "--max-steps", min=0, rich_help_panel="Quantization",
                         help="budget steps that keep the most sensitive nodes in float (0: measure only)")
ADAROUND = typer.Option("off", "--adaround", rich_help_panel="Quantization",
                        help="INT8 ladder rung d, AdaRound (learned weight rounding of the 8 most sensitive layers, minutes): "
                             "off (default) | auto (only when ranges and bias correction do not hold) | on (always measured)")
MAX_FLOAT_SHARE = typer.Option(0.05, "--max-float-share", min=0.0, max=1.0, rich_help_panel="Quantization",
                                help="INT8 ladder: largest fraction of compute nodes (Conv/Gemm/MatMul) the float fallback may keep in float")


def _apply_config(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """Eager ``--config`` callback: the file's values become the command's defaults (click's
    ``default_map``), so they go through the options' own type conversion and checks, and any
    option given on the command line (or from the environment) wins."""
    if value is None:
        return value
    values = read_config_file(value)
    names = {p.name for p in ctx.command.params} - {"config"}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"--config {value}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} no option of "
                          f"'{ctx.info_name}'; known: {', '.join(sorted(names))}")
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


CONFIG = typer.Option(None, "--config", is_eager=True, callback=_apply_config,
                      help="YAML file of option values (keys: option names, e.g. batch_size or batch-size); options given on the command line win")


PANEL_ORDER = ["Model", "Optimisation", "Freezing and fine-tuning", "Data", "Run", "Quantization", "Benchmark", "Export"]


# -- options generated from dataclass fields --------------------------------------------------------

@dataclass(frozen=True)
class FieldOption:
    """One dataclass field as a command-line option."""

    field: str  # the dataclass field
    param: str  # the command's parameter name (= the option name with '_')
    decls: tuple[str, ...]  # '--batch-size' or '--e2e/--no-e2e'
    annotation: Any
    default: Any
    help: str
    panel: str | None

    def parameter(self) -> inspect.Parameter:
        opt = typer.Option(self.default, *self.decls, help=escape(self.help), rich_help_panel=self.panel,
                           show_default=self.default is not None and self.default != ())
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=self.annotation)


@dataclass(frozen=True)
class ConfigGroup:
    """The fields of dataclass ``cls`` as options; the command receives ``cls(...)`` as ``dest``."""

    cls: type
    dest: str
    options: tuple[FieldOption, ...]
    convert: dict[str, Callable[[Any], Any]]

    def build(self, values: dict[str, Any]) -> Any:
        kw = {o.field: self.convert.get(o.field, lambda v: v)(values[o.param]) for o in self.options}
        return self.cls(**kw)


def _cli_type(tp: Any) -> tuple[Any, bool]:
    """(typer annotation, multiple) for a dataclass field type."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        t, multiple = _cli_type(inner[0])
        return (t if multiple else Optional[t]), multiple
    if origin in (tuple, list):
        return List[args[0]], True
    return tp, False


def config_group(cls: type, dest: str, *, rename: dict[str, str] | None = None, help: dict[str, str] | None = None,
                 panel: str | None = None, exclude: tuple[str, ...] = ()) -> ConfigGroup:
    """Options for every field of ``cls`` (except ``exclude``): ``--field-name``, booleans as
    ``--x/--no-x``, ``X | None`` as an optional value, tuples as a repeatable option. Help text:
    ``help[field]``, else the field's ``metadata["help"]``; a field without one is an error (so
    no option is ever undocumented)."""
    rename, help = rename or {}, help or {}
    hints = typing.get_type_hints(cls)
    opts, convert = [], {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        text = help.get(f.name) or f.metadata.get("help")
        if not text:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text (metadata['help'] or the CLI's table)")
        name = rename.get(f.name, f.name.replace("_", "-"))
        ann, multiple = _cli_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if ann is bool:
            decls = (f"--{name}/--no-{name}",)
        else:
            decls = (f"--{name}",)
        if multiple:
            default = list(default) if default else None
            convert[f.name] = lambda v: tuple(v) if v else None
        opts.append(FieldOption(f.name, name.replace("-", "_"), decls, ann, default, text, f.metadata.get("panel") or panel))
    return ConfigGroup(cls, dest, tuple(opts), convert)


def train_group() -> ConfigGroup:
    from ..train import TrainConfig

    return config_group(TrainConfig, "recipe")


BENCH_HELP = {
    "batch_sizes": "latency batch size (repeat for several; default: the target's)",
    "warmup": "untimed warm-up iterations per batch size (default: the target's)",
    "min_iterations": "minimum timed iterations per batch size (default: the target's)",
    "min_seconds": "minimum timed seconds per batch size (default: the target's)",
    "threads": "inference threads (0 = all cores; default: the target's)",
    "max_samples": "cap on validation images for accuracy (evenly spaced; default: all)",
    "e2e": "also time JPEG bytes -> top-k (decode + preprocess + infer + softmax, batch 1)",
    "e2e_images": "distinct validation images the end-to-end timing cycles through",
    "allow_missing_classes": "accept a validation folder lacking some trained classes",
    "power": "sample the board's power sensor (Jetson INA3221 / tegrastats, Pi 5 PMIC) during the timed loops: W and mJ per inference",
    "sustained": "also run one artifact at batch 1 for SECONDS, sampling temperature, clocks, throttle flags and power: drift and throttle events",
    "sustained_artifact": "the artifact file of the --sustained run (default: the first measured row)",
    "idle_seconds": "seconds of idle-power measurement before the run (only on a board with a power sensor)",
}


def bench_group() -> ConfigGroup:
    from ..bench.benchmark import BenchSettings

    return config_group(BenchSettings, "settings", rename={"batch_sizes": "bench-batch", "min_iterations": "iterations"},
                        help=BENCH_HELP, panel="Benchmark")


EXPORT_HELP = {
    "opset": "ONNX opset (default: min(18, the target's opset_max))",
    "dynamo": "the dynamo exporter first, the TorchScript exporter as a recorded fallback (no: TorchScript only)",
    "trace_batch": "batch size of the example input of the export (>= 2)",
    "simplify": "simplify with onnxslim (parity-checked against the unsimplified graph)",
    "exporter": "auto (Optimum for hf: models when the hf extra is installed, else torch) | optimum | torch",
    "max_abs": "fp32 parity tolerance: max |logit diff| vs PyTorch (default: edgetransfer/parity.py's)",
    "mean_abs": "fp32 parity tolerance: mean |logit diff| vs PyTorch (default: edgetransfer/parity.py's)",
    "min_agreement": "fp32 parity tolerance: minimum top-1 agreement with PyTorch (default: edgetransfer/parity.py's)",
}


def export_group() -> ConfigGroup:
    from ..export.onnx import ExportConfig

    return config_group(ExportConfig, "export_cfg", help=EXPORT_HELP, panel="Export",
                        rename={"max_abs": "parity-max-abs", "mean_abs": "parity-mean-abs", "min_agreement": "parity-min-agreement"})


# -- --config FILE.yaml ---------------------------------------------------------------------------

def read_config_file(path: Path) -> dict[str, Any]:
    """Option values from a YAML mapping (keys with '-' or '_'). Raises :class:`ConfigError`."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {p} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {p} must be a mapping of option names to values (got {type(doc).__name__})")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def with_config(*group_factories: Callable[[], ConfigGroup], save_to: str | None = None,
                not_saved: tuple[str, ...] = ("quiet", "as_json", "force"), saved_as: dict[str, str] | None = None):
    """Decorate a command: add the groups' options (and ``--config``) to its signature; call it
    with one dataclass per group (parameter ``group.dest``) built from: the dataclass defaults <
    the ``--config`` file < options given on the command line (or from the environment).
    Every option of the command, not only the groups', can be set in the file.

    ``save_to``: the name of the command's bundle-directory parameter; the resolved options are
    written there as ``config.yaml`` (rank 0 only under torchrun), reusable with ``--config``,
    once the command has ended — also on an error or an interruption, provided the stage had
    created the directory (input rejected before any work leaves nothing behind).
    Keys of the file that are no option of this command are an error naming the known ones.
    ``saved_as``: {parameter: key} for a parameter that is another spelling of ``key`` (``run``'s
    ``--data`` of its DATA argument): its value, when given, is saved under ``key``.
    """
    def deco(fn: Callable) -> Callable:
        groups = [g() for g in group_factories]
        dests = {g.dest for g in groups}
        hints = typing.get_type_hints(fn)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name not in dests]
        # help panels appear in the order of their first option: the command's own options, then the groups'
        extra = sorted((o for g in groups for o in g.options), key=lambda o: PANEL_ORDER.index(o.panel) if o.panel in PANEL_ORDER else 99)
        paneled = [p for p in own if getattr(p.default, "rich_help_panel", None)]
        own = [p for p in own if p not in paneled] + paneled
        extra = [o.parameter() for o in extra]
        names = [p.name for p in own + extra]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise TypeError(f"{fn.__name__}: options defined twice: {sorted(dup)}")
        params = ([inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)] + own[:len(own) - len(paneled)]
                  + extra + paneled
                  + [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=CONFIG, annotation=Optional[Path])])

        @functools.wraps(fn)
        def wrapper(**kw: Any) -> Any:
            ctx: typer.Context = kw.pop("_ctx")
            kw.pop("config")  # already applied, as the context's default_map (see _apply_config)
            resolved = {k: _plain(v) for k, v in kw.items() if k not in not_saved}
            for alias, key in (saved_as or {}).items():
                value = resolved.pop(alias, None)
                if value is not None:
                    resolved[key] = value
            for g in groups:
                kw[g.dest] = g.build({o.param: kw.pop(o.param) for o in g.options})
            untouched = False
            try:
                return fn(**kw)
            except Exception as exc:
                untouched = getattr(exc, "bundle_untouched", False)  # e.g. an --out holding another dataset's bundle
                raise
            finally:  # also after a failure or Ctrl-C mid-training; not when nothing was written (bad input)
                if save_to is not None and Path(kw[save_to]).is_dir() and not untouched:
                    _save_resolved(Path(kw[save_to]), ctx.info_name or fn.__name__, resolved)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read the new signature, not fn's
        return wrapper
    return deco


def _save_resolved(out: Path, command: str, resolved: dict[str, Any]) -> None:
    import yaml

    from ..artifacts import atomic_write_text
    from ..train import process_rank

    if process_rank() != 0:
        return
    text = (f"# edgetransfer {command}: every option as resolved (defaults < --config < command line);\n"
            f"# reuse with: edgetransfer {command} --config {out / RESOLVED_CONFIG}\n"
            + yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_text(out / RESOLVED_CONFIG, text)
