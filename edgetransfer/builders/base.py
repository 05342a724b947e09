"""What every mobile converter shares: inputs, the parity check, the manifest, the registry.

A converter turns a source artifact of the bundle (the PyTorch checkpoint, or an ONNX file for ORT
mobile) into one file per precision, each written atomically with the same manifest as every other
artifact (preprocessing, class names in index order, input/output specs, lineage, tool versions)
plus ``details.parity``: the candidate's logits against the fp32 model's on real validation images.

Mobile artifacts have a static batch of 1: a phone classifies one camera frame at a time, and LiteRT
(XNNPACK) and ExecuTorch plan their memory for static shapes. Parity therefore runs image by image.

Converters are found through a registry keyed by format (:func:`register_builder`), the way the
pipeline dispatches on a target's ``formats`` field.
"""

from __future__ import annotations

import contextlib
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from ..artifacts import Manifest, read_manifest, tool_versions, write_manifest
from ..data import PreprocessSpec, Sample, load_arrays
from ..errors import ConfigError, require
from ..parity import Tolerance, judge
from ..progress import log, task
from ..types import Format, Precision

if TYPE_CHECKING:  # pragma: no cover
    from ..quantize.calibration import CalibrationRecipe

_BUILDERS: dict[Format, type["Builder"]] = {}


def register_builder(fmt: Format | str):
    """Class decorator: ``@register_builder(Format.TFLITE)`` makes the converter the one the
    pipeline uses for targets whose ``formats`` list ``fmt``."""

    def deco(cls: type[Builder]) -> type[Builder]:
        cls.format = Format(fmt)
        _BUILDERS[Format(fmt)] = cls
        return cls

    return deco


def get_builder(fmt: Format | str) -> type["Builder"]:
    """The converter class for ``fmt``. Raises :class:`ConfigError` listing the known formats."""
    try:
        key = Format(fmt)
    except ValueError:
        key = None
    if key not in _BUILDERS:
        raise ConfigError(f"no converter for format {fmt!r}; known formats: onnx (export), "
                          + ", ".join(sorted(str(f) for f in _BUILDERS)))
    return _BUILDERS[key]


def registered_builders() -> list[Format]:
    return sorted(_BUILDERS, key=str)


@dataclass(frozen=True)
class BuildInputs:
    """What a converter may need besides its source artifact.

    ``parity_x``: float32 (N, 3, S, S) preprocessed validation images (held out from calibration);
    ``parity_y``: int64 (N,) their labels, to record top-1 of the candidate and of the fp32 model.
    ``calibration``: training-split images chosen by :func:`~edgetransfer.quantize.calibration.select_calibration_set`
    with ``recipe`` (needed for INT8 only). ``target``: the target name written into the manifest.
    ``max_top1_drop``: the target's accuracy budget (fraction of top-1, 0.01 = 1 pt): an INT8 file
    is judged against the fp32 model on the labelled parity images by
    :func:`edgetransfer.stats.budget_judge`, as the ONNX INT8 model is (None: not judged).
    """

    parity_x: np.ndarray
    parity_y: np.ndarray | None = None
    calibration: Sequence[Sample] = ()
    recipe: CalibrationRecipe | None = None
    target: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_top1_drop: float | None = None

    def __post_init__(self) -> None:
        x = self.parity_x
        if x.ndim != 4 or x.shape[1] != 3 or x.dtype != np.float32 or len(x) == 0:
            raise ConfigError(f"parity images must be a non-empty float32 (N, 3, S, S) array (got {x.dtype} {x.shape})")
        if self.parity_y is not None and len(self.parity_y) != len(x):
            raise ConfigError(f"{len(self.parity_y)} parity labels for {len(x)} parity images")


