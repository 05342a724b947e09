"""Each model family's own eval preprocessing, as :mod:`edgetransfer.preprocess` derives it and
:func:`edgetransfer.data.preprocess_image` implements it, against the library's own transform on
real photos (hymenoptera, several sizes and aspect ratios): max |pixel difference| below 1e-3 of
one 8-bit level (measured: float rounding only, ~1e-5 level)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetransfer.data import decode_rgb, preprocess_image
from edgetransfer.preprocess import from_hf_processor, from_timm_config, from_torchvision_weights

MAX_LEVELS = 1e-3  # |difference| in 8-bit levels, i.e. normalised difference * std * 255


@pytest.fixture(scope="module")
def photos(hymenoptera):
    files = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:4] + sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:2]
    ims = [decode_rgb(f) for f in files]
    assert len({im.size for im in ims}) >= 3  # different sizes / aspect ratios
    return ims


def _levels(ours: np.ndarray, ref: np.ndarray, std) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((np.abs(ours - ref) * np.asarray(std, np.float32).reshape(3, 1, 1)).max() * 255)


HF_PROCESSORS = {
    "vit (squash 224)": ("ViTImageProcessor", {}),
    "deit (squash 256, crop 224, bicubic)": ("DeiTImageProcessor", {}),
    "convnext (crop_pct 0.875)": ("ConvNextImageProcessor", {}),
    "convnext 384 (warp)": ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}),
    # apple/mobilevit-small's preprocessor_config.json (the class default, 224 -> crop 256, pads)
    "mobilevit (288/256, BGR, no normalisation)": ("MobileViTImageProcessor", {"size": {"shortest_edge": 288}}),
    "bit (shortest_edge + crop, CLIP mean/std)": ("BitImageProcessor", {}),
}


@pytest.mark.parametrize("name", list(HF_PROCESSORS))
def test_hf_image_processor_parity(photos, name):
    tr = pytest.importorskip("transformers")
    if int(tr.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers " + tr.__version__ + " is not the hf extra's 4.57.6 (the mobile extras bring transformers 5 for litert-torch); the hf tests run in make test's venv: pip install 'edgetransfer[hf]'")
    cls, kw = HF_PROCESSORS[name]
    proc = getattr(tr, cls)(**kw)
    spec = from_hf_processor(proc.to_dict())
    for im in photos:
        ref = proc(images=im, return_tensors="np")["pixel_values"][0]
        assert _levels(preprocess_image(im, spec), ref, spec.std) < MAX_LEVELS, (name, im.size)
    if cls == "MobileViTImageProcessor":
        assert spec.channel_order == "BGR" and spec.mean == (0.0, 0.0, 0.0)


TIMM_CONFIGS = ["resnet50.a1_in1k",  # crop_pct 0.95, bicubic
                "efficientnet_b0.ra_in1k",  # 0.875, bicubic
                "vit_base_patch16_224.augreg2_in21k_ft_in1k",  # 0.9, bicubic, mean/std 0.5
                "convnext_tiny.fb_in22k_ft_in1k_384"]  # crop_mode squash, 384


@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_timm_eval_transform_parity(photos, name):
    timm = pytest.importorskip("timm")
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    spec = from_timm_config(cfg)
    ref_t = timm.data.create_transform(**cfg)
    for im in photos:
        assert _levels(preprocess_image(im, spec), ref_t(im).numpy(), spec.std) < MAX_LEVELS, (name, cfg, im.size)
    if "384" in name:
        assert cfg["crop_mode"] == "squash" and spec.resize_mode == "squash"
    if name.startswith("resnet50"):
        assert cfg["crop_pct"] == 0.95 and spec.resize_size == 235  # floor(224 / 0.95), not round (236)


@pytest.mark.parametrize("name,weights", [("resnet50", "IMAGENET1K_V2"), ("vit_b_16", "IMAGENET1K_V1"), ("efficientnet_b1", "IMAGENET1K_V2")])
def test_torchvision_weights_transform_parity(photos, name, weights):
    """Against torchvision.transforms on the PIL image with the weights' parameters (the
    reference training scripts' eval preset, backend 'pil'): < 1e-3 level. ``weights.transforms()``
    itself converts to a tensor first and resizes with torch's antialiased kernel, which differs
    from Pillow's by rounding: at most 1 level, mean below 0.05 level (measured ~0.01)."""
    tv = pytest.importorskip("torchvision")
    T = tv.transforms
    w = tv.models.get_model_weights(name)[weights]
    spec = from_torchvision_weights(w)
    tw = w.transforms()
    pil_t = T.Compose([T.Resize(tw.resize_size, interpolation=tw.interpolation), T.CenterCrop(tw.crop_size), T.ToTensor(),
                       T.Normalize(tw.mean, tw.std)])
    for im in photos:
        ours = preprocess_image(im, spec)
        assert _levels(ours, pil_t(im).numpy(), spec.std) < MAX_LEVELS, (name, im.size)
        diff = np.abs(ours - tw(im).numpy()) * np.asarray(spec.std, np.float32).reshape(3, 1, 1) * 255
        assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.05, (name, im.size, diff.max(), diff.mean())

def test_hf_processor_crop_larger_than_resize_is_refused():
    tr = pytest.importorskip("transformers")
    if int(tr.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers " + tr.__version__ + " is not the hf extra's 4.57.6 (the mobile extras bring transformers 5 for litert-torch); the hf tests run in make test's venv: pip install 'edgetransfer[hf]'")
    from edgetransfer.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="larger than the resized image"):
        from_hf_processor(tr.MobileViTImageProcessor().to_dict())  # class default: shortest_edge 224, crop 256
