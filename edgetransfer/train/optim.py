"""The optimisation recipe: loss, AdamW parameter groups (discriminative learning rates, layer-wise
decay, no weight decay on biases and norm parameters) and the warm-up + cosine schedule.

Sources: layer-wise lr decay as in timm's ``param_groups_layer_decay`` (BEiT, Bao et al. 2021);
'balanced' class weights n / (C * n_c) as in scikit-learn's ``compute_class_weight``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .config import TrainConfig
from .device import _torch


def make_loss(cfg: TrainConfig, class_counts: list[int], device: str):
    """Cross-entropy with ``cfg.label_smoothing``; with ``cfg.class_weights`` each class c weighs
    N / (C * n_c) (scikit-learn's 'balanced' weights)."""
    torch = _torch()
    weight = None
    if cfg.class_weights:
        c = np.asarray(class_counts, np.float64)
        weight = torch.as_tensor(c.sum() / (len(c) * c), dtype=torch.float32, device=device)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
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
