"""Transfer learning: pretrained backbone -> new head -> frozen backbone -> train the head ->
optionally unfreeze part of the backbone and fine-tune; keep the best model on validation.

The recipe (Yosinski et al. 2014; fastai's ``fine_tune``; timm's layer-wise lr decay):

1. **Head phase** (``epochs``): only the new head trains (``freeze='backbone'``), or the head plus
   the last ``trainable_blocks`` stages, or everything (``freeze='none'``). Frozen modules stay in
   eval mode the whole run, so frozen BatchNorm running statistics never move.
2. **Fine-tune phase** (``finetune_epochs``, optional): starting from the best head-phase model,
   ``unfreeze='last:K'|'all'`` stages train with discriminative learning rates (head lr =
   ``finetune_lr``, backbone lr = head lr x ``backbone_lr_factor``, times ``layer_decay`` per stage
   away from the head), linear warm-up then cosine decay (per step), AdamW.
3. The model handed back is the best epoch of either phase on validation top-1 (ties: lower
   validation loss), so fine-tuning can never return a model worse on validation than head-only;
   the log and the checkpoint say which phase produced it.

**Feature caching.** With only the head training, the frozen backbone's output for a given
preprocessed image never changes, so it is computed once (optionally for ``views`` augmented views
per image), kept in memory or in an on-disk cache keyed by the weights, the data files and the
preprocessing, and the head trains on it: identical maths, epochs in milliseconds.

**Runs that survive.** ``OUT/last.pt`` (training state: weights, optimizer, schedule, RNG, best
so far, history) is written atomically after every epoch and ``resume=True`` continues from it
to the same result; ``OUT/model.pt`` is the best model (+ manifest); per-epoch metrics go to
``OUT/metrics.csv`` and ``OUT/metrics.json``.

**Devices.** CUDA when present: automatic mixed precision (bf16 where supported, else fp16 with a
gradient scaler), channels_last, pinned host memory. Under ``torchrun`` (``WORLD_SIZE`` > 1) the
run uses DistributedDataParallel (NCCL on CUDA, gloo on CPU) with a distributed sampler; only
rank 0 writes files, and the final parameters are checked to be identical on every rank.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .artifacts import atomic_path, atomic_write_json, atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: F401  (load_checkpoint: re-exported for old callers)
from .augment import augment_file
from .data import ImageFolder, PreprocessSpec, Sample, preprocess_file
from .errors import ConfigError, DataError, TrainingError, require
from .models import DEFAULT_MODEL, ModelInfo, backbone_blocks, build_model, head_logits, state_digest
from .progress import log, task

LAST_CHECKPOINT = "last.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
# config fields that may differ between an interrupted run and its --resume (they do not change the result)
RESUME_IGNORED = ("resume", "device", "cache_dir", "strict")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; every field has a default, ``None`` means "the default".

    Head phase: ``epochs`` epochs at ``lr`` (AdamW, the head's learning rate), ``freeze``
    ('backbone' | 'none'), ``trainable_blocks`` (last N backbone stages also train),
    ``freeze_bn`` (BatchNorm stays in eval mode with fixed affine parameters even in trainable
    stages; for small datasets). Fine-tune phase: ``finetune_epochs`` epochs, ``unfreeze``
    ('last:K' | 'all'), head lr ``finetune_lr`` (default ``lr / 10``), backbone lr = head lr x
    ``backbone_lr_factor`` x ``layer_decay`` ** (stages away from the head). Both phases:
    ``warmup_epochs`` of linear warm-up, then cosine to 0; ``weight_decay`` on weights only (not
    biases or norm parameters); ``clip_grad_norm`` (L2, None = off); ``label_smoothing``;
    ``class_weights`` (loss weights n / (C * n_c), scikit-learn's 'balanced') or
    ``balanced_sampler`` (draws with probability 1 / n_c, with replacement); ``early_stopping``
    (stop a phase after N epochs without a better validation result). Data: ``augment``
    (random resized crop + flip in loops that run the whole network), ``views`` (cached feature
    views per image: view 0 plain, the others augmented), ``strict`` (undecodable images are an
    error instead of being skipped). Runs: ``seed``, ``resume`` (continue OUT/last.pt),
    ``cache_dir`` (on-disk feature cache; None = memory only), ``device`` (None: cuda when
    available), ``amp`` ('auto' | 'off' | 'bf16' | 'fp16'; auto = bf16 on CUDA where supported,
    else fp16, and off on CPU), ``channels_last`` (CUDA only).

    Raises :class:`ConfigError` on a bad value or combination.
    """

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
    device: str | None = None
    freeze: str = "backbone"
    trainable_blocks: int = 0
    freeze_bn: bool = False
    finetune_epochs: int = 0
    unfreeze: str = "last:1"
    finetune_lr: float | None = None
    backbone_lr_factor: float = 0.1
    layer_decay: float | None = None
    warmup_epochs: float = 0.0
    clip_grad_norm: float | None = None
    class_weights: bool = False
    balanced_sampler: bool = False
    augment: bool = False
    views: int = 1
    early_stopping: int | None = None
    strict: bool = False
    resume: bool = False
    cache_dir: str | None = None
    amp: str = "auto"
    channels_last: bool = True
    input_size: int | None = None
    pretrained: bool = True  # False: timm:/torchvision: architectures with random weights (tests, from-scratch runs)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if self.epochs < 1:
            bad(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            bad(f"--batch-size must be >= 1 (got {self.batch_size})")
        for name in ("lr", "finetune_lr"):
            v = getattr(self, name)
            if v is not None and not (0 < v < 10):
                bad(f"--{name.replace('_', '-')} must be in (0, 10) (got {v})")
        if self.weight_decay < 0:
            bad(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if not (0 <= self.label_smoothing < 1):
            bad(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.head not in ("linear", "mlp"):
            bad(f"--head must be 'linear' or 'mlp' (got {self.head!r})")
        if self.hidden < 1 or not (0 <= self.dropout < 1):
            bad(f"--hidden must be >= 1 and --dropout in [0, 1) (got {self.hidden}, {self.dropout})")
        if self.freeze not in ("backbone", "none"):
            bad(f"--freeze must be 'backbone' or 'none' (got {self.freeze!r})")
        if self.trainable_blocks < 0:
            bad(f"--trainable-blocks must be >= 0 (got {self.trainable_blocks})")
        if self.freeze == "none" and self.trainable_blocks:
            bad("--trainable-blocks only applies with --freeze backbone (with --freeze none every block trains)")
        if self.finetune_epochs < 0:
            bad(f"--finetune-epochs must be >= 0 (got {self.finetune_epochs})")
        self.unfreeze_blocks(10**9)  # validates the syntax
        if self.finetune_epochs and self.freeze == "none":
            bad("--finetune-epochs with --freeze none: the whole network already trains in the first phase; drop one of them")
        if not (0 < self.backbone_lr_factor <= 10):
            bad(f"--backbone-lr-factor must be in (0, 10] (got {self.backbone_lr_factor})")
        if self.layer_decay is not None and not (0 < self.layer_decay <= 1):
            bad(f"--layer-decay must be in (0, 1] (got {self.layer_decay})")
        if self.warmup_epochs < 0:
            bad(f"--warmup-epochs must be >= 0 (got {self.warmup_epochs})")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            bad(f"--clip-grad-norm must be > 0 (got {self.clip_grad_norm})")
        if self.class_weights and self.balanced_sampler:
            bad("--class-weights and --balanced-sampler both correct the class imbalance; choose one")
        if self.views < 1:
            bad(f"--views must be >= 1 (got {self.views})")
        if self.views > 1 and not self.feature_cache:
            bad("--views K sets the number of cached feature views per image; it needs the feature cache (drop --no-feature-cache), or use --augment")
        if self.early_stopping is not None and self.early_stopping < 1:
            bad(f"--early-stopping must be >= 1 epoch (got {self.early_stopping})")
        if self.input_size is not None and not (16 <= self.input_size <= 1024):
            bad(f"--input-size must be in [16, 1024] px (got {self.input_size})")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            bad(f"--amp must be auto, off, bf16 or fp16 (got {self.amp!r})")

    def unfreeze_blocks(self, num_blocks: int) -> int:
        """Number of backbone stages the fine-tune phase trains, for a backbone of ``num_blocks``."""
        u = self.unfreeze
        if u == "all":
            return num_blocks
        if u.startswith("last:") and u[5:].isdigit() and int(u[5:]) >= 1:
            return min(int(u[5:]), num_blocks)
        raise ConfigError(f"--unfreeze must be 'last:K' (K >= 1) or 'all' (got {u!r})")

    def head_lr_finetune(self) -> float:
        return self.finetune_lr if self.finetune_lr is not None else self.lr / 10


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best_val_top1: float
    history: list[dict[str, Any]] = field(default_factory=list)
    info: ModelInfo | None = None
    best_phase: str = "head"
    model: Any = None  # the trained nn.Module (best weights, eval mode, CPU)
    last_checkpoint: Path | None = None


def _torch():
    return require("torch", "train", "training")


# -- freezing -----------------------------------------------------------------------------------

def freeze_backbone(model, head_path: str) -> list[str]:
    """Make only the parameters under ``head_path`` trainable. Returns the frozen parameter names."""
    frozen = []
    for name, p in model.named_parameters():
        trainable = name == head_path or name.startswith(head_path + ".")
        p.requires_grad_(trainable)
        if not trainable:
            frozen.append(name)
    return frozen


def is_batchnorm(module) -> bool:
    torch = _torch()
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def apply_freeze(model, head_path: str, blocks: list[list[str]], trainable: list[int], freeze_bn: bool = False) -> int:
    """Head trainable, backbone frozen except the stages ``trainable`` (indices into ``blocks``
    from :func:`edgetransfer.models.backbone_blocks`); with ``freeze_bn`` every BatchNorm's affine
    parameters stay frozen too. Returns the number of trainable parameters (elements)."""
    freeze_backbone(model, head_path)
    params = dict(model.named_parameters())
    for i in trainable:
        for name in blocks[i]:
            params[name].requires_grad_(True)
    if freeze_bn:
        for m in model.modules():
            if is_batchnorm(m):
                for p in m.parameters():
                    p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_modes(model) -> list[tuple[Any, bool]]:
    """``(module, training)`` for every module under the rule of :func:`set_train_mode`."""
    status: dict[str, bool | None] = {}
    mods = list(model.named_modules())
    for name, m in mods:
        params = list(m.parameters())
        status[name] = all(p.requires_grad for p in params) if params else None
    out = []
    for name, m in mods:
        s, anc = status[name], name
        while s is None and anc:
            anc = anc.rpartition(".")[0]
            s = status[anc]
        out.append((m, bool(s)))
    return out


def set_train_mode(model, modes: list[tuple[Any, bool]] | None = None) -> None:
    """Train mode for the trainable parts only, set module by module (not recursively):

    * a module with parameters trains iff all of them are trainable, so frozen BatchNorm layers
      stay in eval mode and their running statistics never move;
    * a parameter-free module (dropout, drop-path, activations) follows its nearest ancestor with
      parameters: it trains iff that ancestor is fully trainable. Dropout inside the frozen
      backbone stays off; dropout inside the head or a trainable stage is on.

    ``modes``: a precomputed :func:`train_modes` list (the freezing has not changed since).
    """
    for m, flag in modes if modes is not None else train_modes(model):
        m.training = flag


# -- devices, precision, distributed ------------------------------------------------------------

def pick_device(device: str | None) -> str:
    torch = _torch()
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def amp_dtype(requested: str, device_type: str, bf16_supported: bool = False):
    """Autocast dtype for ``requested`` ('auto' | 'off' | 'bf16' | 'fp16') on ``device_type``.

    auto: CUDA -> bfloat16 where the GPU supports it (Ampere and newer), else float16 (with a
    gradient scaler); CPU -> None (fp32: CPU autocast gives no speed-up for this workload).
    Returns a ``torch.dtype`` or None. Raises :class:`ConfigError` for fp16 on CPU or bf16 on a
    GPU without bf16.
    """
    torch = _torch()
    if requested == "off":
        return None
    if device_type != "cuda":
        if requested == "fp16":
            raise ConfigError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp off")
        return torch.bfloat16 if requested == "bf16" else None
    if requested == "bf16" and not bf16_supported:
        raise ConfigError("--amp bf16 requested but this GPU has no bfloat16 support; use --amp fp16")
    if requested == "fp16" or (requested == "auto" and not bf16_supported):
        return torch.float16
    return torch.bfloat16


def process_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", "0"))


class Distributed:
    """The process group of a torchrun launch (``WORLD_SIZE`` > 1), or a single process.

    Reductions are no-ops for a single process."""

    def __init__(self, device_pref: str | None) -> None:
        torch = _torch()
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owned = False
        self.backend = None
        device = pick_device(device_pref)
        if self.world > 1:
            import torch.distributed as dist

            if device == "cuda":
                device = f"cuda:{self.local_rank}"
            if device.startswith("cuda"):
                torch.cuda.set_device(torch.device(device))
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
                self.owned = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.backend = dist.get_backend()
        self.device = device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t, op: str = "sum"):
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        return t

    def broadcast(self, t):
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(t, src=0)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather_rows(self, t):
        """Rows of ``t`` held as ``rank::world`` shards -> all rows in their original order."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        torch = _torch()
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        m = int(max(s.item() for s in sizes))
        pad = torch.zeros((m - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        parts = [torch.empty((m, *t.shape[1:]), dtype=t.dtype, device=t.device) for _ in range(self.world)]
        dist.all_gather(parts, torch.cat([t, pad]))
        total = int(sum(s.item() for s in sizes))
        out = torch.empty((total, *t.shape[1:]), dtype=t.dtype, device=t.device)
        for r, (p, s) in enumerate(zip(parts, sizes)):
            out[r::self.world] = p[: int(s.item())]
        return out

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
            self.owned = False


# -- data order -----------------------------------------------------------------------------------

def epoch_indices(labels: np.ndarray, epoch: int, seed: int, rank: int = 0, world: int = 1, balanced: bool = False) -> list[int]:
    """This rank's sample indices for one epoch (length ceil(N / world), the same on every rank).

    Uniform: torch's ``DistributedSampler`` (seeded shuffle, padded to a multiple of ``world``,
    shard ``rank::world``). ``balanced``: N draws with replacement, probability 1 / n_c for a
    sample of class c (torch's ``WeightedRandomSampler``, seeded), padded and sharded the same way.
    """
    torch = _torch()
    n = len(labels)
    if not balanced:
        s = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return list(s)
    counts = np.bincount(labels, minlength=int(labels.max()) + 1).astype(np.float64)
    w = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = list(torch.utils.data.WeightedRandomSampler(w, n, replacement=True, generator=g))
    total = math.ceil(n / world) * world
    order += order[: total - n]
    return order[rank::world]


def _batches(samples: list[Sample], spec: PreprocessSpec, batch_size: int,
             aug_key: Callable[[int], tuple[int, ...]] | None = None, indices: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x float32 (B, 3, S, S), y int64 (B,))`` for ``samples[indices]`` in order, decoding
    the next batch in background threads while the current one is used. ``aug_key(i)`` gives
    the augmentation seed of sample ``i`` (None: plain preprocessing)."""
    idx = list(range(len(samples))) if indices is None else list(indices)
    workers = min(4, os.cpu_count() or 1)

    def one(i: int) -> np.ndarray:
        return preprocess_file(samples[i].path, spec) if aug_key is None else augment_file(samples[i].path, spec, aug_key(i))

    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        def load(chunk: list[int]):
            return np.stack(list(pool.map(one, chunk))), np.asarray([samples[i].label for i in chunk], np.int64)

        chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        fut = ahead.submit(load, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            cur = fut.result()
            fut = ahead.submit(load, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield cur


def _to_device(x: np.ndarray, device: str, channels_last: bool = False):
    torch = _torch()
    t = torch.from_numpy(x)
    if device.startswith("cuda"):
        t = t.pin_memory().to(device, non_blocking=True)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
    return t


# -- feature cache ------------------------------------------------------------------------------

def _extract(model, head_path: str, samples: list[Sample], indices: list[int], spec: PreprocessSpec, batch_size: int,
             device: str, desc: str, views: int = 1, seed: int = 0, amp=None, check: bool = False):
    """Head inputs for ``samples[indices]``: float32 (n, views, *F) on CPU, labels int64 (n,), and
    whether ``flatten(head(features))`` reproduced the model's logits on the first batch."""
    torch = _torch()
    head = model.get_submodule(head_path)
    captured: list = []
    hook = head.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    model.eval()
    per_view, labels, consistent = [], None, True
    try:
        with torch.inference_mode(), task(desc, len(indices) * views) as advance:
            for v in range(views):
                key = None if v == 0 else (lambda i, v=v: (seed, 7, v, i))
                feats, ys = [], []
                for bi, (x, y) in enumerate(_batches(samples, spec, batch_size, key, indices)):
                    with torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
                        out = model(_to_device(x, device))
                    f = captured.pop()
                    if check and v == 0 and bi == 0:
                        ref = torch.flatten(out, 1).float()
                        with torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
                            got = head_logits(head, f).float()
                        tol = (1e-2 if amp is not None else 1e-4) * (1.0 + float(ref.abs().max()))
                        consistent = got.shape == ref.shape and float((got - ref).abs().max()) <= tol
                    feats.append(f.float().cpu())
                    ys.append(torch.from_numpy(y))
                    advance(len(y))
                per_view.append(torch.cat(feats) if feats else torch.zeros(0))
                labels = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
    finally:
        hook.remove()
    return torch.stack(per_view, 1), labels, consistent


def extract_features(model, head_path: str, folder: ImageFolder, spec: PreprocessSpec, batch_size: int,
                     device: str, desc: str = "Features", *, views: int = 1, seed: int = 0) -> tuple[Any, Any]:
    """Run the frozen network once over ``folder``; return ``(features, labels)``: the inputs of the
    head module (captured by a forward pre-hook), float32 (N, *F) for one view or (N, views, *F)
    (view 0 plain, views 1.. augmented with seeds ``(seed, 7, view, index)``), labels int64 (N,)."""
    f, y, _ = _extract(model, head_path, folder.samples, list(range(len(folder))), spec, batch_size, device, desc, views, seed)
    return (f[:, 0] if views == 1 else f), y


def feature_cache_key(weights_digest: str, head_path: str, folder: ImageFolder, spec: PreprocessSpec, views: int,
                      seed: int, amp: str | None) -> str:
    """sha256 identifying a feature set: the backbone weights (:func:`edgetransfer.models.state_digest`),
    the head's position, every file (absolute path, size in bytes, mtime in ns, label), the
    preprocessing, the number of views (and the seed when views are augmented) and the autocast dtype."""
    files = []
    for s in folder.samples:
        st = os.stat(s.path)
        files.append([str(Path(s.path).resolve()), st.st_size, st.st_mtime_ns, s.label])
    doc = {"v": 1, "weights": weights_digest, "head": head_path, "files": files, "preprocessing": spec.to_dict(),
           "views": views, "seed": seed if views > 1 else None, "amp": amp}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _cached_features(model, info: ModelInfo, folder: ImageFolder, cfg: TrainConfig, d: Distributed, amp, role: str,
                     views: int, digest: str | None) -> tuple[Any, Any, bool, str]:
    """Features of ``folder`` from the disk cache or extracted (sharded over ranks, gathered).
    Returns ``(features (N, views, *F) on CPU, labels (N,), consistent, how)``."""
    torch = _torch()
    path = key = None
    if cfg.cache_dir and digest:
        key = feature_cache_key(digest, info.head_path, folder, info.preprocessing, views, cfg.seed, str(amp) if amp else None)
        path = Path(cfg.cache_dir) / f"features-{key[:32]}.pt"
    hit = None
    if path is not None and path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("key") == key and len(obj["labels"]) == len(folder):
                hit = obj
        except Exception:
            hit = None
    ok = d.all_reduce(torch.tensor([1 if hit is not None else 0], device=d.device), "min")
    if int(ok.item()) == 1:
        return hit["features"], hit["labels"], True, f"loaded from {path}"
    t0 = time.perf_counter()
    idx = list(range(d.rank, len(folder), d.world))
    f, y, consistent = _extract(model, info.head_path, folder.samples, idx, info.preprocessing, cfg.batch_size, d.device,
                                f"Features ({role})", views, cfg.seed, amp, check=True)
    c = d.all_reduce(torch.tensor([1 if consistent else 0], device=d.device), "min")
    if int(c.item()) == 0:
        return f, y, False, ""
    if d.world > 1:
        f = d.gather_rows(f.to(d.device)).cpu()
        y = d.gather_rows(y.to(d.device)).cpu()
    how = f"extracted in {time.perf_counter() - t0:.1f} s"
    if path is not None and d.main:
        with atomic_path(path) as tmp:
            torch.save({"key": key, "features": f, "labels": y}, tmp)
        how += f", cached in {path}"
    return f, y, True, how


# -- the loop -------------------------------------------------------------------------------------

def make_loss(cfg: TrainConfig, class_counts: list[int], device: str):
    """Cross-entropy with ``cfg.label_smoothing``; with ``cfg.class_weights`` each class c weighs
    N / (C * n_c) (scikit-learn's 'balanced' weights)."""
    torch = _torch()
    weight = None
    if cfg.class_weights:
        c = np.asarray(class_counts, np.float64)
        weight = torch.as_tensor(c.sum() / (len(c) * c), dtype=torch.float32, device=device)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """lr multiplier at step s: linear warm-up from 0 to 1 over ``warmup_steps``, then cosine to 0."""
    def f(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / (warmup_steps + 1)
        rest = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup_steps) / rest)))
    return f


def param_groups(model, head_path: str, blocks: list[list[str]], trainable: list[int], head_lr: float, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: the head at ``head_lr``; trainable stage i of n at head_lr x
    ``backbone_lr_factor`` x ``layer_decay`` ** (n - 1 - i); weights (ndim >= 2) with
    ``weight_decay``, biases and norm parameters without. Frozen parameters are left out."""
    named = dict(model.named_parameters())
    units: list[tuple[list[str], float, str]] = [
        ([n for n in named if n == head_path or n.startswith(head_path + ".")], head_lr, "head")]
    n = len(blocks)
    for i in sorted(trainable):
        units.append((blocks[i], head_lr * cfg.backbone_lr_factor * (cfg.layer_decay or 1.0) ** (n - 1 - i), f"block{i}"))
    groups = []
    for names, lr, tag in units:
        ps = [named[k] for k in names if named[k].requires_grad]
        for decay in (True, False):
            sel = [p for p in ps if (p.ndim >= 2) == decay]
            if sel:
                groups.append({"params": sel, "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0, "name": tag})
    return groups


@dataclass
class _Phase:
    name: str  # head | train | finetune
    epochs: int
    trainable: list[int]  # indices of trainable backbone stages
    lr: float  # head lr


@dataclass
class _State:
    phase: int = 0  # index of the phase in progress
    epoch: int = 0  # epochs completed in that phase
    stopped: bool = False  # early-stopped: the phase is over
    best_key: tuple[float, float] = (-1.0, math.inf)  # (val top-1, val loss)
    best_state: dict | None = None
    best_phase: str = ""
    best_epoch: int = 0
    stale: int = 0  # epochs without improvement in the current phase
    history: list[dict[str, Any]] = field(default_factory=list)


def _cpu_state(model, prefix: str | None = None) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if prefix is None or k == prefix or k.startswith(prefix + ".")}


def _check_data(train_set: ImageFolder, val_set: ImageFolder, cfg: TrainConfig) -> None:
    skipped = train_set.skipped + [s for s in val_set.skipped if s not in train_set.skipped]
    if cfg.strict and skipped:
        listing = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:10])
        raise DataError(f"{len(skipped)} image(s) cannot be decoded: {listing}{' ...' if len(skipped) > 10 else ''}; "
                        "fix or remove them, or drop --strict to skip them")
    counts = train_set.counts()
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"class(es) {empty} have no training images in {train_set.root}; add images or remove the class")
    if len(val_set) == 0:
        raise DataError(f"the validation set {val_set.root} is empty; pass --val DIR or a larger dataset")
    if val_set.class_names != train_set.class_names:
        raise DataError(f"validation classes {val_set.class_names} differ from training classes {train_set.class_names}")


class _Run:
    """One training run: the model, the data and the state shared by the phases."""

    def __init__(self, train_set: ImageFolder, val_set: ImageFolder, out: Path, cfg: TrainConfig, d: Distributed) -> None:
        torch = _torch()
        self.train_set, self.val_set, self.out, self.cfg, self.d = train_set, val_set, Path(out), cfg, d
        self.device = d.device
        dev_type = self.device.split(":")[0]
        self.amp = amp_dtype(cfg.amp, dev_type, dev_type == "cuda" and torch.cuda.is_bf16_supported())
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.channels_last = cfg.channels_last and dev_type == "cuda"
        if dev_type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.model, self.info = build_model(cfg.model, len(train_set.class_names), head=cfg.head, hidden=cfg.hidden,
                                            dropout=cfg.dropout, arch=cfg.arch, pretrained=cfg.pretrained)
        if cfg.input_size:
            pre = self.info.preprocessing
            self.info.preprocessing = dataclasses.replace(
                pre, input_size=cfg.input_size, resize_size=max(cfg.input_size, round(cfg.input_size * pre.resize_size / pre.input_size)))
        self.head_path = self.info.head_path
        self.blocks = backbone_blocks(self.model, self.head_path)
        nb = len(self.blocks)
        if cfg.trainable_blocks > nb:
            raise ConfigError(f"--trainable-blocks {cfg.trainable_blocks}: {cfg.model} has only {nb} backbone stages")
        if cfg.finetune_epochs and cfg.unfreeze.startswith("last:") and int(cfg.unfreeze[5:]) > nb:
            raise ConfigError(f"--unfreeze {cfg.unfreeze}: {cfg.model} has only {nb} backbone stages; use --unfreeze all")
        first = list(range(nb)) if cfg.freeze == "none" else list(range(nb - cfg.trainable_blocks, nb))
        self.phases = [_Phase("head" if not first else "train", cfg.epochs, first, cfg.lr)]
        if cfg.finetune_epochs:
            k = cfg.unfreeze_blocks(nb)
            self.phases.append(_Phase("finetune", cfg.finetune_epochs, list(range(nb - k, nb)), cfg.head_lr_finetune()))
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.labels = train_set.labels
        self.loss_fn = make_loss(cfg, list(train_set.counts().values()), self.device)
        self.eval_loss = torch.nn.CrossEntropyLoss()
        self.state = _State()
        self.features = None
        self.feature_info: dict[str, Any] = {}

    # -- state persistence --
    def _model_state(self, p: int) -> dict[str, Any]:
        """Weights that may differ from a freshly built model: only the head while the backbone
        has never trained, everything after."""
        only_head = p == 0 and not self.phases[0].trainable
        return _cpu_state(self.model, self.head_path if only_head else None)

    def save_last(self, p: int, opt, sched) -> None:
        if not self.d.main:
            return
        torch = _torch()
        s = self.state
        obj = {
            "format": "edgetransfer-train-state", "version": 1, "config": asdict(self.cfg),
            "class_names": list(self.train_set.class_names), "model": self.info.to_dict(),
            "preprocessing": self.info.preprocessing.to_dict(), "phase": s.phase, "epoch": s.epoch, "stopped": s.stopped,
            "best_key": list(s.best_key), "best_state": s.best_state, "best_phase": s.best_phase, "best_epoch": s.best_epoch,
            "stale": s.stale, "history": s.history, "model_state": self._model_state(p),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        with atomic_path(self.out / LAST_CHECKPOINT) as tmp:
            torch.save(obj, tmp)

    def try_resume(self) -> dict | None:
        """Load OUT/last.pt when resuming; checks it belongs to this run. Returns it (or None)."""
        torch = _torch()
        p = self.out / LAST_CHECKPOINT
        if not self.cfg.resume:
            return None
        if not p.is_file():
            log(f"[yellow]--resume: no {p}; starting a fresh run")
            return None
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if obj.get("format") != "edgetransfer-train-state":
            raise TrainingError(f"{p} is not an edgetransfer training state; remove it or drop --resume")
        mine, theirs = asdict(self.cfg), obj["config"]
        diff = sorted(k for k in set(mine) | set(theirs) if k not in RESUME_IGNORED and mine.get(k) != theirs.get(k))
        if diff:
            raise TrainingError(f"--resume: {p} was written with different settings ({', '.join(f'{k}={theirs.get(k)!r}' for k in diff)}); "
                                "resume with the same settings, or start a new run in another --out")
        if obj["class_names"] != list(self.train_set.class_names):
            raise TrainingError(f"--resume: {p} was trained on classes {obj['class_names']}, the data has {self.train_set.class_names}")
        s = self.state
        s.phase, s.epoch, s.stopped = int(obj["phase"]), int(obj["epoch"]), bool(obj["stopped"])
        s.best_key = (float(obj["best_key"][0]), float(obj["best_key"][1]))
        s.best_state, s.best_phase, s.best_epoch = obj["best_state"], obj["best_phase"], int(obj["best_epoch"])
        s.stale, s.history = int(obj["stale"]), list(obj["history"])
        self.model.load_state_dict(obj["model_state"], strict=False)
        torch.set_rng_state(obj["rng"])  # nothing below draws from the global generator before training resumes
        if obj.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(obj["cuda_rng"])
        log(f"resumed {p}: phase {self.phases[s.phase].name}, {s.epoch} epoch(s) done")
        return obj

    def write_metrics(self) -> None:
        if not self.d.main:
            return
        h = self.state.history
        atomic_write_json(self.out / METRICS_JSON, h)
        cols = ["phase", "epoch", "train_loss", "val_loss", "val_top1", "lr", "seconds", "images_per_s"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(h)
        atomic_write_text(self.out / METRICS_CSV, buf.getvalue())

    # -- features --
    def ensure_features(self) -> bool:
        if self.features is not None:
            return True
        digest = state_digest(self.model, self.head_path) if self.cfg.cache_dir else None
        tf, tl, ok, how_t = _cached_features(self.model, self.info, self.train_set, self.cfg, self.d, self.amp, "train", self.cfg.views, digest)
        if not ok:
            log(f"[yellow]feature cache off: flatten(head(features)) does not reproduce {self.cfg.model}'s logits; "
                "running the whole network every step instead")
            return False
        vf, vl, _, how_v = _cached_features(self.model, self.info, self.val_set, self.cfg, self.d, self.amp, "val", 1, digest)
        self.features = (tf.to(self.device), tl.to(self.device), vf[:, 0].to(self.device), vl.to(self.device))
        self.feature_info = {"train_shape": list(tf.shape), "val_shape": list(vf[:, 0].shape), "views": self.cfg.views,
                             "train": how_t, "val": how_v}
        log(f"features: train {tuple(tf.shape)} {how_t}; val {tuple(vf[:, 0].shape)} {how_v}")
        return True

    # -- evaluation --
    def evaluate_features(self, head) -> tuple[float, float]:
        torch = _torch()
        _, _, vf, vl = self.features
        head.eval()
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(vl), 512):
                out = head_logits(head, vf[i : i + 512]).float()
                loss_sum += float(self.eval_loss(out, vl[i : i + 512])) * len(out)
                correct += int((out.argmax(1) == vl[i : i + 512]).sum())
        return correct / len(vl), loss_sum / len(vl)

    def evaluate_images(self) -> tuple[float, float]:
        torch = _torch()
        self.model.eval()
        idx = list(range(self.d.rank, len(self.val_set), self.d.world))
        acc = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, loss sum, count
        with torch.inference_mode():
            for x, y in _batches(self.val_set.samples, self.info.preprocessing, self.cfg.batch_size, None, idx):
                with torch.autocast(self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None):
                    out = self.model(_to_device(x, self.device, self.channels_last))
                out = out.float()
                yt = torch.from_numpy(y).to(self.device)
                acc += torch.tensor([float((out.argmax(1) == yt).sum()), float(self.eval_loss(out, yt)) * len(y), len(y)],
                                    dtype=torch.float64, device=self.device)
        self.d.all_reduce(acc)
        return float(acc[0] / acc[2]), float(acc[1] / acc[2])

    # -- one phase --
    def run_phase(self, p: int, resumed: dict | None) -> None:
        torch = _torch()
        cfg, d, s = self.cfg, self.d, self.state
        ph = self.phases[p]
        if resumed and resumed["phase"] == p and (s.epoch >= ph.epochs or s.stopped):
            return  # resumed a run whose last phase had already finished
        if p > 0 and s.best_state is not None and not (resumed and resumed["phase"] == p):
            # start from the best model so far; from here on the backbone moves, so "best" is a full state
            self.model.load_state_dict(s.best_state, strict=False)
            s.best_state = {**_cpu_state(self.model), **s.best_state}
        n_train = apply_freeze(self.model, self.head_path, self.blocks, ph.trainable, cfg.freeze_bn)
        cached = not ph.trainable and cfg.feature_cache and self.ensure_features()
        what = "head" if not ph.trainable else ("all stages" if len(ph.trainable) == len(self.blocks) else f"last {len(ph.trainable)} of {len(self.blocks)} stages") + " + head"
        log(f"phase {ph.name}: {ph.epochs} epoch(s), trainable: {what} ({n_train} parameters), head lr {ph.lr:g}"
            + (f", backbone lr {ph.lr * cfg.backbone_lr_factor:g}" + (f" x {cfg.layer_decay}^depth" if cfg.layer_decay else "") if ph.trainable else "")
            + (", on cached features" if cached else ", whole network every step"))
        head = self.model.get_submodule(self.head_path)
        module = head if cached else self.model
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[torch.device(self.device).index] if self.device.startswith("cuda") else None)
        opt = torch.optim.AdamW(param_groups(self.model, self.head_path, self.blocks, ph.trainable, ph.lr, cfg))
        per_rank_batch = max(1, cfg.batch_size // d.world)
        steps = math.ceil(math.ceil(len(self.labels) / d.world) / per_rank_batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(ph.epochs * steps, round(cfg.warmup_epochs * steps)))
        if resumed and resumed["phase"] == p and s.epoch > 0:
            opt.load_state_dict(resumed["optimizer"])
            sched.load_state_dict(resumed["scheduler"])
            if self.scaler and resumed.get("scaler"):
                self.scaler.load_state_dict(resumed["scaler"])
        else:
            s.epoch, s.stale, s.stopped = 0, 0, False
        trainable = [q for q in self.model.parameters() if q.requires_grad]
        modes = train_modes(self.model)
        threads = torch.get_num_threads()
        if cached and not self.device.startswith("cuda"):
            # steps on cached features are tiny: one thread beats OpenMP fork/join, which collapses on a busy machine
            torch.set_num_threads(1)
        try:
            self._epochs(p, ph, cached, module, head, opt, sched, trainable, modes)
        finally:
            torch.set_num_threads(threads)
        self.model.eval()

    def _epochs(self, p: int, ph: _Phase, cached: bool, module, head, opt, sched, trainable: list, modes: list) -> None:
        torch = _torch()
        cfg, d, s = self.cfg, self.d, self.state
        per_rank_batch = max(1, cfg.batch_size // d.world)
        while s.epoch < ph.epochs and not s.stopped:
            epoch = s.epoch + 1
            t0 = time.perf_counter()
            set_train_mode(self.model, modes)
            order = epoch_indices(self.labels, epoch + 1000 * p, cfg.seed, d.rank, d.world, cfg.balanced_sampler)
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            seen = 0
            if cached:
                tf, tl, _, _ = self.features
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * p + epoch)
                view = torch.randint(tf.shape[1], (tf.shape[0],), generator=g).to(self.device)
                batches = ((torch.as_tensor(order[i : i + per_rank_batch], device=self.device), None)
                           for i in range(0, len(order), per_rank_batch))
            else:
                aug = (lambda i, e=epoch: (cfg.seed, p, e, i)) if cfg.augment else None
                batches = _batches(self.train_set.samples, self.info.preprocessing, per_rank_batch, aug, order)
            with (contextlib.nullcontext(lambda k=1: None) if cached else task(f"{ph.name} epoch {epoch}", len(order))) as advance:
                for step, (a, b) in enumerate(batches):
                    if cached:
                        with torch.autocast(self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None):
                            out = head_logits(module, tf[a, view[a]])
                        y = tl[a]
                    else:
                        with torch.autocast(self.device.split(":")[0], dtype=self.amp, enabled=self.amp is not None):
                            out = module(_to_device(a, self.device, self.channels_last))
                        y = torch.from_numpy(b).to(self.device)
                    loss = self.loss_fn(out.float(), y)
                    finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
                    if d.world > 1:
                        d.all_reduce(finite, "min")
                    if not int(finite.item()):
                        self.diverged(ph.name, epoch, step, float(loss.detach()))
                    opt.zero_grad(set_to_none=True)
                    if self.scaler:
                        self.scaler.scale(loss).backward()
                        if cfg.clip_grad_norm:
                            self.scaler.unscale_(opt)
                            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
                        self.scaler.step(opt)
                        self.scaler.update()
                    else:
                        loss.backward()
                        if cfg.clip_grad_norm:
                            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
                        opt.step()
                    sched.step()
                    loss_sum += loss.detach().double() * len(y)
                    seen += len(y)
                    advance(len(y))
            self._sync_buffers()
            tot = d.all_reduce(torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=self.device)]))
            train_seconds = time.perf_counter() - t0
            top1, vloss = self.evaluate_features(head) if cached else self.evaluate_images()
            seconds = time.perf_counter() - t0
            row = {"phase": ph.name, "epoch": epoch, "train_loss": float(tot[0] / tot[1]), "val_loss": vloss, "val_top1": top1,
                   "lr": max(g_["lr"] for g_ in opt.param_groups), "seconds": seconds,
                   "images_per_s": float(tot[1]) / max(train_seconds, 1e-9)}
            s.history.append(row)
            s.epoch = epoch
            better = (top1, -vloss) > (s.best_key[0], -s.best_key[1])
            if better:
                s.best_key = (top1, vloss)
                s.best_state, s.best_phase, s.best_epoch = self._model_state(p), ph.name, epoch
                s.stale = 0
            else:
                s.stale += 1
            log(f"  {ph.name} epoch {epoch:>3}/{ph.epochs}  loss {row['train_loss']:.4f}  val loss {vloss:.4f}  "
                f"val top-1 {top1:.4f}{'  *' if better else ''}  lr {row['lr']:.2e}  {seconds:.2f} s")
            if cfg.early_stopping and s.stale >= cfg.early_stopping and s.epoch < ph.epochs:
                s.stopped = True
                log(f"  early stopping: {s.stale} epoch(s) without a better validation result")
            self.save_last(p, opt, sched)
            self.write_metrics()

    def _sync_buffers(self) -> None:
        """BatchNorm statistics of trainable stages move per rank; make rank 0's the shared ones."""
        if self.d.world > 1:
            for b in self.model.buffers():
                self.d.broadcast(b.data)

    def diverged(self, phase: str, epoch: int, step: int, value: float) -> None:
        msg = f"non-finite loss ({value}) in phase {phase}, epoch {epoch}, step {step}"
        kept = ""
        if self.state.best_state is not None and self.d.main:
            self.model.load_state_dict(self.state.best_state, strict=False)
            ck = self.save_best(final=False)
            kept = f"; the best model so far (phase {self.state.best_phase}, epoch {self.state.best_epoch}) is kept in {ck}"
        if (self.out / LAST_CHECKPOINT).is_file():
            kept += f" and the last good training state in {self.out / LAST_CHECKPOINT}"
        raise TrainingError(f"{msg}{kept}; lower --lr (or --finetune-lr), add --clip-grad-norm, or check the data")

    def save_best(self, final: bool = True) -> Path:
        s, ts, vs = self.state, self.train_set, self.val_set
        metrics = {"best_epoch": s.best_epoch, "best_phase": s.best_phase, "phase": s.best_phase, "val_top1": s.best_key[0],
                   "val_loss": s.best_key[1], "history": s.history, "train_seconds": getattr(self, "train_seconds", None),
                   "device": self.device, "amp": str(self.amp).replace("torch.", "") if self.amp else None,
                   "feature_cache": self.feature_info or None, "phases": [asdict(ph) for ph in self.phases],
                   "num_blocks": len(self.blocks), "distributed": getattr(self, "dist_info", None), "complete": final}
        dataset = {"train_root": str(ts.root), "val_root": str(vs.root), "num_train": len(ts), "num_val": len(vs),
                   "train_counts": ts.counts(), "val_counts": vs.counts(),
                   "skipped": ts.skipped + [x for x in vs.skipped if x not in ts.skipped]}
        ck = self.out / "model.pt"
        save_checkpoint(ck, self.model, self.info, ts.class_names, self.cfg, metrics, dataset)
        return ck

    def check_replicas(self) -> None:
        """Largest |difference| between any rank's weights and rank 0's (must be 0 under DDP)."""
        if self.d.world == 1:
            return
        torch = _torch()
        vec = torch.cat([v.detach().float().reshape(-1) for v in self.model.state_dict().values()]).to(self.device)
        ref = self.d.broadcast(vec.clone())
        diff = self.d.all_reduce((vec - ref).abs().max().reshape(1), "max")
        self.dist_info = {"world_size": self.d.world, "backend": self.d.backend, "max_abs_param_diff_across_ranks": float(diff.item())}
        if float(diff.item()) != 0.0:
            log(f"[yellow]ranks disagree: max |weight difference| {float(diff.item()):.3g}")


def train(train_set: ImageFolder, val_set: ImageFolder, out: Path, cfg: TrainConfig) -> TrainResult:
    """Build the model, run the head phase (and the fine-tune phase when asked), write
    ``out/model.pt`` (best model + manifest), ``out/last.pt`` (training state for ``resume``),
    ``out/metrics.csv`` and ``out/metrics.json``.

    Works under ``torchrun`` (DDP; only rank 0 writes files). Raises :class:`ConfigError` /
    :class:`ModelSourceError` / :class:`DataError` before any long work on bad settings, and
    :class:`TrainingError` on a non-finite loss (after keeping the best model so far).
    """
    _check_data(train_set, val_set, cfg)
    if cfg.cache_dir:
        cd = Path(cfg.cache_dir).resolve()
        for root in {Path(train_set.root).resolve(), Path(val_set.root).resolve()}:
            if cd == root or root in cd.parents:
                raise ConfigError(f"--cache-dir {cfg.cache_dir} is inside the dataset {root}; never write next to the data: "
                                  "use a directory under --out or ~/.cache/edgetransfer")
    d = Distributed(cfg.device)
    try:
        return _train(train_set, val_set, Path(out), cfg, d)
    finally:
        d.close()


def _train(train_set: ImageFolder, val_set: ImageFolder, out: Path, cfg: TrainConfig, d: Distributed) -> TrainResult:
    torch = _torch()
    r = _Run(train_set, val_set, out, cfg, d)
    log(f"model: {r.info.source}; new {cfg.head} head at '{r.head_path}' ({r.info.feature_dim} -> {r.info.num_classes}); "
        f"{len(r.blocks)} backbone stages; device {r.device}" + (f", {d.world} processes ({d.backend})" if d.world > 1 else "")
        + (f", autocast {str(r.amp).replace('torch.', '')}" if r.amp else ""))
    resumed = r.try_resume()
    t0 = time.perf_counter()
    for p in range(len(r.phases)):
        s = r.state
        if p < s.phase:  # finished before the interruption
            continue
        if p > s.phase:
            s.phase, s.epoch, s.stopped = p, 0, False
        r.run_phase(p, resumed)
    r.train_seconds = time.perf_counter() - t0
    s = r.state
    if s.best_state is not None:
        r.model.load_state_dict(s.best_state, strict=False)
    r.model.eval()
    r.check_replicas()
    r.model.cpu()
    if r.channels_last:
        r.model.to(memory_format=torch.contiguous_format)
    first = [h for h in s.history if h["phase"] == r.phases[0].name]
    head_best = max((h["val_top1"] for h in first), default=float("nan"))
    log(f"best: phase {s.best_phase}, epoch {s.best_epoch}, val top-1 {s.best_key[0]:.4f} ({r.train_seconds:.1f} s)"
        + (f"; best {r.phases[0].name}-phase top-1 {head_best:.4f}" if len(r.phases) > 1 else ""))
    ck = out / "model.pt"
    if d.main:
        r.save_best()
    d.barrier()
    return TrainResult(ck, s.best_epoch, s.best_key[0], s.history, r.info, s.best_phase, r.model, out / LAST_CHECKPOINT)


# -- checkpoints --------------------------------------------------------------------------------

def train_epoch_naive(model, folder: ImageFolder, spec: PreprocessSpec, cfg: TrainConfig, opt, device: str) -> float:
    """One epoch through the whole network (frozen parts in eval mode, :func:`set_train_mode`), in a
    seeded order, with ``opt`` over the trainable parameters. Returns the mean training loss."""
    torch = _torch()
    loss_fn = make_loss(cfg, list(folder.counts().values()), device)
    set_train_mode(model)
    tot, n = 0.0, 0
    for x, y in _batches(folder.samples, spec, cfg.batch_size, None, epoch_indices(folder.labels, 1, cfg.seed)):
        loss = loss_fn(model(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device))
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
        for x, y in _batches(folder.samples, spec, batch_size):
            correct += int((model(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy() == y).sum())
    return correct / max(1, len(folder))
