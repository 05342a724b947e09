from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetransfer.data import (PreprocessSpec, preprocess_file, resolve_splits, scan_image_folder, stratified_sample,
                               stratified_split)
from edgetransfer.errors import DataError

from .fixtures.images import make_image_folder


def test_gif_png_and_jpeg_are_all_used(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    Image.new("P", (30, 20), 3).save(root / "a" / "x.gif")
    Image.new("RGB", (30, 20), (1, 2, 3)).save(root / "b" / "y.jpeg")
    Image.new("L", (30, 20), 7).save(root / "b" / "z.bmp")
    f = scan_image_folder(root)
    assert f.class_names == ["a", "b"]
    assert f.counts() == {"a": 3, "b": 4}
    assert f.skipped == []
    x = preprocess_file(root / "a" / "x.gif", PreprocessSpec(input_size=16, resize_size=18))
    assert x.shape == (3, 16, 16) and x.dtype == np.float32


def test_truncated_and_zero_byte_files_are_reported_and_skipped(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3)
    good = root / "a" / "0.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "b" / "empty.jpg").write_bytes(b"")
    f = scan_image_folder(root)
    skipped = {Path(s["path"]).name: s["reason"] for s in f.skipped}
    assert set(skipped) == {"truncated.jpg", "empty.jpg"}
    assert all(skipped.values())
    assert len(f) == 6 and good in [s.path for s in f.samples]


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = make_image_folder(tmp_path / "d")
    (root / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder .*/c is empty"):
        scan_image_folder(root)


def test_no_class_folders(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_image_folder(tmp_path / "d")


def test_validation_class_unknown_to_training(tmp_path):
    make_image_folder(tmp_path / "d" / "train", classes=("a", "b"))
    make_image_folder(tmp_path / "d" / "val", classes=("a", "b", "zebra"))
    with pytest.raises(DataError, match=r"val/zebra is not a class of the training set"):
        resolve_splits(tmp_path / "d")


def test_labels_follow_training_class_order_not_folder_order(tmp_path):
    root = make_image_folder(tmp_path / "v", classes=("a", "b"))
    f = scan_image_folder(root, class_names=["b", "a"])
    assert {s.path.parent.name: s.label for s in f.samples} == {"b": 0, "a": 1}


def test_stratified_split_is_seeded_and_keeps_every_class(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=10)
    f = scan_image_folder(root)
    tr1, va1 = stratified_split(f, 0.2, seed=3)
    tr2, va2 = stratified_split(f, 0.2, seed=3)
    assert [s.path for s in va1.samples] == [s.path for s in va2.samples]
    assert va1.counts() == {"a": 2, "b": 2, "c": 2} and tr1.counts() == {"a": 8, "b": 8, "c": 8}
    assert not set(s.path for s in tr1.samples) & set(s.path for s in va1.samples)


def test_split_needs_two_images_per_class(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=1)
    with pytest.raises(DataError, match="class 'a'.*at least 2"):
        resolve_splits(root)


def test_stratified_sample_equal_share(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=10)
    f = scan_image_folder(root)
    s = stratified_sample(f, 6, seed=0)
    labels = [x.label for x in s]
    assert labels.count(0) == 3 and labels.count(1) == 3


def test_preprocess_matches_reference_recipe(tmp_path):
    # resize shorter side to 256 (bicubic), center crop 224, (x/255 - mean)/std, CHW
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    spec = PreprocessSpec(224, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    from edgetransfer.data import preprocess_image

    x = preprocess_image(img, spec)
    r = img.resize((341, 256), Image.Resampling.BICUBIC)
    left, top = round((341 - 224) / 2), 16
    ref = (np.asarray(r.crop((left, top, left + 224, top + 224)), np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(x, ref.transpose(2, 0, 1), atol=1e-6)
