"""``OrtFromOnnx``: an ONNX artifact (fp32 or INT8 QDQ) -> ORT-format ``.ort`` file for ONNX Runtime
mobile, plus the reduced-operator configuration a custom minimal ONNX Runtime build needs.

Conversion: ``onnxruntime.tools.convert_onnx_models_to_ort`` with the ``Fixed`` optimisation style
(graph optimisations applied once, before saving; the ORT docs' choice when no compiling execution
provider such as NNAPI or Core ML is used) and ``target_platform`` from the target's ``arch``
(``arm``: int8 QDQ fusions allowed, no x86-only NCHWc layout; ``amd64`` otherwise).

Operator config: :func:`write_operator_config` lists every operator (domain; opset; ops) used by
all ``.ort`` files of a bundle — the file ``build.py --minimal_build --include_ops_by_config`` takes
to build an ONNX Runtime that holds only those kernels.

Parity: the ``.ort`` file's logits against the fp32 ONNX model (itself held to 1e-3 of PyTorch) on
the validation images — torch-free, like the rest of the ONNX path.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_write_text
from ..bundle import OPERATOR_CONFIG, ort_file
from ..errors import ArtifactError, ConfigError, require
from ..progress import log
from ..parity import compare_logits
from ..types import Format, Precision
from .base import BuildInputs, Builder, register_builder



def ort_target_platform(arch: str) -> str:
    """``arm`` for arm/aarch64 targets, ``amd64`` otherwise (the converter's two platforms)."""
    return "arm" if arch.lower().startswith(("aarch64", "arm")) else "amd64"


@register_builder(Format.ORT)
class OrtFromOnnx(Builder):
    source_format = Format.ONNX
    extra = "export"
    backend_modules = ("onnxruntime",)
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8)
    producer = "edgetransfer.builders.ort_mobile"
    version_modules = ("onnx", "onnxruntime")
    parity_reference_name = "fp32 onnx"

    def __init__(self, source: str | Path, inputs: BuildInputs):
        super().__init__(source, inputs)
        self.source_precision = Precision(self.parent.precision)

    @classmethod
    def file_name(cls, precision: Precision | str, source: Path | None = None) -> str:
        if source is None:
            raise ConfigError("OrtFromOnnx names its output after the source ONNX file; pass source")
        return ort_file(Path(source).name)

    def reference_logits(self, x: np.ndarray) -> np.ndarray:
        from ..runtime.ort import onnx_logits

        fp32 = self.source if self.source_precision == Precision.FP32 else self.source.parent / (self.parent.parent_file or "")
        if not fp32.is_file():
            raise ConfigError(f"{self.source.name} is {self.source_precision}; its fp32 parent {fp32.name} is needed as the parity "
                              "reference (run 'edgetransfer export' first)")
        return onnx_logits(fp32, x)

    def build(self, precision: Precision | str | None = None, out: str | Path | None = None):
        """``precision`` must be the source's (an .ort file holds the ONNX graph as it is)."""
        precision = Precision(precision or self.source_precision)
        if precision != self.source_precision:
            raise ConfigError(f"{self.source.name} is {self.source_precision}; its .ort file cannot be {precision}")
        return super().build(precision, out or self.source.parent / self.file_name(precision, self.source))

    def convert(self, precision: Precision, out: Path) -> dict[str, Any]:
        require("onnxruntime", self.extra, "ORT-format conversion")
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

        platform = str(self.inputs.options.get("ort_target_platform", "arm"))
        with tempfile.TemporaryDirectory(prefix="edgetransfer-ort-") as td:
            src = Path(td) / "in" / self.source.name
            src.parent.mkdir()
            shutil.copyfile(self.source, src)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):  # the tool prints its progress
                convert_onnx_models_to_ort(src, output_dir=Path(td) / "out", optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=platform)
            produced = Path(td) / "out" / src.with_suffix(".ort").name
            if not produced.is_file():
                raise ConfigError(f"ORT-format conversion of {self.source.name} produced no file:\n{buf.getvalue()[-2000:]}")
            shutil.copyfile(produced, out)
        details: dict[str, Any] = {"converter": "onnxruntime.tools.convert_onnx_models_to_ort", "optimization_style": "Fixed",
                                   "optimization_level": "all", "target_platform": platform, "source_precision": str(self.source_precision)}
        # the .ort file against the very ONNX file it came from, besides the fp32 parity
        from ..runtime.ort import onnx_logits

        x = self.inputs.parity_x
        details["parity_vs_source_onnx"] = compare_logits(onnx_logits(self.source, x), onnx_logits(out, x)).to_dict()
        return details

    def candidate_logits(self, path: Path, x: np.ndarray) -> np.ndarray:
        from ..runtime.ort import onnx_logits

        return onnx_logits(path, x)

    def io_specs(self, precision: Precision):
        return list(self.parent.inputs), list(self.parent.outputs)

    @classmethod
    def build_into_bundle(cls, bundle: Any, target: Any, inputs: BuildInputs) -> list:
        """One ``.ort`` file per ONNX artifact of the bundle whose precision the target lists, each
        registered, then the bundle's reduced-operator config (re)written for all of them.
        Raises :class:`ArtifactError` when the bundle has no ONNX file."""
        made = []
        for a in bundle.registered(Format.ONNX):
            if target.supports(a["precision"]):
                m = cls(bundle.path(a["file"]), inputs).build()
                bundle.register(m.file)
                made.append(m)
        if not made:
            raise ArtifactError(f"format {cls.format} converts the bundle's ONNX files but there are none; run 'edgetransfer export' first")
        cfg = write_operator_config(bundle.dir, [bundle.path(m.file) for m in made])
        log(f"reduced-operator config for a minimal ONNX Runtime build: {cfg}")
        return made


def write_operator_config(directory: Path, ort_files: list[Path], enable_type_reduction: bool = False) -> Path:
    """Write ``directory/ort.required_operators.config`` for ``ort_files`` (atomically); return its path.

    Raises :class:`ConfigError` when ``ort_files`` is empty.
    """
    require("onnxruntime", "export", "the ORT operator config")
    from onnxruntime.tools.ort_format_model import create_config_from_models

    if not ort_files:
        raise ConfigError("no .ort files to derive a reduced-operator config from")
    out = Path(directory) / OPERATOR_CONFIG
    with tempfile.TemporaryDirectory(prefix="edgetransfer-ortcfg-") as td:
        tmp = Path(td) / OPERATOR_CONFIG
        create_config_from_models([Path(p) for p in ort_files], tmp, enable_type_reduction)
        text = tmp.read_text()
    for p in ort_files:  # name the models by file name, not by this machine's paths
        text = text.replace(str(Path(p)), Path(p).name)
    header = ("# Operators needed by this bundle's .ort models: build a minimal ONNX Runtime holding only these with\n"
              "#   ./build.sh --minimal_build --include_ops_by_config " + OPERATOR_CONFIG + "\n")
    atomic_write_text(out, header + text)
    return out


def operator_config_ops(path: Path) -> dict[str, list[str]]:
    """Parse a reduced-operator config: ``{"domain;opset": [ops...]}`` (comment lines skipped)."""
    ops: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, names = line.split(";", 2)
        ops[f"{domain};{opset}"] = sorted(n.split("{")[0] for n in names.split(","))
    return ops
