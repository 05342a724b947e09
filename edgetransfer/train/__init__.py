"""Transfer learning: pretrained backbone -> new head -> frozen backbone -> train the head ->
optionally unfreeze part of the backbone and fine-tune; keep the best model on validation.

Modules, along the seams of the job:

* :mod:`.config` — :class:`TrainConfig` (every setting, validated when built), :class:`TrainResult`;
* :mod:`.freeze` — which parameters train, frozen modules (BatchNorm) kept in eval mode;
* :mod:`.device` — device choice, autocast dtype, the torchrun process group (DDP);
* :mod:`.features` — the frozen backbone's features, computed once, cached in memory or on disk;
* :mod:`.optim` — loss, AdamW parameter groups (layer-wise lr decay), warm-up + cosine schedule;
* :mod:`.loop` — :func:`train_one_epoch` and :func:`evaluate` (torchvision references' shape);
* :mod:`.state` — ``last.pt`` (resume) and the per-epoch metrics files;
* :mod:`.fit` — the phases, best epoch, early stopping, resume: :func:`train`.

Checkpoints (``model.pt``) are written and read by :mod:`edgetransfer.checkpoint`.
"""

from .config import RESUME_IGNORED, TrainConfig, TrainResult
from .device import Distributed, amp_dtype, pick_device, process_rank
from .features import extract_features, feature_cache_key
from .fit import train
from .freeze import apply_freeze, freeze_backbone, is_batchnorm, set_train_mode, train_modes
from .loop import EpochStats, Evaluation, NonFiniteLoss, decode_batches, epoch_indices, evaluate, image_batches, train_one_epoch
from .optim import make_loss, param_groups, warmup_cosine
from .state import LAST_CHECKPOINT, METRICS_CSV, METRICS_JSON

__all__ = [
    "RESUME_IGNORED", "TrainConfig", "TrainResult", "Distributed", "amp_dtype", "pick_device", "process_rank",
    "extract_features", "feature_cache_key", "train", "apply_freeze", "freeze_backbone", "is_batchnorm",
    "set_train_mode", "train_modes", "EpochStats", "Evaluation", "NonFiniteLoss", "decode_batches", "epoch_indices",
    "evaluate", "image_batches", "train_one_epoch", "make_loss", "param_groups", "warmup_cosine",
    "LAST_CHECKPOINT", "METRICS_CSV", "METRICS_JSON",
]
