"""Transfer learning: freeze the pretrained backbone, train the new head, keep the best checkpoint.

With the backbone frozen (and its BatchNorm layers in eval mode, so their running statistics
never move) the backbone's output for a given preprocessed image never changes, so by default the
features are extracted once and the head is trained on them (``feature_cache``); the naive loop
that runs the whole network every step is kept for augmentation and as the reference.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import Manifest, atomic_path, tool_versions, write_manifest
from .data import ImageFolder, PreprocessSpec, iter_batches
from .errors import ConfigError, EdgeTransferError, require
from .models import DEFAULT_MODEL, ModelInfo, build_model
from .progress import log, task
from .types import Format, Precision


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. ``lr`` is the head's learning rate (AdamW); ``epochs`` head epochs."""

    model: str = DEFAULT_MODEL
    arch: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    seed: int = 0
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.2
    feature_cache: bool = True
    device: str | None = None  # None: cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if not (0 < self.lr < 10):
            raise ConfigError(f"--lr must be in (0, 10) (got {self.lr})")
        if not (0 <= self.label_smoothing < 1):
            raise ConfigError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.head not in ("linear", "mlp"):
            raise ConfigError(f"--head must be 'linear' or 'mlp' (got {self.head!r})")


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best_val_top1: float
    history: list[dict[str, float]] = field(default_factory=list)
    info: ModelInfo | None = None


def _torch():
    return require("torch", "train", "training")


def freeze_backbone(model, head_path: str) -> list[str]:
    """Make only the parameters under ``head_path`` trainable. Returns the frozen parameter names."""
    frozen = []
    for name, p in model.named_parameters():
        trainable = name == head_path or name.startswith(head_path + ".")
        p.requires_grad_(trainable)
        if not trainable:
            frozen.append(name)
    return frozen


def set_train_mode(model) -> None:
    """``model.train()`` for the trainable parts only: every module without a trainable parameter
    of its own (the frozen backbone, its BatchNorm and dropout layers included) stays in eval
    mode, so BatchNorm running statistics of the frozen backbone never move."""
    model.eval()
    for m in model.modules():
        params = list(m.parameters())
        if params and all(p.requires_grad for p in params):
            m.train()  # recurses: a fully trainable head trains with its dropout layers


def pick_device(device: str | None) -> str:
    torch = _torch()
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def extract_features(model, head_path: str, folder: ImageFolder, spec: PreprocessSpec, batch_size: int,
                     device: str, desc: str) -> tuple[Any, Any]:
    """Run the frozen network once over ``folder``; return (features float32 (N, ...), labels int64 (N,))
    where features are the inputs of the head module (captured by a forward pre-hook)."""
    torch = _torch()
    head = model.get_submodule(head_path)
    captured: list = []
    hook = head.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach().float().cpu()))
    model.eval()
    labels = []
    try:
        with torch.inference_mode(), task(desc, len(folder)) as advance:
            for x, y in iter_batches(folder.samples, spec, batch_size):
                model(torch.from_numpy(x).to(device))
                labels.append(torch.from_numpy(y))
                advance(len(y))
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(labels)


def _head_logits(head, feats):
    torch = _torch()
    return torch.flatten(head(feats), 1)


def _evaluate_head(head, feats, labels, loss_fn, batch: int = 512) -> tuple[float, float]:
    torch = _torch()
    head.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            out = _head_logits(head, feats[i : i + batch])
            loss_sum += float(loss_fn(out, labels[i : i + batch])) * len(out)
            correct += int((out.argmax(1) == labels[i : i + batch]).sum())
    n = max(1, len(labels))
    return correct / n, loss_sum / n