class Builder(ABC):
    """Base of ``<Format>From<Source>`` converters.

    Subclasses set ``extra`` (the pip extra holding their backend), ``backend_modules`` (imported
    lazily, checked before any work), ``precisions`` (what the format can hold), ``file_names``
    (output file per precision) and implement :meth:`convert` and :meth:`candidate_logits`.
    """

    format: ClassVar[Format]
    source_format: ClassVar[Format] = Format.CHECKPOINT
    extra: ClassVar[str] = ""
    backend_modules: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[Precision, ...]] = (Precision.FP32, Precision.INT8)
    file_names: ClassVar[dict[Precision, str]] = {}
    producer: ClassVar[str] = ""

    def __init__(self, source: str | Path, inputs: BuildInputs):
        self.source = Path(source)
        self.inputs = inputs
        self.parent = read_manifest(self.source)  # sha256 must match before anything is built
        if self.parent.format != str(self.source_format):
            raise ConfigError(f"{type(self).__name__} converts {self.source_format} artifacts; {self.source.name} is {self.parent.format}")
        self.spec = PreprocessSpec.from_dict(self.parent.preprocessing)
        self.class_names = list(self.parent.class_names)
        self._reference: np.ndarray | None = None

    # -- availability ----------------------------------------------------------------------
    @classmethod
    def require_backend(cls) -> None:
        """Raise :class:`~edgetransfer.errors.MissingExtraError` naming the extra if a backend is missing."""
        for mod in cls.backend_modules:
            require(mod, cls.extra, f"{cls.format} conversion")

    @classmethod
    def is_available(cls) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(m.split(".")[0]) is not None for m in cls.backend_modules)

    @classmethod
    def file_name(cls, precision: Precision | str, source: Path | None = None) -> str:
        return cls.file_names[Precision(precision)]

    # -- to implement ----------------------------------------------------------------------
    @abstractmethod
    def convert(self, precision: Precision, out: Path) -> dict[str, Any]:
        """Write the artifact for ``precision`` at ``out`` (a temporary path); return manifest details."""

    @abstractmethod
    def candidate_logits(self, path: Path, x: np.ndarray) -> np.ndarray | None:
        """Logits float32 (N, C) of the artifact at ``path`` on ``x``; None if it cannot run here."""

    def reference_logits(self, x: np.ndarray) -> np.ndarray:
        """Logits float32 (N, C) of the fp32 model the artifact is held against."""
        from ..checkpoint import load_checkpoint
        from ..runtime.pytorch import torch_logits

        model, _ = load_checkpoint(self.source)
        return torch_logits(model, x)

    def io_specs(self, precision: Precision) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        s = self.spec.input_size
        return ([{"name": "input", "shape": [1, 3, s, s], "dtype": "float32"}],
                [{"name": "logits", "shape": [1, len(self.class_names)], "dtype": "float32"}])

    # -- shared ----------------------------------------------------------------------------
    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = self.reference_logits(self.inputs.parity_x)
        return self._reference

    def calibration_arrays(self) -> np.ndarray:
        """The calibration images preprocessed: float32 (K, 3, S, S). Raises ConfigError when none."""
        if not self.inputs.calibration or self.inputs.recipe is None:
            raise ConfigError(f"INT8 {self.format} needs calibration images and a recipe: pass the training split's "
                              "calibration set (edgetransfer build does it from the bundle)")
        x, _ = load_arrays(list(self.inputs.calibration), self.spec)
        return x

    def calibration_details(self) -> dict[str, Any]:
        r = self.inputs.recipe
        return {"calibration": r.to_dict() if r else None, "num_calibration_images": len(self.inputs.calibration),
                "calibration_images": [str(s.path) for s in self.inputs.calibration]}

    # -- the mobile INT8 ladder -------------------------------------------------------------
    def rung(self, name: str, cand: np.ndarray, seconds: float, **info: Any) -> dict[str, Any]:
        """One INT8 candidate judged on the parity images as the ONNX ladder judges its rungs a-c:
        ``cand`` float32 (N, C) logits of the candidate on ``inputs.parity_x``; returns the record
        (rung name, ``info``, parity figures, logit fidelity vs fp32, top-1 of both, the budget
        judgement and ``holds`` when labels and a budget are known, ``seconds``)."""
        from ..parity import compare_logits
        from ..stats import budget_judge, logit_fidelity

        ref, y = self.reference, self.inputs.parity_y
        rec: dict[str, Any] = {"rung": name, **info, "parity": compare_logits(ref, cand).to_dict(),
                               "fidelity": logit_fidelity(ref, cand), "seconds": float(seconds)}
        if y is not None:
            t32, t8 = (float((a.argmax(1) == y).mean()) for a in (ref, cand))
            rec.update(top1_fp32=t32, top1_int8=t8, top1_drop=t32 - t8)
            if self.inputs.max_top1_drop is not None:
                j = budget_judge(ref, cand, y, self.inputs.max_top1_drop)
                rec["judgement"] = {k: v for k, v in j.to_dict().items() if k != "per_class"}
                rec["holds"] = bool(j.holds)
        log(f"  {self.format} INT8 rung {name}: agreement {rec['parity']['agreement']:.4f}, mean KL "
            f"{rec['fidelity']['mean_kl']:.2e}" + (f", top-1 {rec['top1_int8']:.4f} (fp32 {rec['top1_fp32']:.4f})" if y is not None else "")
            + (f": {'holds' if rec['holds'] else 'does not hold'}" if "holds" in rec else ""))
        return rec

    @staticmethod
    def choose(rungs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The candidate a mobile INT8 file is made from: one that holds the budget (when judged), then
        the lowest mean KL vs fp32, then the highest agreement. The candidates are files of the same
        graph (same speed), so every one is measured, as the ONNX ladder's rungs a-c are
        (:mod:`edgetransfer.quantize.ladder`: a borderline val image must not pick the file)."""
        if not rungs:
            raise ValueError("no INT8 candidate to choose from")
        return max(rungs, key=lambda r: (bool(r.get("holds", True)), -r["fidelity"]["mean_kl"], r["parity"]["agreement"]))

    def parity(self, path: Path, precision: Precision) -> dict[str, Any]:
        """Compare the artifact at ``path`` with the fp32 reference; raise ParityError out of tolerance.

        Returns the manifest's parity details (figures, tolerance, top-1 of both when labels are known).
        INT8: the sample-sized flip gate (``status: gate_failed`` when it fails) and, with labels and
        ``inputs.max_top1_drop``, the accuracy budget on the same images (``details.budget``, the
        shape the ONNX INT8 manifest has; ``status: budget_exceeded`` when it does not hold, which
        wins over ``gate_failed``: the pipeline exits 3 either way).
        """
        x, y = self.inputs.parity_x, self.inputs.parity_y
        cand = self.candidate_logits(path, x)
        if cand is None:
            return {}
        tol = Tolerance.for_precision(str(precision))
        what = f"{self.format} {precision} conversion of {self.source.name}"
        out: dict[str, Any] = {}
        if precision == Precision.INT8:  # sized to the sample (edgetransfer.gates): a failing gate flags, never aborts
            from ..gates import flip_gate

            res = judge(self.reference, cand, Tolerance(), what=what)
            gate = flip_gate(self.reference, cand, name=f"{what} parity")
            out["gate"] = gate.to_dict()
            if not gate.passed:
                out.update(status="gate_failed", gate_failed_reason=gate.reason)
                log(f"[yellow]{gate.reason}: written with status gate_failed")
        else:
            res = judge(self.reference, cand, tol, what=what).raise_for(
                f"the {self.format} converter changed the model: report it with the converter's version, or ship another format")
        stats = res.stats
        out.update({"parity": stats.to_dict(), "tolerance": tol.to_dict()})
        if y is not None:
            out["val_top1_fp32"] = float((self.reference.argmax(1) == y).mean())
            out["val_top1"] = float((cand.argmax(1) == y).mean())
            if precision == Precision.INT8 and self.inputs.max_top1_drop is not None:
                from ..stats import budget_judge

                j = budget_judge(self.reference, cand, y, self.inputs.max_top1_drop, class_names=self.class_names)
                out["budget"] = {"max_top1_drop": float(self.inputs.max_top1_drop), "held": bool(j.holds),
                                 "top1_drop": out["val_top1_fp32"] - out["val_top1"], "vs": self.parity_reference_name,
                                 "split": "val", "judgement": j.to_dict()}
                if not j.holds:
                    out["status"] = "budget_exceeded"
                    log(f"[yellow]{what} does not hold the {self.inputs.max_top1_drop * 100:.2f} pt budget on val: {j.reason}; "
                        "written with status budget_exceeded")
        log(f"{self.format} {precision} vs the fp32 model on {stats.num_samples} validation images: "
            f"max |diff| {stats.max_abs:.3g}, top-1 agreement {stats.agreement:.4f}"
            + (f", top-1 {out['val_top1']:.4f} (fp32 {out['val_top1_fp32']:.4f})" if y is not None else ""))
        return out

    def build(self, precision: Precision | str, out: str | Path) -> Manifest:
        """Convert, parity-check and write ``out`` + ``out.json``. ``out`` appears only when every
        check passed. Raises ConfigError (unsupported precision), MissingExtraError, ParityError."""
        from ..artifacts import atomic_dir, atomic_path

        precision = Precision(precision)
        if precision not in self.precisions:
            raise ConfigError(f"{self.format} holds {', '.join(map(str, self.precisions))}, not {precision}")
        self.require_backend()
        out = Path(out)
        t0 = time.perf_counter()
        atomic: Callable = atomic_dir if out.suffix == ".mlpackage" else atomic_path
        with atomic(out) as tmp:
            # converters (litert-torch) print progress on stdout, which belongs to the CLI's --json output
            with task(f"Building {out.name}", None), contextlib.redirect_stdout(sys.stderr):
                details = self.convert(precision, tmp)
            details["convert_seconds"] = time.perf_counter() - t0
            details.update(self.parity(tmp, precision))
            details.setdefault("parity_vs", self.parity_reference_name)
        inputs, outputs = self.io_specs(precision)
        return write_manifest(out, Manifest(
            format=str(self.format), precision=str(precision), file=out.name, parent_sha256=self.parent.sha256,
            parent_file=self.parent.file, target=self.inputs.target, preprocessing=self.parent.preprocessing,
            class_names=self.class_names, inputs=inputs, outputs=outputs, producer=self.producer,
            tool_versions=tool_versions(*self.version_modules), details=details,
        ))

    parity_reference_name: ClassVar[str] = "pytorch fp32 checkpoint"
    version_modules: ClassVar[tuple[str, ...]] = ("torch",)

    # -- the bundle step -------------------------------------------------------------------
    @classmethod
    def build_into_bundle(cls, bundle: Any, target: Any, inputs: BuildInputs) -> list[Manifest]:
        """This format's whole step of ``edgetransfer build`` for ``target``: every precision the
        target lists and the format holds, built from the bundle's checkpoint, each registered in
        bundle.json. ``bundle``: an :class:`edgetransfer.bundle.Bundle`. Returns the manifests.

        Builders whose source is not the checkpoint (ORT mobile: one file per ONNX artifact, plus
        the reduced-operator config) override this."""
        conv = cls(bundle.checkpoint, inputs)
        wanted = [p for p in cls.precisions if target.supports(p)]
        skipped = [str(p) for p in target.precisions if p not in cls.precisions]
        if skipped:
            log(f"{cls.format}: {', '.join(skipped)} not made ({cls.format} holds {', '.join(map(str, cls.precisions))})")
        made = []
        for p in wanted:
            m = conv.build(p, bundle.dir / cls.file_name(p))
            bundle.register(m.file)
            made.append(m)
        return made


def static_batch_logits(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Run a batch-1 model ``fn`` over ``x`` (N, 3, S, S) image by image -> (N, C) float32."""
    return np.concatenate([np.asarray(fn(np.ascontiguousarray(x[i : i + 1])), np.float32).reshape(1, -1) for i in range(len(x))])
