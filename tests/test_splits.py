"""Data roles (edgetransfer.splits): train / val / test found or carved, every folder logged with its
role, and the test split never reaching the trainer, calibration or the INT8 decision."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from .fixtures import DATA
from .fixtures.images import colour_folder

from edgetransfer.errors import DataError
from edgetransfer.splits import resolve_data_roles

PIZZA = DATA / "pizza_steak_sushi"


def _paths(f):
    return {str(s.path) for s in f.samples} if f is not None else set()


def _roles(r):
    return {(x["role"], Path(x["folder"]).name if x["folder"] else "") for x in r.roles}


def test_pizza_test_folder_is_the_test_split_and_val_is_carved_from_train():
    if not (PIZZA / "test").is_dir():
        pytest.skip(f"{PIZZA} not present (set EDGETRANSFER_DATA to the folder holding pizza_steak_sushi/)")
    r = resolve_data_roles(PIZZA, seed=0)
    assert r.test is not None and r.test.root == PIZZA / "test" and len(r.test) == 150
    assert len(r.train) + len(r.val) == 450 and len(r.val) == 90  # 20 % of train, per class
    assert r.val.counts() == {"pizza": 31, "steak": 29, "sushi": 30}
    assert not (_paths(r.train) & _paths(r.val)) and not (_paths(r.test) & (_paths(r.train) | _paths(r.val)))
    assert ("test", "test") in _roles(r) and r.carving["val_from"] == "train" and r.carving["test_from"] is None


def test_val_synonyms_extra_folders_and_mistakes(tmp_path):
    d = tmp_path / "d"
    colour_folder(d / "train", per_class=4, size=8)
    colour_folder(d / "valid", per_class=4, size=8, seed=1)
    colour_folder(d / "extra", per_class=2, size=8, seed=2)
    r = resolve_data_roles(d, test_fraction=0.5)
    assert r.val.root == d / "valid" and r.test.root == d / "valid"  # test carved from valid/
    assert len(r.val) == 6 and len(r.test) == 6 and not (_paths(r.val) & _paths(r.test))
    assert ("ignored", "extra") in _roles(r)  # logged, never silently dropped
    colour_folder(d / "validation", per_class=4, size=8, seed=3)
    with pytest.raises(DataError, match="say which one validates with --val"):
        resolve_data_roles(d)
    r = resolve_data_roles(d, val=d / "validation", test_fraction=0)
    assert r.val.root == d / "validation" and r.test is None
    assert ("ignored", "valid") in _roles(r) and any("optimistic" in x["note"] for x in r.roles)
    flat = tmp_path / "flat"
    colour_folder(flat / "red", classes=("a",), per_class=3, size=8)
    colour_folder(flat / "test", per_class=2, size=8)
    with pytest.raises(DataError, match="but no train/"):
        resolve_data_roles(flat)


def test_three_way_carving_is_seeded_stratified_and_disjoint(tmp_path):
    d = colour_folder(tmp_path / "flat", per_class=10, size=8)
    r = resolve_data_roles(d, seed=3)
    assert (len(r.train), len(r.val), len(r.test)) == (18, 6, 6)  # 60 / 20 / 20 of 30, per class
    assert set(r.test.counts().values()) == {2} and set(r.val.counts().values()) == {2}
    assert len(_paths(r.train) | _paths(r.val) | _paths(r.test)) == 30
    again = resolve_data_roles(d, seed=3)
    assert _paths(again.test) == _paths(r.test) and _paths(again.val) == _paths(r.val)
    assert _paths(resolve_data_roles(d, seed=4).test) != _paths(r.test)
    assert r.carving == {"seed": 3, "val_fraction": 0.2, "test_fraction": 0.2, "val_from": "train", "test_from": "train"}


class _DecodeSpy:
    """Counts PIL.Image.open calls per path, outside the folder scan (which decodes every file once)."""

    def __init__(self):
        self.counts = Counter()

    def install(self, monkeypatch):
        import PIL.Image

        real = PIL.Image.open

        def spy(fp, *a, **kw):
            f = sys._getframe(1)
            scanning = False
            while f is not None:
                if f.f_code.co_name in ("scan_image_folder", "check"):
                    scanning = True
                    break
                f = f.f_back
            if not scanning and isinstance(fp, (str, Path)):
                self.counts[str(Path(fp).resolve())] += 1
            return real(fp, *a, **kw)

        monkeypatch.setattr(PIL.Image, "open", spy)


def test_test_split_never_reaches_training_calibration_or_the_int8_decision(tiny_bundle, monkeypatch, tmp_path):
    """The session bundle's test split (carved from val/) is recorded; re-running train + export +
    quantize on the same data with a decode spy shows none of its images is decoded by the
    trainer, the calibration or the INT8 budget, while the benchmark does decode them."""
    pytest.importorskip("torch")
    from edgetransfer.bundle import Bundle
    from edgetransfer.pipeline import stage_export, stage_quantize, stage_train
    from edgetransfer.targets import load_target
    from edgetransfer.train import TrainConfig

    info = Bundle(tiny_bundle).info["dataset"]
    assert info["test_files"] and info["carving"]["test_from"] == "val"
    test_paths = {f for f, _ in info["test_files"]}
    assert not test_paths & {f for f, _ in info["val_files"] + info["train_files"]}
    from edgetransfer.export.onnx import ExportConfig

    root = tiny_bundle.parent  # tests/fixtures/bundles.py:pipeline_bundle's seed checkpoint and recipe
    spy = _DecodeSpy()
    spy.install(monkeypatch)
    out = tmp_path / "b"
    tgt = load_target("x86-cpu")
    stage_train(Path(info["data"]), out, TrainConfig(model=f"file:{root / 'seed' / 'seed.pt'}", epochs=2, batch_size=8), target=tgt)
    stage_export(out, tgt, ExportConfig(dynamo=False))
    stage_quantize(out, tgt, str(root / "calib.yaml"), max_steps=0)
    assert {f for f, _ in Bundle(out).info["dataset"]["test_files"]} == test_paths
    decoded = set(spy.counts)
    assert decoded & {f for f, _ in info["train_files"]} and decoded & {f for f, _ in info["val_files"]}
    assert not decoded & test_paths, sorted(decoded & test_paths)[:3]
    from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle

    benchmark_bundle(out, tgt, settings=BenchSettings(batch_sizes=(1,), warmup=0, min_iterations=1, min_seconds=0.0,
                                                      e2e=False, threads=1), write=False)
    assert test_paths <= set(spy.counts)  # the spy sees them once the report measures on test