def fit_head_on_features(head, train_feats, train_labels, val_feats, val_labels, cfg: TrainConfig,
                         device: str) -> tuple[dict, int, float, list[dict[str, float]]]:
    """Train ``head`` on cached features (AdamW, cosine schedule). Returns
    ``(best_state_dict, best_epoch, best_val_top1, history)``; best = highest val top-1, ties
    broken by lower val loss."""
    torch = _torch()
    g = torch.Generator().manual_seed(cfg.seed)
    head.to(device)
    tf, tl = train_feats.to(device), train_labels.to(device)
    vf, vl = val_feats.to(device), val_labels.to(device)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tl) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_loss = torch.nn.CrossEntropyLoss()
    best = (-1.0, math.inf)
    best_state, best_epoch, history = None, 0, []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        head.train()
        perm = torch.randperm(len(tl), generator=g).to(device)
        tot = 0.0
        for i in range(0, len(tl), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = loss_fn(_head_logits(head, tf[idx]), tl[idx])
            if not torch.isfinite(loss):
                raise EdgeTransferError(f"non-finite loss at epoch {epoch}, step {i // cfg.batch_size}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        top1, vloss = _evaluate_head(head, vf, vl, eval_loss)
        history.append({"epoch": epoch, "train_loss": tot / len(tl), "val_loss": vloss, "val_top1": top1,
                        "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        if (top1, -vloss) > (best[0], -best[1]):
            best = (top1, vloss)
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in head.state_dict().items()})
            best_epoch = epoch
    return best_state, best_epoch, best[0], history


def train_epoch_naive(model, folder: ImageFolder, spec: PreprocessSpec, cfg: TrainConfig, opt, device: str) -> float:
    """One epoch through the whole network (frozen parts in eval mode). Returns the mean loss."""
    torch = _torch()
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(folder.samples))
    samples = [folder.samples[i] for i in order]
    set_train_mode(model)
    tot, n = 0.0, 0
    for x, y in iter_batches(samples, spec, cfg.batch_size):
        out = model(torch.from_numpy(x).to(device))
        loss = loss_fn(out, torch.from_numpy(y).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * len(y)
        n += len(y)
    model.eval()
    return tot / max(1, n)


def evaluate_model(model, folder: ImageFolder, spec: PreprocessSpec, batch_size: int, device: str) -> float:
    """Top-1 of ``model`` on ``folder`` (fraction)."""
    torch = _torch()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in iter_batches(folder.samples, spec, batch_size):
            correct += int((model(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy() == y).sum())
    return correct / max(1, len(folder))


def save_checkpoint(path: Path, model, info: ModelInfo, class_names: list[str], cfg: TrainConfig,
                    metrics: dict[str, Any], dataset: dict[str, Any]) -> Manifest:
    """Write ``path`` (torch.save, loadable with weights_only=True) atomically plus its manifest."""
    torch = _torch()
    ckpt = {
        "format": "edgetransfer-checkpoint",
        "version": 1,
        "model": info.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        "preprocessing": info.preprocessing.to_dict(),
        "config": asdict(cfg),
        "metrics": metrics,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    s = info.preprocessing.input_size
    return write_manifest(path, Manifest(
        format=str(Format.CHECKPOINT), precision=str(Precision.FP32), file=path.name,
        preprocessing=info.preprocessing.to_dict(), class_names=list(class_names),
        inputs=[{"name": "input", "shape": ["batch", 3, s, s], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", len(class_names)], "dtype": "float32"}],
        producer="edgetransfer.train", tool_versions=tool_versions("torch", "torchvision", "timm"),
        details={"model": info.to_dict(), "config": asdict(cfg), "metrics": metrics, "dataset": dataset},
    ))


def train(train_set: ImageFolder, val_set: ImageFolder, out: Path, cfg: TrainConfig) -> TrainResult:
    """Build the model, freeze the backbone, train the head, write ``out/model.pt`` (+ manifest).

    Raises :class:`ConfigError` / :class:`ModelSourceError` before any long work on bad settings.
    """
    torch = _torch()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    model, info = build_model(cfg.model, len(train_set.class_names), head=cfg.head, hidden=cfg.hidden,
                              dropout=cfg.dropout, arch=cfg.arch)
    log(f"model: {info.source}; new {cfg.head} head at '{info.head_path}' ({info.feature_dim} -> {info.num_classes})")
    frozen = freeze_backbone(model, info.head_path)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"frozen backbone: {len(frozen)} tensors; trainable head parameters: {n_train}")
    model.to(device)
    spec = info.preprocessing
    t0 = time.perf_counter()
    if cfg.feature_cache:
        tf, tl = extract_features(model, info.head_path, train_set, spec, cfg.batch_size, device, "Features (train)")
        vf, vl = extract_features(model, info.head_path, val_set, spec, cfg.batch_size, device, "Features (val)")
        head = model.get_submodule(info.head_path)
        best_state, best_epoch, best_top1, history = fit_head_on_features(head, tf, tl, vf, vl, cfg, device)
        head.load_state_dict(best_state)
    else:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        best_top1, best_epoch, history, best_state = -1.0, 0, [], None
        for epoch in range(1, cfg.epochs + 1):
            e0 = time.perf_counter()
            loss = train_epoch_naive(model, train_set, spec, cfg, opt, device)
            top1 = evaluate_model(model, val_set, spec, cfg.batch_size, device)
            history.append({"epoch": epoch, "train_loss": loss, "val_top1": top1, "seconds": time.perf_counter() - e0})
            if top1 > best_top1:
                best_top1, best_epoch = top1, epoch
                best_state = copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
    model.eval().cpu()
    train_seconds = time.perf_counter() - t0
    for h in history:
        log(f"  epoch {h['epoch']:>3}  loss {h['train_loss']:.4f}  val top-1 {h['val_top1']:.4f}")
    log(f"best: epoch {best_epoch}, val top-1 {best_top1:.4f} ({train_seconds:.1f} s)")
    metrics = {"best_epoch": best_epoch, "val_top1": best_top1, "history": history, "train_seconds": train_seconds,
               "device": device, "phase": "head"}
    dataset = {"train_root": str(train_set.root), "val_root": str(val_set.root), "num_train": len(train_set),
               "num_val": len(val_set), "train_counts": train_set.counts(), "val_counts": val_set.counts(),
               "skipped": train_set.skipped + [s for s in val_set.skipped if s not in train_set.skipped]}
    ckpt = Path(out) / "model.pt"
    save_checkpoint(ckpt, model, info, train_set.class_names, cfg, metrics, dataset)
    return TrainResult(ckpt, best_epoch, best_top1, history, info)


def load_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    """Load an edgetransfer checkpoint (sha256-verified against its manifest, weights_only=True).
    Returns ``(model in eval mode, checkpoint dict)``."""
    from .artifacts import read_manifest
    from .models import is_checkpoint, load_checkpoint_model

    torch = _torch()
    read_manifest(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not is_checkpoint(ckpt):
        raise EdgeTransferError(f"{path} is not an edgetransfer checkpoint; produce one with 'edgetransfer train'")
    return load_checkpoint_model(ckpt), ckpt
