"""The training loop, in the shape of torchvision's ``references/classification/train.py``:
:func:`train_one_epoch` (one pass over the training batches: forward under autocast, loss,
backward, optional gradient clipping, optimizer and per-step scheduler steps) and
:func:`evaluate` (top-1 and mean loss over validation batches, reduced over torchrun ranks).
:func:`edgetransfer.train.fit.train` runs both for every epoch of every phase, on cached head
features or on decoded images; tests call them directly.

Batches are ``(x, y)`` tensors already on the device: :func:`image_batches` decodes and
preprocesses image files (background threads, the next batch while the current one runs);
cached features are indexed by the caller.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..augment import augment_file
from ..data import PreprocessSpec, Sample, preprocess_file
from ..errors import TrainingError
from ..host import usable_cpus
from ..progress import task
from .device import Distributed, _torch
from .freeze import set_train_mode


# -- data order and batches -----------------------------------------------------------------------

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


def decode_batches(samples: list[Sample], spec: PreprocessSpec, batch_size: int,
             aug_key: Callable[[int], tuple[int, ...]] | None = None, indices: list[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x float32 (B, 3, S, S), y int64 (B,))`` for ``samples[indices]`` in order, decoding
    the next batch in background threads while the current one is used. ``aug_key(i)`` gives
    the augmentation seed of sample ``i`` (None: plain preprocessing)."""
    idx = list(range(len(samples))) if indices is None else list(indices)
    workers = min(4, usable_cpus())

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


def to_device(x: np.ndarray, device: str, channels_last: bool = False):
    torch = _torch()
    t = torch.from_numpy(x)
    if device.startswith("cuda"):
        t = t.pin_memory().to(device, non_blocking=True)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
    return t


def image_batches(samples: list[Sample], spec: PreprocessSpec, batch_size: int, device: str, *,
                  indices: list[int] | None = None, aug_key: Callable[[int], tuple[int, ...]] | None = None,
                  channels_last: bool = False) -> Iterator[tuple[Any, Any]]:
    """:func:`decode_batches` as tensors on ``device``: ``x`` float32 (B, 3, S, S) (channels_last
    memory format on CUDA when asked), ``y`` int64 (B,)."""
    torch = _torch()
    for x, y in decode_batches(samples, spec, batch_size, aug_key, indices):
        yield to_device(x, device, channels_last), torch.from_numpy(y).to(device)


def model_forward(module, x):
    """Logits of a whole network: ``module(x)``."""
    return module(x)


# -- one epoch ------------------------------------------------------------------------------------

class NonFiniteLoss(TrainingError):
    """A step's loss was NaN or infinite (on any rank). ``step`` (0-based) and ``value``."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"non-finite loss ({value}) at step {step}")
        self.step, self.value = step, value


@dataclass
class EpochStats:
    """One training epoch: mean loss over the images seen on all ranks, the image count, and the
    wall time of the loop in seconds."""

    loss: float
    images: int
    seconds: float


@dataclass
class Evaluation:
    """Top-1 (fraction) and mean cross-entropy over ``count`` validation images."""

    top1: float
    loss: float
    count: int


def _autocast(device: str, amp):
    torch = _torch()
    return torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None)


def train_one_epoch(model, criterion, optimizer, batches: Iterable[tuple[Any, Any]], device: str, *,
                    scheduler=None, scaler=None, amp=None, clip_grad_norm: float | None = None,
                    params: list | None = None, modes: list | None = None, forward: Callable = model_forward,
                    dist: Distributed | None = None, progress: tuple[str, int] | None = None) -> EpochStats:
    """One pass over ``batches`` (``(x, y)`` on ``device``): for each batch, ``forward(model, x)``
    under autocast (``amp``: a torch dtype or None), ``criterion(logits.float(), y)``, backward
    (through ``scaler``, a ``torch.amp.GradScaler``, when given), gradient L2-norm clipping of
    ``params`` at ``clip_grad_norm`` (None: off; unscaled first), ``optimizer.step()`` and
    ``scheduler.step()`` (per step).

    Train mode: ``modes`` (a :func:`edgetransfer.train.freeze.train_modes` list: frozen modules
    stay in eval mode) or ``model.train()``. ``dist``: under torchrun the finiteness check and the
    loss sum are reduced over ranks. ``progress``: ``(description, total images)`` for a bar.

    Returns :class:`EpochStats`. Raises :class:`NonFiniteLoss` on a NaN/inf loss (before the
    step, so the parameters are those of the last good step).
    """
    torch = _torch()
    t0 = time.perf_counter()
    if modes is not None:
        set_train_mode(model, modes)
    else:
        model.train()
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    world = dist.world if dist is not None else 1
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    bar = task(*progress) if progress else contextlib.nullcontext(lambda k=1: None)
    with bar as advance:
        for step, (x, y) in enumerate(batches):
            with _autocast(device, amp):
                out = forward(model, x)
            loss = criterion(out.float(), y)
            finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
            if world > 1:
                dist.all_reduce(finite, "min")
            if not int(finite.item()):
                raise NonFiniteLoss(step, float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if clip_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            advance(len(y))
    seconds = time.perf_counter() - t0
    tot = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if dist is not None:
        dist.all_reduce(tot)
    return EpochStats(float(tot[0] / tot[1]), int(tot[1]), seconds)


def evaluate(model, criterion, batches: Iterable[tuple[Any, Any]], device: str, *, amp=None,
             forward: Callable = model_forward, dist: Distributed | None = None) -> Evaluation:
    """Top-1 and mean ``criterion`` loss of ``model`` (eval mode, inference mode, autocast
    ``amp``) over ``batches`` (``(x, y)`` on ``device``); under torchrun ``dist`` sums the counts of
    every rank's shard. Raises :class:`ValueError` when there are no batches."""
    torch = _torch()
    model.eval()
    acc = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    with torch.inference_mode():
        for x, y in batches:
            with _autocast(device, amp):
                out = forward(model, x)
            out = out.float()
            acc += torch.tensor([float((out.argmax(1) == y).sum()), float(criterion(out, y)) * len(y), len(y)],
                                dtype=torch.float64, device=device)
    if dist is not None:
        dist.all_reduce(acc)
    if float(acc[2]) == 0:
        raise ValueError("evaluate: no validation batches")
    return Evaluation(float(acc[0] / acc[2]), float(acc[1] / acc[2]), int(acc[2]))

