"""Fixtures of the benchmark tests: one tiny bundle per session, built by the real pipeline.

The bundle: a timm ``resnet10t`` (seeded random init, no download; its random features keep the
colour information, unlike a random MobileNetV3's near-zero ones) at 32x32 px whose head is
trained on three colour-coded classes, exported to ONNX (TorchScript exporter: faster) and
quantized to INT8 QDQ on 12 calibration images; the export stage writes the golden set.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..tiny_models import colour_folder

CLASSES = ("red", "green", "blue")
# one thread per runtime: the suite runs on small shared CI machines, where a spinning thread pool
# on an oversubscribed CPU turns milliseconds into seconds
FAST = dict(batch_sizes=(1, 4), warmup=2, min_iterations=5, min_seconds=0.0, threads=1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """data/{train,val}/{red,green,blue}/*.jpg"""
    data = tmp_path_factory.mktemp("data")
    colour_folder(data / "train", CLASSES, per_class=8, fmt="jpg", seed=0)
    colour_folder(data / "val", CLASSES, per_class=4, fmt="jpg", seed=1)
    return data


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_data) -> Path:
    """A complete bundle (model.pt, model.onnx, model.int8.qdq.onnx, golden/, report.json/.md/.png).
    Read-only for the tests: those that alter it use ``bundle_copy``."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from edgetransfer.bench.benchmark import BenchSettings
    from edgetransfer.data import PreprocessSpec
    from edgetransfer.export.onnx import ExportConfig
    from edgetransfer.models import build_model
    from edgetransfer.pipeline import run
    from edgetransfer.checkpoint import save_checkpoint
    from edgetransfer.train import TrainConfig

    root = tmp_path_factory.mktemp("bundle")
    # a random-init backbone saved as an edgetransfer checkpoint: 'file:' loads it without a download
    import torch

    torch.manual_seed(0)
    model, info = build_model("timm:resnet10t", len(CLASSES), pretrained=False)
    info.preprocessing = PreprocessSpec(input_size=32, resize_size=36, interpolation="bilinear")
    seed = root / "seed" / "seed.pt"
    seed.parent.mkdir()
    save_checkpoint(seed, model, info, sorted(CLASSES), TrainConfig(), {}, {})
    recipe = root / "calib.yaml"
    recipe.write_text("num_samples: 12\nallow_fewer: true\nbatch_size: 6\nmethod: minmax\n")
    bundle = root / "b"
    run(tiny_data, bundle, TrainConfig(model=f"file:{seed}", epochs=15, lr=1e-2, batch_size=8), target="x86-cpu",
        recipe=str(recipe), export_cfg=ExportConfig(dynamo=False), settings=BenchSettings(**FAST))
    return bundle


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the session bundle (for tests that alter artifacts or rewrite reports)."""
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst
