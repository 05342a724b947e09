"""Training settings (:class:`TrainConfig`) and what a run hands back (:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models import DEFAULT_MODEL, ModelInfo

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
    """What :func:`edgetransfer.train.train` hands back: the checkpoint path (``OUT/model.pt``),
    the best epoch (1-based, within ``best_phase``: 'head' | 'train' | 'finetune') and its
    validation top-1 (fraction), the per-epoch ``history`` rows (phase, epoch, train_loss, val_loss,
    val_top1, lr, seconds, images_per_s), the model's :class:`ModelInfo`, the trained model itself
    and the training-state path (``OUT/last.pt``)."""

    checkpoint: Path
    best_epoch: int
    best_val_top1: float
    history: list[dict[str, Any]] = field(default_factory=list)
    info: ModelInfo | None = None
    best_phase: str = "head"
    model: Any = None  # the trained nn.Module (best weights, eval mode, CPU)
    last_checkpoint: Path | None = None
