"""Shared fixtures: real data paths (skipped cleanly when absent), tiny ImageFolders, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("EDGETRANSFER_QUIET", "1")

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = Path(os.environ.get("EDGETRANSFER_HYMENOPTERA", REPO.parent / "shared" / "data" / "hymenoptera"))


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not (HYMENOPTERA / "train").is_dir() or not (HYMENOPTERA / "val").is_dir():
        pytest.skip(f"real dataset not present at {HYMENOPTERA} (set EDGETRANSFER_HYMENOPTERA)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def bees_bundle(hymenoptera, tmp_path_factory):
    """The main job on hymenoptera (EfficientNet-Lite0, 10 head epochs, fast benchmark settings):
    ``(bundle dir, report)``. Session-scoped: the end-to-end and the real-data quantization tests
    share it; tests must not modify the bundle's files."""
    from edgetransfer.bench.benchmark import BenchSettings
    from edgetransfer.pipeline import run
    from edgetransfer.train import TrainConfig

    out = tmp_path_factory.mktemp("bees")
    fast = BenchSettings(batch_sizes=(1, 8), warmup=2, min_iterations=5, min_seconds=0.0)
    report = run(hymenoptera, out, TrainConfig(epochs=10), target="x86-cpu", settings=fast)
    return out, report


def make_image_folder(root: Path, classes=("a", "b"), per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """Write root/<class>/<i>.png with class-dependent colour so a model can separate them."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), np.float32)
            base[..., ci % 3] = 200
            arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")
