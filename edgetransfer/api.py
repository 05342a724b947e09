"""The public Python API: the same stages the CLI runs, on a bundle directory.

    import edgetransfer as et

    b = et.Bundle.train("data/bees", "runs/bees", model="efficientnet-lite0", target="x86-cpu", epochs=10)
    onnx = b.export()                      # Artifact: model.onnx, parity vs PyTorch
    int8 = b.quantize()                    # Artifact: model.int8.qdq.onnx, held to the accuracy budget
    built = b.build()                      # list[Artifact]: the target's mobile formats (or build_engine.sh)
    report = b.benchmark(max_samples=64)   # Report: one Row per artifact x runtime
    print(report.best().name, report.best().p50_ms)

Every method calls the :mod:`edgetransfer.pipeline` stage the CLI command of the same name calls,
with the same defaults; the target follows the bundle's rule (explicit > bundle.json > x86-cpu,
:mod:`edgetransfer.bundle`). Errors are the CLI's (:mod:`edgetransfer.errors`: each says how to fix
it; the CLI turns them into exit codes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import bundle as _bundle
from .artifacts import Manifest


@dataclass(frozen=True)
class Artifact:
    """One file a stage wrote: ``path``, its ``manifest`` (format, precision, sha256, lineage, details)."""

    path: Path
    manifest: Manifest

    @property
    def format(self) -> str:
        return self.manifest.format

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def size_mib(self) -> float:
        return self.manifest.size_bytes / 2**20

    @property
    def parity(self) -> dict[str, Any]:
        """The parity figures the stage measured (``max_abs``, ``mean_abs``, ``agreement``,
        ``num_samples``), {} when none were measured (Core ML on Linux, a TensorRT script)."""
        return dict((self.manifest.details or {}).get("parity") or {})


@dataclass(frozen=True)
class TrainSummary:
    """What ``Bundle.train`` produced: the checkpoint and its best validation top-1 (fraction)."""

    checkpoint: Path
    val_top1: float
    best_epoch: int
    best_phase: str


@dataclass(frozen=True)
class Row:
    """One report row (artifact x runtime). Latency figures are at the first measured batch size
    (None when not measured); ``top1`` is a fraction; ``status``: ok / failed / unavailable /
    not_runnable / budget_exceeded, with ``error`` saying why."""

    name: str
    format: str
    precision: str
    runtime: str
    status: str
    top1: float | None
    agreement_with_fp32: float | None
    batch_size: int | None
    p50_ms: float | None
    p99_ms: float | None
    throughput_ips: float | None
    size_mib: float | None
    error: str | None

    @classmethod
    def from_dict(cls, r: dict[str, Any]) -> "Row":
        acc = r.get("accuracy") or {}
        lat = (r.get("latency") or [{}])[0]
        return cls(name=r["name"], format=r["format"], precision=r["precision"], runtime=r["runtime"], status=r["status"],
                   top1=acc.get("top1"), agreement_with_fp32=acc.get("agreement_with_fp32"), batch_size=lat.get("batch_size"),
                   p50_ms=lat.get("p50_ms"), p99_ms=lat.get("p99_ms"), throughput_ips=lat.get("throughput_ips"),
                   size_mib=r.get("size_mib"), error=r.get("error"))


@dataclass(frozen=True)
class Report:
    """A benchmark report: ``rows`` typed, ``data`` the full report.json content, ``path`` where it
    was written (None when not written)."""

    rows: list[Row]
    data: dict[str, Any] = field(repr=False)
    path: Path | None = None

    def row(self, name: str, runtime: str | None = None) -> Row:
        """The row of artifact ``name`` (on ``runtime``); KeyError listing the rows when absent."""
        for r in self.rows:
            if r.name == name and (runtime is None or r.runtime == runtime):
                return r
        raise KeyError(f"no row {name!r}{' on ' + runtime if runtime else ''}; rows: {[(r.name, r.runtime) for r in self.rows]}")

    def best(self) -> Row:
        """The fastest row (lowest p50) among the measured ones; ValueError when none was measured."""
        ok = [r for r in self.rows if r.status == "ok" and r.p50_ms is not None and not math.isnan(r.p50_ms)]
        if not ok:
            raise ValueError("no row was measured; see the rows' errors")
        return min(ok, key=lambda r: r.p50_ms)


class Bundle(_bundle.Bundle):
    """A bundle directory with the stages as methods (see the module docstring). ``last_train``:
    the :class:`TrainSummary` of :meth:`train` (None on a bundle opened otherwise)."""

    last_train = None

    @classmethod
    def train(cls, data: str | Path, out: str | Path, *, model: str | None = None, target: str | None = None,
              val: str | Path | None = None, val_fraction: float = 0.2, test: str | Path | None = None,
              test_fraction: float | None = None, **config: Any) -> "Bundle":
        """Transfer learning on the ImageFolder ``data`` into the new bundle ``out`` (``edgetransfer train``).

        ``model``: a model source (``efficientnet-lite0``, ``torchvision:resnet18``, ``timm:NAME``,
        ``file:PATH`` with ``arch=``); None = the default. ``config``: any
        :class:`edgetransfer.train.TrainConfig` field (``epochs``, ``lr``, ``batch_size``, ``finetune_epochs`` ...).
        Returns the bundle; its training summary is :attr:`last_train`. Raises ConfigError for an
        unknown field, DataError for unusable data."""
        import dataclasses

        from .errors import ConfigError
        from .pipeline import stage_train
        from .targets import load_target
        from .train import TrainConfig

        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; TrainConfig fields are {sorted(known)}")
        if model is not None:
            config["model"] = model
        tgt = load_target(_bundle.resolve_target_name(target))
        res = stage_train(Path(data), Path(out), TrainConfig(**config), val=Path(val) if val else None,
                          val_fraction=val_fraction, test=Path(test) if test else None, test_fraction=test_fraction, target=tgt)
        b = cls(Path(out))
        object.__setattr__(b, "last_train", TrainSummary(Path(res.checkpoint), float(res.best_val_top1), int(res.best_epoch),
                                                         str(res.best_phase)))
        return b

    # -- stages on an existing bundle ------------------------------------------------------
    def _artifact(self, m: Manifest) -> Artifact:
        return Artifact(self.path(m.file), m)

    def export(self, *, target: str | None = None, opset: int | None = None, dynamo: bool = True,
               simplify: bool = False, exporter: str = "auto") -> Artifact:
        """PyTorch checkpoint -> fp32 ONNX with parity vs PyTorch (``edgetransfer export``);
        ``exporter``: auto | optimum | torch (Optimum: Hugging Face models, the ``hf`` extra)."""
        from .export.onnx import ExportConfig
        from .pipeline import stage_export

        return self._artifact(stage_export(self.dir, self.resolve_target(target),
                                           ExportConfig(opset=opset, dynamo=dynamo, simplify=simplify, exporter=exporter)))

    def quantize(self, *, target: str | None = None, precision: str = "int8", calibration: str | None = None,
                 max_accuracy_drop: float | None = None, max_steps: int = 8, preset: str | None = None,
                 per_channel: bool | None = None, exclude_nodes: Sequence[str] = (), adaround: str = "off") -> Artifact:
        """fp32 ONNX -> INT8 QDQ held to the accuracy budget, or fp16 (``edgetransfer quantize``).
        Raises BudgetExceededError (after writing the artifact) when INT8 stays over budget.
        ``adaround``: the ladder's AdaRound rung, off / auto / on (opt-in: minutes)."""
        from .pipeline import stage_quantize

        return self._artifact(stage_quantize(self.dir, self.resolve_target(target), calibration, precision=precision,
                                             preset=preset, per_channel=per_channel, max_accuracy_drop=max_accuracy_drop,
                                             max_steps=max_steps, nodes_to_exclude=tuple(exclude_nodes), adaround=adaround))

    def build(self, *, target: str | None = None, formats: Sequence[str] | None = None,
              calibration: str | None = None) -> list[Artifact]:
        """The target's per-target builds (``edgetransfer build``): mobile formats here, each
        parity-checked; for a TensorRT target, ``build_engine.sh`` (engines are built on the device
        with ``edgetransfer build`` or that script). Returns the artifacts made (none for TensorRT)."""
        from .pipeline import build_formats, stage_build

        tgt = self.resolve_target(target)
        made: list[Artifact] = []
        if formats or build_formats(tgt):
            made = [self._artifact(m) for m in stage_build(self.dir, tgt, calibration, formats=list(formats) if formats else None)]
        if "engine" in tgt.formats and not formats:
            from .builders.tensorrt import write_build_script

            write_build_script(self.dir, tgt)
        return made

    def benchmark(self, *, target: str | None = None, data: str | Path | None = None, batch_sizes: Sequence[int] | None = None,
                  warmup: int | None = None, iterations: int | None = None, min_seconds: float | None = None,
                  threads: int | None = None, max_samples: int | None = None, e2e: bool = True) -> Report:
        """Accuracy and latency of every artifact here (``edgetransfer benchmark``); writes
        report.json / report.md / report.png into the bundle."""
        from .bench.benchmark import BenchSettings
        from .pipeline import stage_benchmark

        settings = BenchSettings(batch_sizes=tuple(batch_sizes) if batch_sizes else None, warmup=warmup,
                                 min_iterations=iterations, min_seconds=min_seconds, threads=threads,
                                 max_samples=max_samples, e2e=e2e)
        rep = stage_benchmark(self.dir, self.resolve_target(target), Path(data) if data else None, settings)
        return Report([Row.from_dict(r) for r in rep["results"]], rep, self.path(_bundle.REPORT_JSON))

    def artifacts_list(self) -> list[Artifact]:
        """Every artifact of the bundle (registered order, then engines found by their manifests)."""
        return [Artifact(p, m) for p, m in self.artifacts()]
