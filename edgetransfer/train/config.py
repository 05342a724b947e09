"""Training settings (:class:`TrainConfig`) and what a run hands back (:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..imagepolicy import ImagePolicy, parse_colour
from ..models import DEFAULT_MODEL, ModelInfo

# config fields that may differ between an interrupted run and its --resume (they do not change the result)
RESUME_IGNORED = ("resume", "device", "cache_dir", "strict")

# option groups of the command line (``metadata["panel"]``)
_MODEL, _OPT, _FT, _DATA, _RUN = "Model", "Optimisation", "Freezing and fine-tuning", "Data", "Run"


def _opt(default: Any, help: str, panel: str):
    """A field with its help text and option group (read by the command line)."""
    return field(default=default, metadata={"help": help, "panel": panel})


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; every field has a default, ``None`` means "the default".

    Each field's ``metadata["help"]`` says what it does (the command line shows it as the
    option's help, so there is one description per setting) and ``metadata["panel"]`` groups it.
    Head phase: ``epochs`` at ``lr`` with ``freeze`` / ``trainable_blocks``; fine-tune phase:
    ``finetune_epochs`` with ``unfreeze``, ``finetune_lr``, ``backbone_lr_factor``,
    ``layer_decay``; both: warm-up then cosine, AdamW, weight decay on weights only (not biases
    or norm parameters).

    Raises :class:`ConfigError` on a bad value or combination.
    """

    model: str = _opt(DEFAULT_MODEL, "efficientnet-lite0 (offline ImageNet weights) | timm:NAME | torchvision:NAME[:WEIGHTS] | hf:ID_OR_DIR | file:PATH", _MODEL)
    arch: str | None = _opt(None, "architecture of a plain state dict given with file:PATH (timm:NAME, torchvision:NAME or hf:ID_OR_DIR)", _MODEL)
    epochs: int = _opt(10, "epochs of the first phase (the head, or what --freeze / --trainable-blocks leave trainable)", _OPT)
    batch_size: int = _opt(32, "training batch size (split over the processes under torchrun)", _OPT)
    lr: float = _opt(1e-3, "AdamW learning rate of the head in the first phase", _OPT)
    weight_decay: float = _opt(1e-4, "AdamW weight decay on weights (ndim >= 2; not on biases or norm parameters)", _OPT)
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy loss, in [0, 1)", _OPT)
    seed: int = _opt(0, "seed of the split, the model's new head, the sampling order and the augmentation", _RUN)
    head: str = _opt("linear", "new head: linear | mlp (Linear-ReLU-Dropout-Linear)", _MODEL)
    hidden: int = _opt(512, "hidden width of the mlp head", _MODEL)
    dropout: float = _opt(0.2, "dropout of the mlp head, in [0, 1)", _MODEL)
    feature_cache: bool = _opt(True, "with only the head training, compute the backbone features once (no: run the whole network every step)", _DATA)
    device: str | None = _opt(None, "training device: cpu | cuda | cuda:N (default: cuda when available)", _RUN)
    freeze: str = _opt("backbone", "backbone (train the new head) | none (train everything)", _FT)
    trainable_blocks: int = _opt(0, "with --freeze backbone: the last N backbone stages train too", _FT)
    freeze_bn: bool = _opt(False, "keep every BatchNorm frozen (eval mode, fixed affine parameters), even in trainable stages (small datasets)", _FT)
    finetune_epochs: int = _opt(0, "second phase: unfreeze (--unfreeze) and fine-tune for N epochs from the best first-phase model", _FT)
    unfreeze: str = _opt("last:1", "stages the fine-tune phase trains: last:K | all", _FT)
    finetune_lr: float | None = _opt(None, "head lr of the fine-tune phase (default --lr / 10)", _FT)
    backbone_lr_factor: float = _opt(0.1, "backbone lr = head lr x this, in (0, 10]", _FT)
    layer_decay: float | None = _opt(None, "backbone lr x this per stage away from the head, in (0, 1] (e.g. 0.7; default: off)", _FT)
    warmup_epochs: float = _opt(0.0, "linear lr warm-up at the start of each phase (epochs, may be fractional), then cosine to 0", _OPT)
    clip_grad_norm: float | None = _opt(None, "clip the gradients' L2 norm to this (default: off)", _OPT)
    class_weights: bool = _opt(False, "class-weighted loss, n / (C x n_c) (imbalanced data)", _DATA)
    balanced_sampler: bool = _opt(False, "class-balanced sampling, probability 1 / n_c with replacement (imbalanced data)", _DATA)
    augment: bool = _opt(False, "random resized crop + flip when the whole network runs", _DATA)
    views: int = _opt(1, "cached feature views per image (view 0 plain, the others augmented)", _DATA)
    early_stopping: int | None = _opt(None, "end a phase after N epochs without a better validation result (default: off)", _OPT)
    strict: bool = _opt(False, "an undecodable image is an error instead of being listed and skipped", _DATA)
    exif_orientation: bool = _opt(True, "apply photos' EXIF Orientation tag (phone portraits upright, as viewers show them); no: keep the stored pixel order", _DATA)
    image_background: str = _opt("white", "colour transparent pixels are composited over (RGBA, LA, P with transparency): a name, #rrggbb or R,G,B", _DATA)
    resume: bool = _opt(False, "continue the interrupted run in --out (OUT/last.pt) with the same settings", _RUN)
    cache_dir: str | None = _opt(None, "on-disk feature cache directory, keyed by weights + files + preprocessing (default: memory only)", _DATA)
    amp: str = _opt("auto", "autocast: auto | off | bf16 | fp16 (auto: bf16 on CUDA where supported, else fp16; off on CPU)", _RUN)
    channels_last: bool = _opt(True, "channels_last memory format on CUDA", _RUN)
    input_size: int | None = _opt(None, "crop size in px, in [16, 1024] (default: the model's)", _MODEL)
    pretrained: bool = _opt(True, "pretrained weights for timm:/torchvision: models (no: random weights, for tests and from-scratch runs)", _MODEL)

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
        try:
            parse_colour(self.image_background)
        except ValueError as exc:
            bad(f"--image-background: {exc}")
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

    def image_policy(self) -> ImagePolicy:
        """The image policy every decode of this run's images follows (recorded in the manifests' preprocessing)."""
        return ImagePolicy(exif_orientation=self.exif_orientation, background=parse_colour(self.image_background))

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
