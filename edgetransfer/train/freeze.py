"""Freezing: which parameters train, and which modules run in train mode.

Frozen modules stay in eval mode the whole run (:func:`set_train_mode`), so frozen BatchNorm
running statistics never move and dropout inside the frozen backbone stays off.
"""

from __future__ import annotations

from typing import Any

from .device import _torch


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
