"""Hugging Face models in the export stage: the ``hf/`` folder of the bundle and the Optimum exporter.

* :func:`write_hf_folder`: the fine-tuned model as a ``save_pretrained`` folder (config.json with
  the user's ``id2label`` / ``label2id``, the weights as safetensors, the image processor's
  config), reloaded with ``AutoModelForImageClassification.from_pretrained`` and checked to give
  the checkpoint's logits exactly; written atomically (a temporary folder renamed into place).
* :func:`choose_exporter`: ``--exporter auto|optimum|torch`` -> which exporter runs and why
  (auto: Optimum for a Hugging Face model when the ``hf`` extra is installed, else edgetransfer's
  own torch exporter).
* :func:`optimum_export_fn`: ``optimum.exporters.onnx.main_export`` on the ``hf/`` folder with
  the task given explicitly (``image-classification``: an offline export cannot infer it from the
  Hub, huggingface/optimum#1104) and ``library_name='transformers'`` (a local folder is not
  mistaken for a timm hub model, huggingface/optimum#2423); its graph input ``pixel_values`` is
  renamed to edgetransfer's ``input`` with fixed channel / spatial dims and a dynamic batch. The
  result then goes through the same gates as the torch exporter
  (:func:`edgetransfer.export.onnx.export_module`: strict shape inference, full checker, batch
  1/3/8, parity vs PyTorch on validation photos).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, EdgeTransferError, require

EXPORTERS = ("auto", "optimum", "torch")
TASK = "image-classification"


def is_hf(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("model", {}).get("arch", {}).get("source") == "hf"


def optimum_available() -> bool:
    return importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.exporters.onnx") is not None


def versions() -> dict[str, str]:
    """Installed versions of the hf extra's packages (distribution names)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in ("optimum-onnx", "optimum", "transformers", "huggingface_hub"):
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            pass
    return out


def choose_exporter(requested: str, hf_model: bool) -> tuple[str, str]:
    """``(exporter, reason)``: ``"optimum"`` or ``"torch"``. Raises :class:`ConfigError` for
    ``optimum`` on a model that is not a Hugging Face one, or without the ``hf`` extra."""
    if requested not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS} (got {requested!r})")
    if requested == "torch":
        return "torch", "--exporter torch"
    if requested == "optimum":
        if not hf_model:
            raise ConfigError("--exporter optimum exports Hugging Face models only (--model hf:ID_OR_DIR); use --exporter torch or auto")
        if not optimum_available():
            raise ConfigError("--exporter optimum needs the hf extra: pip install 'edgetransfer[hf]'")
        return "optimum", "--exporter optimum"
    if not hf_model:
        return "torch", "auto: not a Hugging Face model"
    if not optimum_available():
        return "torch", "auto: Hugging Face model, optimum not installed (pip install 'edgetransfer[hf]')"
    return "optimum", "auto: Hugging Face model and optimum installed"


def write_hf_folder(model, arch: dict[str, str], directory: Path, x: np.ndarray) -> dict[str, Any]:
    """Write ``model`` (an :class:`~edgetransfer.models_hf.HFClassifier`) to ``directory`` and
    reload it with ``from_pretrained``; ``x``: float32 (N, 3, S, S) inputs whose logits must be
    equal. Returns ``{"dir", "files", "id2label", "reload_max_abs_diff"}``. Raises
    :class:`EdgeTransferError` when the reloaded model's logits differ."""
    from ..models_hf import save_folder

    torch = require("torch", "train")
    tr = require("transformers", "hf", "the hf/ folder")
    directory = Path(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_folder(model, arch, tmp)
        back = tr.AutoModelForImageClassification.from_pretrained(str(tmp), local_files_only=True).eval()
        xt = torch.from_numpy(np.ascontiguousarray(x[:8]))
        with torch.no_grad():
            diff = float((back(pixel_values=xt).logits - model.eval()(xt)).abs().max())
        if diff != 0.0:
            raise EdgeTransferError(f"the Hugging Face folder reloaded with from_pretrained gives other logits (max |diff| {diff:.3g})")
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"dir": directory.name, "files": sorted(p.name for p in directory.iterdir()),
            "id2label": {str(k): v for k, v in back.config.id2label.items()}, "reload_max_abs_diff": diff}


def optimum_export_fn(hf_dir: Path, input_name: str, input_size: int) -> Callable[..., str]:
    """An exporter for :func:`~edgetransfer.export.onnx.export_module`: ``fn(model, x, path,
    opset, dynamo) -> description``, writing Optimum's export of ``hf_dir`` to ``path``."""

    def fn(model, x, path: Path, opset: int, dynamo: bool) -> str:
        onnx = require("onnx", "export")
        exporters = require("optimum.exporters.onnx", "hf", "the Optimum exporter")
        tr = require("transformers", "hf")
        with tempfile.TemporaryDirectory(prefix="optimum-") as out:
            verbosity = tr.logging.get_verbosity()
            tr.logging.set_verbosity_error()
            try:
                exporters.main_export(str(hf_dir), out, task=TASK, opset=opset, device="cpu", do_validation=False,
                                      local_files_only=True, library_name="transformers")
            finally:
                tr.logging.set_verbosity(verbosity)
            files = sorted(Path(out).glob("*.onnx"))
            if len(files) != 1:
                raise EdgeTransferError(f"Optimum wrote {[f.name for f in files]}, expected one ONNX file")
            m = onnx.load(str(files[0]))
        old = m.graph.input[0].name
        for node in m.graph.node:
            node.input[:] = [input_name if i == old else i for i in node.input]
        inp = m.graph.input[0]
        inp.name = input_name
        for d, v in zip(inp.type.tensor_type.shape.dim[1:], (3, input_size, input_size)):
            d.ClearField("dim_param")
            d.dim_value = v
        onnx.save_model(m, str(path), save_as_external_data=False)
        return f"optimum.exporters.onnx.main_export (optimum-onnx {versions().get('optimum-onnx', '?')}, task {TASK})"

    return fn
