"""Feature caching: with only the head training, the frozen backbone's output for a given
preprocessed image never changes, so it is computed once (optionally for ``views`` augmented
views per image), kept in memory or in an on-disk cache keyed by the weights, the data files and
the preprocessing, and the head trains on it: identical maths, epochs in milliseconds.

The features are the head module's input, captured by a forward pre-hook; the cache is used only
when ``flatten(head(features))`` reproduces the whole model's logits on the first batch (models
whose head input is not the whole story, e.g. a pooling after the hook, run the whole network).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import load_torch, save_torch
from ..data import ImageFolder, PreprocessSpec, Sample
from ..models import ModelInfo, head_logits, state_digest
from ..progress import log, task
from .config import TrainConfig
from .device import Distributed, _torch
from .loop import decode_batches, to_device


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
                for bi, (x, y) in enumerate(decode_batches(samples, spec, batch_size, key, indices)):
                    with torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
                        out = model(to_device(x, device))
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


def cached_features(model, info: ModelInfo, folder: ImageFolder, cfg: TrainConfig, d: Distributed, amp, role: str,
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
            obj = load_torch(path)
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
        save_torch({"key": key, "features": f, "labels": y}, path)
        how += f", cached in {path}"
    return f, y, True, how


@dataclass
class Features:
    """Cached head inputs on the training device: train float32 (N, views, *F) with labels int64
    (N,), val float32 (M, *F) (plain view) with labels (M,); ``info``: shapes and where they came
    from (recorded in the checkpoint's metrics)."""

    train: Any
    train_labels: Any
    val: Any
    val_labels: Any
    info: dict[str, Any] = field(default_factory=dict)


def head_features(model, info: ModelInfo, train_set: ImageFolder, val_set: ImageFolder, cfg: TrainConfig,
                  d: Distributed, amp) -> Features | None:
    """Features of both splits (disk cache when ``cfg.cache_dir``), or None when the head's input
    does not reproduce the model's logits (then the whole network must run every step)."""
    digest = state_digest(model, info.head_path) if cfg.cache_dir else None
    tf, tl, ok, how_t = cached_features(model, info, train_set, cfg, d, amp, "train", cfg.views, digest)
    if not ok:
        log(f"[yellow]feature cache off: flatten(head(features)) does not reproduce {cfg.model}'s logits; "
            "running the whole network every step instead")
        return None
    vf, vl, _, how_v = cached_features(model, info, val_set, cfg, d, amp, "val", 1, digest)
    log(f"features: train {tuple(tf.shape)} {how_t}; val {tuple(vf[:, 0].shape)} {how_v}")
    return Features(tf.to(d.device), tl.to(d.device), vf[:, 0].to(d.device), vl.to(d.device),
                    {"train_shape": list(tf.shape), "val_shape": list(vf[:, 0].shape), "views": cfg.views,
                     "train": how_t, "val": how_v})


def head_forward(head, features):
    """Logits from cached features: ``flatten(head(features), 1)``."""
    return head_logits(head, features)
