"""``OnnxFromTorch``: an edgetransfer checkpoint -> one self-contained fp32 ONNX file.

The model is exported in eval mode from a batch of 2 (a batch-1 trace can specialise the batch
axis), with a dynamic batch axis, input ``input`` and output ``logits``, then checked with
``onnx.checker`` (full check), verified to run at batch sizes 1, 3 and 8, and parity-checked
against PyTorch on real validation images. Class names and preprocessing are written into the
ONNX ``metadata_props`` as JSON so a runtime holding only the .onnx knows how to feed it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Manifest, atomic_path, read_manifest, tool_versions, write_manifest
from ..errors import ConfigError, EdgeTransferError, require
from ..progress import log, task
from ..types import Format, Precision
from .parity import TOLERANCES, check_parity, compare_logits

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportConfig:
    """``opset``: None = min(18, target's opset_max). ``dynamo``: try torch.export first, fall
    back to the TorchScript exporter (recorded in the manifest). ``max_abs``: fp32 parity tolerance."""

    opset: int | None = None
    dynamo: bool = True
    trace_batch: int = 2
    max_abs: float = TOLERANCES["fp32"]["max_abs"]
    min_agreement: float = TOLERANCES["fp32"]["min_agreement"]

    def __post_init__(self) -> None:
        if self.trace_batch < 2:
            raise ConfigError("trace_batch must be >= 2: a batch-1 trace can freeze the batch size")
        if self.opset is not None and not 13 <= self.opset <= 23:
            raise ConfigError(f"opset {self.opset} is outside the supported range 13..23")


def _export(model, x, path: Path, opset: int, dynamo: bool) -> str:
    torch = require("torch", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, verbose=False)
            return "torch.onnx.export(dynamo=True)"
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True)
        return "torch.onnx.export(dynamo=False, TorchScript)"


def _finalise(path: Path, class_names: list[str], preprocessing: dict[str, Any], extra_meta: dict[str, str]) -> None:
    """Name the batch axis, embed metadata, save as one file, run the full checker."""
    onnx = require("onnx", "export")
    m = onnx.load(str(path))
    for vi in list(m.graph.input) + list(m.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "batch"
    meta = {"class_names": json.dumps(class_names), "preprocessing": json.dumps(preprocessing), "producer": "edgetransfer", **extra_meta}
    keep = [p for p in m.metadata_props if p.key not in meta]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save_model(m, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def verify_dynamic_batch(path: Path, num_classes: int, input_size: int, batches=(1, 3, 8)) -> None:
    from ..runtime.ort import make_session

    sess = make_session(path)
    for b in batches:
        out = sess.run(None, {INPUT_NAME: np.zeros((b, 3, input_size, input_size), np.float32)})[0]
        if out.shape != (b, num_classes):
            raise EdgeTransferError(f"{path.name}: batch {b} gave output shape {out.shape}, expected {(b, num_classes)}: the batch axis is not dynamic")


def onnx_logits(path: Path, x: np.ndarray, batch: int = 32, **session_kw) -> np.ndarray:
    from ..runtime.ort import make_session

    sess = make_session(path, **session_kw)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, 0))


def torch_logits(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    torch = require("torch", "train")
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])


def onnx_from_torch(checkpoint: Path, out: Path, parity_x: np.ndarray, *, opset_max: int = 21, target: str | None = None,
                    cfg: ExportConfig = ExportConfig()) -> Manifest:
    """Export ``checkpoint`` to ``out`` (.onnx) and write its manifest.

    ``parity_x``: float32 (N, 3, S, S) preprocessed validation images for the parity check.
    Raises :class:`ParityError` when max |logit diff| > ``cfg.max_abs`` or agreement is too low;
    ``out`` is only created (atomically) when every check passed.
    """
    from ..train import load_checkpoint

    torch = require("torch", "train")
    parent = read_manifest(checkpoint)
    model, ckpt = load_checkpoint(checkpoint)
    model.eval()  # always: a model handed over in train mode must not export training behaviour
    opset = cfg.opset or min(DEFAULT_OPSET, opset_max)
    if opset > opset_max:
        raise ConfigError(f"opset {opset} exceeds the target's ceiling {opset_max}; pass --opset {opset_max} or lower")
    size = int(ckpt["preprocessing"]["input_size"])
    class_names = list(ckpt["class_names"])
    x = torch.randn(cfg.trace_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    exporter, errors = None, []
    with atomic_path(out, suffix=".onnx") as tmp:
        for dynamo in ([True, False] if cfg.dynamo else [False]):
            try:
                with task(f"Exporting ONNX (opset {opset}, {'dynamo' if dynamo else 'TorchScript'})", None):
                    exporter = _export(model, x, tmp, opset, dynamo)
                break
            except Exception as exc:  # the dynamo exporter fails on some models: fall back, recorded
                errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:500]}")
                log(f"[yellow]ONNX export with {'dynamo' if dynamo else 'TorchScript'} failed: {type(exc).__name__}; "
                    + ("falling back to the TorchScript exporter" if dynamo else "no exporter left"))
        if exporter is None:
            raise EdgeTransferError("ONNX export failed with every exporter:\n" + "\n".join(errors))
        _finalise(tmp, class_names, ckpt["preprocessing"], {"exporter": exporter})
        verify_dynamic_batch(tmp, len(class_names), size)
        with task(f"Parity vs PyTorch ({len(parity_x)} images)", None):
            ref = torch_logits(model, parity_x)
            cand = onnx_logits(tmp, parity_x)
        stats = compare_logits(ref, cand)
        check_parity(stats, output=OUTPUT_NAME, what=f"ONNX export of {checkpoint.name}", max_abs=cfg.max_abs,
                     min_agreement=cfg.min_agreement)
    log(f"ONNX parity vs PyTorch on {stats.num_samples} images: max |diff| {stats.max_abs:.2e}, "
        f"mean {stats.mean_abs:.2e}, top-1 agreement {stats.agreement:.4f}")
    onnx = require("onnx", "export")
    return write_manifest(out, Manifest(
        format=str(Format.ONNX), precision=str(Precision.FP32), file=out.name, parent_sha256=parent.sha256,
        parent_file=parent.file, target=target, preprocessing=ckpt["preprocessing"], class_names=class_names,
        inputs=[{"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32"}],
        outputs=[{"name": OUTPUT_NAME, "shape": ["batch", len(class_names)], "dtype": "float32"}],
        producer="edgetransfer.export.onnx", tool_versions=tool_versions("torch", "onnx", "onnxruntime", "onnxscript"),
        details={"exporter": exporter, "exporter_errors": errors, "opset": opset, "onnx_ir_version": onnx.load(str(out), load_external_data=False).ir_version,
                 "parity_vs": "pytorch", "parity": stats.to_dict(),
                 "tolerance": {"max_abs": cfg.max_abs, "min_agreement": cfg.min_agreement},
                 "dynamic_batch_verified": [1, 3, 8]},
    ))
