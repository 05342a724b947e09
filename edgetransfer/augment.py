"""Training-time augmentation (numpy + Pillow), seeded per image so runs and resumed runs repeat.

One recipe, used for the extra cached feature views (``--views K``) and for ``--augment`` in the
loops that run the whole network: a random resized crop (scale 0.25-1 of the image area, aspect
ratio 3/4-4/3, torchvision's ``RandomResizedCrop`` sampling with 10 tries and a centre-crop
fallback) resized to ``input_size`` px with the spec's interpolation, then a horizontal flip with
probability 0.5. The scale floor is 0.25 rather than torchvision's 0.08: transfer sets are small
and the crops must still show the object. Normalisation is :func:`edgetransfer.data.preprocess_image`
itself, so augmented and plain inputs differ only in geometry.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Sequence

import numpy as np
from PIL import Image

from .data import _INTERPOLATION, PreprocessSpec, decode_rgb, preprocess_image

SCALE = (0.25, 1.0)
RATIO = (3 / 4, 4 / 3)


def augment_image(image: Image.Image, spec: PreprocessSpec, rng: np.random.Generator,
                  scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO, hflip: float = 0.5) -> np.ndarray:
    """RGB PIL image -> float32 (3, input_size, input_size), randomly cropped/flipped, normalised."""
    w, h = image.size
    area = w * h
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (x0, y0, x0 + cw, y0 + ch)
            break
    if box is None:  # centre crop at the clamped aspect ratio (torchvision's fallback)
        r = w / h
        cw, ch = (w, int(round(w / ratio[0]))) if r < ratio[0] else ((int(round(h * ratio[1])), h) if r > ratio[1] else (w, h))
        cw, ch = min(cw, w), min(ch, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        box = (x0, y0, x0 + cw, y0 + ch)
    s = spec.input_size
    image = image.resize((s, s), _INTERPOLATION[spec.interpolation], box=box)
    if rng.random() < hflip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return preprocess_image(image, replace(spec, resize_size=s))


def augment_file(path: str | os.PathLike, spec: PreprocessSpec, key: Sequence[int]) -> np.ndarray:
    """:func:`augment_image` of the file at ``path`` with ``numpy.random.default_rng(key)``: the
    same ``key`` (e.g. ``(seed, epoch, image_index)``) always gives the same array."""
    return augment_image(decode_rgb(path, spec.image), spec, np.random.default_rng([int(k) for k in key]))
