"""Every shared pytest fixture, in one place; what they build comes from :mod:`tests.fixtures`.

Real data (skipped cleanly when absent): ``hymenoptera``, ``bees_bundle``. Tiny inputs:
``tiny_folder`` (a/b ImageFolder), ``tiny_data`` (red/green/blue train/val), ``tiny_bundle`` (a
complete bundle from the real pipeline, session-scoped, read-only) and ``bundle_copy`` (a private
copy to alter).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("EDGETRANSFER_QUIET", "1")

from .fixtures import HYMENOPTERA, REPO  # noqa: E402,F401  (REPO: re-exported for tests)
from .fixtures.bundles import COLOUR_CLASSES, pipeline_bundle  # noqa: E402
from .fixtures.images import colour_folder, make_image_folder  # noqa: E402,F401


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not (HYMENOPTERA / "train").is_dir() or not (HYMENOPTERA / "val").is_dir():
        pytest.skip(f"real dataset not present at {HYMENOPTERA} (set EDGETRANSFER_DATA to the folder holding "
                    "hymenoptera/, or EDGETRANSFER_HYMENOPTERA)")
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


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """data/{train,val}/{red,green,blue}/*.jpg"""
    data = tmp_path_factory.mktemp("data")
    colour_folder(data / "train", COLOUR_CLASSES, per_class=8, fmt="jpg", seed=0)
    colour_folder(data / "val", COLOUR_CLASSES, per_class=4, fmt="jpg", seed=1)
    return data


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_data) -> Path:
    """A complete bundle (model.pt, model.onnx, model.int8.qdq.onnx, golden/, report.json/.md/.png),
    :func:`tests.fixtures.bundles.pipeline_bundle`. Read-only for the tests: those that alter it use
    ``bundle_copy``."""
    return pipeline_bundle(tmp_path_factory.mktemp("bundle"), tiny_data)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the session bundle (for tests that alter artifacts or rewrite reports)."""
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def pytest_terminal_summary(terminalreporter):
    """Say how to run the SSH board tests when they were skipped for a missing OpenSSH server (a
    fresh machine's ``make test``; ``.ci/run`` installs it)."""
    ssh = [r for r in terminalreporter.stats.get("skipped", []) if "openssh-server" in str(getattr(r, "longrepr", ""))]
    if ssh:
        terminalreporter.write_line(f"{len(ssh)} SSH board test(s) skipped: no OpenSSH server here. To run them: "
                                    "sudo apt-get install -y openssh-server openssh-client, then make test again (.ci/run does this)",
                                    yellow=True)
