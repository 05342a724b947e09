"""The training state that survives an interruption: ``OUT/last.pt`` (weights that moved, optimizer,
schedule, gradient scaler, RNG, best epoch so far, history), written atomically after every epoch
and read back by ``resume=True``, plus the per-epoch metrics files ``OUT/metrics.csv`` and
``OUT/metrics.json``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, atomic_write_text
from ..bundle import LAST_CHECKPOINT  # noqa: F401 (re-exported)
from ..checkpoint import load_torch, save_torch
from ..errors import TrainingError
from .config import RESUME_IGNORED, TrainConfig
from .device import _torch

METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
STATE_FORMAT = "edgetransfer-train-state"
METRICS_COLUMNS = ["phase", "epoch", "train_loss", "val_loss", "val_top1", "lr", "seconds", "images_per_s"]


@dataclass
class RunState:
    """Where a run stands: the phase in progress (index) and the epochs done in it, whether it
    early-stopped, the best epoch so far (key: (val top-1, val loss); its weights on CPU), the
    epochs without improvement in this phase, and the history rows."""

    phase: int = 0
    epoch: int = 0
    stopped: bool = False
    best_key: tuple[float, float] = (-1.0, math.inf)
    best_state: dict | None = None
    best_phase: str = ""
    best_epoch: int = 0
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def save_state(path: Path, *, cfg: TrainConfig, class_names: list[str], info, state: RunState, model_state: dict[str, Any],
               optimizer, scheduler, scaler) -> None:
    """Write the training state to ``path`` atomically (loadable with weights_only=True)."""
    torch = _torch()
    s = state
    save_torch({
        "format": STATE_FORMAT, "version": 1, "config": asdict(cfg),
        "class_names": list(class_names), "model": info.to_dict(),
        "preprocessing": info.preprocessing.to_dict(), "phase": s.phase, "epoch": s.epoch, "stopped": s.stopped,
        "best_key": list(s.best_key), "best_state": s.best_state, "best_phase": s.best_phase, "best_epoch": s.best_epoch,
        "stale": s.stale, "history": s.history, "model_state": model_state,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }, path)


def load_state(path: Path, cfg: TrainConfig, class_names: list[str]) -> dict[str, Any]:
    """Read a training state written by :func:`save_state` for this run. Raises
    :class:`TrainingError` when it is not a training state, was written with other settings
    (fields in ``RESUME_IGNORED`` may differ), or for other classes."""
    obj = load_torch(path)
    if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not an edgetransfer training state; remove it or drop --resume")
    mine, theirs = asdict(cfg), obj["config"]
    diff = sorted(k for k in set(mine) | set(theirs) if k not in RESUME_IGNORED and mine.get(k) != theirs.get(k))
    if diff:
        raise TrainingError(f"--resume: {path} was written with different settings ({', '.join(f'{k}={theirs.get(k)!r}' for k in diff)}); "
                            "resume with the same settings, or start a new run in another --out")
    if obj["class_names"] != list(class_names):
        raise TrainingError(f"--resume: {path} was trained on classes {obj['class_names']}, the data has {class_names}")
    return obj


def restore(state: RunState, obj: dict[str, Any]) -> None:
    """Fill ``state`` from a loaded training state."""
    s = state
    s.phase, s.epoch, s.stopped = int(obj["phase"]), int(obj["epoch"]), bool(obj["stopped"])
    s.best_key = (float(obj["best_key"][0]), float(obj["best_key"][1]))
    s.best_state, s.best_phase, s.best_epoch = obj["best_state"], obj["best_phase"], int(obj["best_epoch"])
    s.stale, s.history = int(obj["stale"]), list(obj["history"])


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``out/metrics.json`` (the history rows) and ``out/metrics.csv`` (:data:`METRICS_COLUMNS`)."""
    atomic_write_json(out / METRICS_JSON, history)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(out / METRICS_CSV, buf.getvalue())
