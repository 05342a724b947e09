"""Frozen-backbone head training: feature cache vs the naive loop, at equal settings.

Runs the same 10-epoch head phase twice in one process (same model, data, seed, optimizer,
schedule, sampler): once on cached features (extracted once), once running the whole network
every step. Prints per-run figures, then a final JSON line:

    {"benchmark": "train_speed", "cached_s": ..., "naive_s": ..., "ratio": cached/naive,
     "cached_val_top1": ..., "naive_val_top1": ..., ...}

Goal (issue 3): ratio <= 0.15 with validation top-1 within 1 point.

    python benchmarks/train_speed.py [--data ../shared/data/hymenoptera] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("EDGETRANSFER_HYMENOPTERA", REPO.parent / "shared" / "data" / "hymenoptera")))
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from edgetransfer.data import resolve_splits
    from edgetransfer.progress import set_quiet
    from edgetransfer.train import TrainConfig, train

    set_quiet(True)
    load0 = os.getloadavg()[0]
    tr, va, how = resolve_splits(args.data, seed=args.seed)
    base = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cache in (("cached", True), ("naive", False)):
            t0 = time.perf_counter()
            res = train(tr, va, Path(tmp) / name, TrainConfig(**{**base.__dict__, "feature_cache": cache}))
            wall = time.perf_counter() - t0
            epochs = [h["seconds"] for h in res.history]
            runs[name] = {"wall_s": wall, "val_top1": res.best_val_top1, "final_val_top1": res.history[-1]["val_top1"],
                          "epoch_s_mean": sum(epochs) / len(epochs), "best_epoch": res.best_epoch}
            print(f"{name:>6}: {wall:7.2f} s total, {runs[name]['epoch_s_mean']:.4f} s/epoch (incl. validation), "
                  f"best val top-1 {res.best_val_top1:.4f} (epoch {res.best_epoch}), final {res.history[-1]['val_top1']:.4f}", flush=True)
    c, n = runs["cached"], runs["naive"]
    print(json.dumps({
        "benchmark": "train_speed", "model": args.model, "data": str(args.data), "split": how,
        "num_train": len(tr), "num_val": len(va), "epochs": args.epochs, "batch_size": args.batch_size,
        "cached_s": round(c["wall_s"], 3), "naive_s": round(n["wall_s"], 3), "ratio": round(c["wall_s"] / n["wall_s"], 4),
        "cached_epoch_s": round(c["epoch_s_mean"], 5), "naive_epoch_s": round(n["epoch_s_mean"], 3),
        "cached_val_top1": round(c["val_top1"], 4), "naive_val_top1": round(n["val_top1"], 4),
        "top1_diff_points": round(100 * (c["val_top1"] - n["val_top1"]), 2),
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "load_avg_1min_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],  # other processes skew both runs
    }))


if __name__ == "__main__":
    main()
