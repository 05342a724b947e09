"""Checkpoint I/O: the trained model (``model.pt`` + manifest) and torch objects written by training
(``last.pt``, feature caches).

Everything is written with ``torch.save`` into a temporary file in the destination directory and
renamed onto the final name (:func:`edgetransfer.artifacts.atomic_path`), so an interrupted write
never leaves a truncated file; everything is read with ``torch.load(weights_only=True)``, which
unpickles only tensors and plain containers (PyTorch's safe loader: no code runs on load).

A checkpoint is a dict::

    {"format": "edgetransfer-checkpoint", "version": 1, "model": ModelInfo.to_dict(),
     "state_dict": {name: tensor (CPU, contiguous)}, "class_names": [...],
     "preprocessing": PreprocessSpec.to_dict(), "config": {...}, "metrics": {...}}

Used by training (write), export, the PyTorch runner and the builders (read); none of them imports
:mod:`edgetransfer.train`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .artifacts import Manifest, atomic_path, read_manifest, tool_versions, write_manifest
from .errors import ArtifactError, require
from .types import Format, Precision

CHECKPOINT_FORMAT = "edgetransfer-checkpoint"
CHECKPOINT_VERSION = 1


def _torch():
    return require("torch", "train", "checkpoints")


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (a crash leaves the previous file, or none).
    ``obj`` must hold only what ``torch.load(weights_only=True)`` accepts (tensors, numbers,
    strings, lists, tuples, dicts). Returns ``path``."""
    torch = _torch()
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_torch(path: str | Path) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)``."""
    return _torch().load(Path(path), map_location="cpu", weights_only=True)


def _plain(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(config or {})


def save_checkpoint(path: str | Path, model, info, class_names: list[str], config: Any,
                    metrics: dict[str, Any], dataset: dict[str, Any]) -> Manifest:
    """Write the checkpoint of ``model`` (an ``nn.Module``; its state dict is copied to CPU) to
    ``path`` atomically, then its manifest ``<path>.json`` (sha256, preprocessing, class names,
    I/O specs: input float32 (batch, 3, S, S) NCHW, output logits float32 (batch, C)).

    ``info``: the :class:`edgetransfer.models.ModelInfo` of the model; ``config``: the training
    config (a dataclass or a dict, stored as a dict); ``metrics`` and ``dataset``: JSON-able dicts
    kept in the checkpoint (metrics) and the manifest's details. Returns the manifest."""
    path = Path(path)
    cfg = _plain(config)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": info.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        "preprocessing": info.preprocessing.to_dict(),
        "config": cfg,
        "metrics": metrics,
    }
    save_torch(ckpt, path)
    s = info.preprocessing.input_size
    return write_manifest(path, Manifest(
        format=str(Format.CHECKPOINT), precision=str(Precision.FP32), file=path.name,
        preprocessing=info.preprocessing.to_dict(), class_names=list(class_names),
        inputs=[{"name": "input", "shape": ["batch", 3, s, s], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", len(class_names)], "dtype": "float32"}],
        producer="edgetransfer.train", tool_versions=tool_versions("torch", "torchvision", "timm"),
        details={"model": info.to_dict(), "config": cfg, "metrics": metrics, "dataset": dataset},
    ))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path``, its sha256 verified against the manifest first.

    Raises :class:`ArtifactError` when the file or manifest is missing, the hash differs, or the
    file is not an edgetransfer checkpoint."""
    from .models import is_checkpoint

    path = Path(path)
    read_manifest(path)
    ckpt = load_torch(path)
    if not is_checkpoint(ckpt):
        raise ArtifactError(f"{path} is not an edgetransfer checkpoint; produce one with 'edgetransfer train'")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load an edgetransfer checkpoint (sha256-verified against its manifest, weights_only=True).
    Returns ``(model in eval mode on CPU, checkpoint dict)``; raises as :func:`read_checkpoint`."""
    from .models import load_checkpoint_model

    ckpt = read_checkpoint(path)
    return load_checkpoint_model(ckpt), ckpt
