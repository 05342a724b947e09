"""The embedded default dataset: scikit-learn's bundled handwritten digits (1,797 real 8x8
scans, 10 classes; UCI "Optical Recognition of Handwritten Digits") written out as an
ImageFolder of RGB PNGs, so the whole pipeline runs with no file from outside the repo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import require


def write_digits_imagefolder(root: Path, size: int = 32) -> Path:
    """Write ``root/<digit>/<index>.png`` (RGB, ``size`` x ``size`` px, bicubic upscale of the 8x8
    scans, 0..16 intensities mapped to white-on-black 0..255). Idempotent: an existing complete
    folder is reused. Returns ``root``."""
    datasets = require("sklearn.datasets", "demo", "the bundled digits dataset")
    root = Path(root)
    digits = datasets.load_digits()
    marker = root / ".complete"
    if marker.is_file() and marker.read_text().strip() == f"{len(digits.images)} {size}":
        return root
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        d = root / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        a = np.clip(img / 16.0 * 255.0, 0, 255).astype(np.uint8)
        Image.fromarray(a, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(d / f"{i:04d}.png")
    marker.write_text(f"{len(digits.images)} {size}")
    return root
