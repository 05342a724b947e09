"""A model's own eval preprocessing as a :class:`~edgetransfer.data.PreprocessSpec`.

Pretrained weights were trained and evaluated with a particular resize / crop / normalisation;
fine-tuning and deployment should feed them the same. The spec is derived here from the
library's own description of it, and implemented once, in numpy + Pillow, by
:func:`edgetransfer.data.preprocess_image` (tests compare it with each library's transform on
real photos):

* timm (:func:`from_timm_config`): the resolved data config (``timm.data.resolve_data_config``:
  ``input_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``, ``std``), with the
  semantics of ``timm.data.transforms_imagenet_eval``: resize to ``floor(size / crop_pct)``
  (huggingface/pytorch-image-models#1383), shorter side (``center``) or both sides (``squash``),
  then a center crop (torchvision ``CenterCrop`` rounding).
* torchvision (:func:`from_torchvision_weights`): ``weights.transforms()`` (``ImageClassification``:
  ``resize_size`` shorter side, ``crop_size`` center crop, interpolation, mean/std).
* Hugging Face (:func:`from_hf_processor`): an image processor's dict (``preprocessor_config.json``):
  ``size`` ``{height, width}`` (resize both sides: ViT, DeiT) or ``{shortest_edge}`` (with
  ``crop_pct`` below 384 px: ConvNeXt, ResNet; with ``crop_size``: MobileViT), ``resample``,
  ``rescale_factor``, ``image_mean``/``image_std``, ``do_flip_channel_order`` (BGR), with the
  rounding of ``transformers.image_transforms`` (long side and crop offset floored).

Everything here is numpy/stdlib only: the spec is plain data; the libraries are only imported by
the callers that hold their objects.
"""

from __future__ import annotations

import math
from typing import Any

from .data import PreprocessSpec
from .errors import ModelSourceError

# PIL.Image.Resampling values (what Hugging Face processors store as ``resample``)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_INTERP = ("nearest", "bilinear", "bicubic", "lanczos")


def _interp(name: Any, default: str = "bilinear") -> str:
    name = str(getattr(name, "value", name)).lower()
    if name in ("random", ""):
        return default
    if name not in _INTERP:
        raise ModelSourceError(f"interpolation {name!r} is not one of {_INTERP}")
    return name


def _square(size: Any, what: str) -> int:
    if isinstance(size, (list, tuple)):
        size = [int(s) for s in size[-2:]]
        if len(set(size)) != 1:
            raise ModelSourceError(f"{what} {size} is not square; only square model inputs are implemented")
        return size[0]
    return int(size)


def from_timm_config(cfg: dict[str, Any]) -> PreprocessSpec:
    """timm's resolved data config (``timm.data.resolve_data_config({}, model=model)``) -> spec.

    ``crop_mode`` ``center`` (default) resizes the shorter side to ``floor(size / crop_pct)``,
    ``squash`` both sides; ``border`` (letterbox) is refused with :class:`ModelSourceError`.
    """
    size = _square(cfg["input_size"], "timm input_size")
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    mode = cfg.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise ModelSourceError(f"timm crop_mode {mode!r} (letterbox) is not implemented; only 'center' and 'squash'")
    return PreprocessSpec(
        input_size=size, resize_size=max(size, math.floor(size / crop_pct)), interpolation=_interp(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
        resize_mode="shorter" if mode == "center" else "squash", resize_rounding="floor", crop_rounding="round")


def from_torchvision_weights(weights: Any) -> PreprocessSpec:
    """A torchvision weights enum member -> spec of its ``transforms()`` (``ImageClassification``);
    ``None`` (no weights) -> the ImageNet default."""
    if weights is None:
        return PreprocessSpec()
    t = weights.transforms()
    crop = _square(t.crop_size, "torchvision crop_size")
    resize = t.resize_size[0] if isinstance(t.resize_size, (list, tuple)) else t.resize_size
    return PreprocessSpec(int(crop), int(resize), _interp(t.interpolation), tuple(float(v) for v in t.mean),
                          tuple(float(v) for v in t.std), resize_rounding="floor", crop_rounding="round")


def from_hf_processor(d: dict[str, Any]) -> PreprocessSpec:
    """A Hugging Face image processor's ``to_dict()`` (or ``preprocessor_config.json``) -> spec.

    ``rescale_factor`` other than 1/255 is folded into mean/std (``x * f`` = ``(x / 255) * 255 f``).
    Raises :class:`ModelSourceError` for what :func:`~edgetransfer.data.preprocess_image` cannot
    reproduce (no resize, non-square sizes, ``longest_edge`` sizes, a rescale offset).
    """
    kind = d.get("image_processor_type", "image processor")
    if not d.get("do_resize", True):
        raise ModelSourceError(f"{kind} does not resize (do_resize false); a fixed-size model input needs a resize")
    if d.get("do_rescale_offset") or d.get("rescale_offset"):
        raise ModelSourceError(f"{kind}: rescale_offset is not implemented")
    size = dict(d.get("size") or {})
    interp = _PIL_RESAMPLE.get(int(d.get("resample", 2)), "bilinear")
    crop = d.get("crop_size") if d.get("do_center_crop") else None
    mode = "shorter"
    if "height" in size and "width" in size:
        resize = _square((size["height"], size["width"]), f"{kind} size")
        mode = "squash"
        out = resize
        if crop:
            out = _square((crop["height"], crop["width"]), f"{kind} crop_size")
    elif "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if d.get("crop_pct") is not None and "crop_size" not in d:  # ConvNextImageProcessor (ConvNeXt, ResNet)
            if edge >= 384:
                resize, out, mode = edge, edge, "squash"  # "warping (no cropping) when evaluated at 384 or larger"
            else:
                resize, out = int(edge / float(d["crop_pct"])), edge
        else:
            resize = edge
            out = _square((crop["height"], crop["width"]), f"{kind} crop_size") if crop else edge
            if not crop:
                raise ModelSourceError(f"{kind}: a shortest_edge resize without a center crop gives no fixed input size")
    else:
        raise ModelSourceError(f"{kind}: size {size} is not implemented (needs height/width or shortest_edge)")
    f = float(d.get("rescale_factor", 1 / 255)) * 255.0 if d.get("do_rescale", True) else 255.0
    if d.get("do_normalize", False):  # processors that normalise say so (MobileViT has no such key: none)
        mean = [float(m) for m in d.get("image_mean", (0.5, 0.5, 0.5))]
        std = [float(s) for s in d.get("image_std", (0.5, 0.5, 0.5))]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if resize < out:
        raise ModelSourceError(f"{kind}: the crop ({out} px) is larger than the resized image ({resize} px); "
                               "zero padding is not implemented: set size / crop_size so that the crop fits")
    return PreprocessSpec(
        input_size=out, resize_size=resize, interpolation=interp,
        mean=tuple(m / f for m in mean), std=tuple(s / f for s in std),
        channel_order="BGR" if d.get("do_flip_channel_order") else "RGB",
        resize_mode=mode, resize_rounding="floor", crop_rounding="floor")
