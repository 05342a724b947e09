"""The image policy (edgetransfer/imagepolicy.py) on generated files: EXIF-rotated phone photos,
16-bit PNGs, transparent PNGs, CMYK/P/LA/grey, non-image files in class folders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from edgetransfer.bench.e2e import ImageClassifier, encoded_payloads
from edgetransfer.data import PreprocessSpec, decode_rgb, preprocess_file, preprocess_image, scan_image_folder
from edgetransfer.imagepolicy import ImagePolicy, parse_colour

ORIENTATIONS = (2, 3, 5, 6, 8)


def _asymmetric(w: int = 48, h: int = 32) -> Image.Image:
    """An image whose every flip and rotation differs: a red top-left block, a blue bar at the bottom."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[: h // 3, : w // 4] = (255, 0, 0)
    a[-4:, w // 2:] = (0, 0, 255)
    return Image.fromarray(a)


def _jpeg_with_orientation(path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    _asymmetric().save(path, quality=95, exif=exif)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_rotated_jpeg_decodes_upright_everywhere(tmp_path, orientation):
    p = tmp_path / f"o{orientation}.jpg"
    _jpeg_with_orientation(p, orientation)
    with Image.open(p) as im:
        stored = np.asarray(im.convert("RGB"))
        upright_img = ImageOps.exif_transpose(im).convert("RGB")
    upright = np.asarray(upright_img)
    assert upright.shape != stored.shape or not np.array_equal(upright, stored)  # the tag changes the pixels
    got = np.asarray(decode_rgb(p))
    assert np.array_equal(got, upright)
    assert np.array_equal(np.asarray(ImagePolicy(exif_orientation=False).decode(p)), stored)
    # the model input of training/calibration/parity/golden (preprocess_file) and of the
    # end-to-end classifier (JPEG bytes, as an app receives them) are the upright image's
    spec = PreprocessSpec(input_size=24, resize_size=28)
    want = preprocess_image(upright_img, spec)
    assert np.array_equal(preprocess_file(p, spec), want)
    clf = ImageClassifier(runner=None, spec=spec, class_names=["a"])
    [payload] = encoded_payloads(scan_image_folder(_folder_of(tmp_path, p)).samples, n=1)
    assert payload == p.read_bytes()  # a JPEG's own bytes, EXIF included
    assert np.array_equal(clf.preprocess(payload)[0], want)


def _folder_of(tmp_path, p):
    d = tmp_path / "folder" / "c"
    d.mkdir(parents=True)
    (d / p.name).write_bytes(p.read_bytes())
    return tmp_path / "folder"


def test_scan_counts_cases_and_ignores_non_images(tmp_path):
    d = tmp_path / "data"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir(parents=True)
    _jpeg_with_orientation(d / "a" / "rot.jpg", 6)
    _asymmetric().save(d / "a" / "plain.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(d / "a" / "deep.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(d / "b" / "clear.png")
    Image.new("CMYK", (8, 8), (0, 50, 90, 0)).save(d / "b" / "print.jpg")
    Image.new("P", (8, 8), 3).save(d / "b" / "pal.gif")
    Image.new("L", (8, 8), 9).save(d / "b" / "grey.png")
    (d / "a" / "notes.txt").write_text("not an image")
    (d / "b" / "labels.csv").write_text("x,y")
    (d / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    f = scan_image_folder(d)
    assert sorted(p.split("/")[-1] for p in f.ignored) == ["labels.csv", "notes.txt"]
    assert [s["path"].split("/")[-1] for s in f.skipped] == ["broken.jpg"]  # undecodable, counted apart
    assert f.image_cases() == {"rgb": 2, "exif_oriented": 1, "16bit": 1, "alpha": 1, "cmyk": 1, "palette": 1, "grey": 1}
    assert len(f) == 7


def test_class_folder_with_only_non_images_is_an_error_naming_it(tmp_path):
    from edgetransfer.errors import DataError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "README.txt").write_text("x")
    with pytest.raises(DataError, match=r"a is only non-image files \(README.txt\)"):
        scan_image_folder(tmp_path)


def test_16bit_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).astype(np.uint16).reshape(4, 256)
    p = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(p)
    with Image.open(p) as im:
        assert im.mode == "I;16"
        clipped = np.asarray(im.convert("RGB"))
    assert (clipped == 255).mean() > 0.99  # what Pillow's convert does: nearly all white
    got = np.asarray(decode_rgb(p))[..., 0].astype(int)
    assert np.abs(got - np.rint(ramp.astype(float) * 255 / 65535)).max() == 0
    assert got.min() == 0 and got.max() == 255


def test_rgba_logo_on_transparency_becomes_the_stated_background(tmp_path):
    a = np.zeros((32, 32, 4), np.uint8)  # transparent black everywhere ...
    a[8:24, 8:24] = (200, 20, 20, 255)  # ... but an opaque red square
    a[0:4, 28:32] = (0, 0, 0, 128)  # a half-transparent black corner
    p = tmp_path / "logo.png"
    Image.fromarray(a, "RGBA").save(p)
    with Image.open(p) as im:
        assert tuple(np.asarray(im.convert("RGB"))[0, 0]) == (0, 0, 0)  # Pillow alone: black
    for bg in ("white", "#0080ff", "10,200,30"):
        rgb = parse_colour(bg)
        got = np.asarray(ImagePolicy(background=rgb).decode(p))
        assert tuple(got[0, 0]) == rgb and tuple(got[31, 0]) == rgb
        assert tuple(got[16, 16]) == (200, 20, 20)
        assert np.abs(got[1, 30].astype(int) - np.asarray(rgb) * 127 / 255).max() <= 1.5
    # LA and P-with-transparency follow the same rule
    Image.fromarray(a[..., [0, 3]], "LA").save(tmp_path / "la.png")
    assert tuple(np.asarray(decode_rgb(tmp_path / "la.png"))[0, 0]) == (255, 255, 255)


def test_policy_is_recorded_in_the_preprocessing_contract():
    spec = PreprocessSpec(image=ImagePolicy(exif_orientation=False, background=(1, 2, 3)))
    d = spec.to_dict()
    assert d["image"]["exif_orientation"] is False and d["image"]["background"] == [1, 2, 3]
    assert PreprocessSpec.from_dict(d) == spec
    old = {k: v for k, v in d.items() if k != "image"}  # a manifest written before the policy existed
    assert PreprocessSpec.from_dict(old).image == ImagePolicy()
    with pytest.raises(ValueError, match="R,G,B"):
        parse_colour("no-such-colour")


def test_16bit_dim_vs_bright_trains_where_clipping_gives_chance(tmp_path):
    """Two classes of 16-bit PNGs that differ only in brightness (dim: 2k-12k of 65535, bright:
    40k-60k). Pillow's convert makes every one of them pure white; the policy keeps them apart."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from edgetransfer.data import resolve_splits
    from edgetransfer.train import TrainConfig, train

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 6)):
        for cls, (lo, hi) in (("dim", (2000, 12000)), ("bright", (40000, 60000))):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(lo, hi, (24, 24)).astype(np.uint16)
                Image.fromarray(a).save(d / f"{i}.png")
    train_set, val_set, _ = resolve_splits(tmp_path / "data")
    assert train_set.image_cases() == {"16bit": 20}
    clipped = {np.asarray(Image.open(s.path).convert("RGB")).tobytes() for s in val_set.samples}
    assert len(clipped) == 1  # clipping: every image identical, so chance at best
    cfg = TrainConfig(model="timm:resnet10t", pretrained=False, input_size=32, epochs=4, batch_size=4, lr=1e-2, seed=0)
    res = train(train_set, val_set, tmp_path / "out", cfg)
    assert res.best_val_top1 > 0.9
