"""THE image policy: how a file's pixels become 8-bit RGB, the same in every path that decodes one
(training, feature cache, calibration, parity, golden, the accuracy pass, end-to-end latency on
the workstation and on a board). No torch.

What Pillow's ``Image.convert("RGB")`` alone gets wrong, and what this does instead:

* **EXIF orientation** (phone photos): a portrait JPEG tagged Orientation=6 is stored landscape;
  viewers, OpenCV and camera pipelines show it upright. Applied with ``ImageOps.exif_transpose``
  (default on; ``exif_orientation=False`` keeps the stored pixel order). pytorch/vision#7977.
* **16-bit** (mode ``I;16``/``I``, PNG and TIFF): ``convert`` clips every value above 255 to
  white; here a value ``v`` becomes ``round(v * 255 / 65535)`` (the full 16-bit range mapped onto
  8 bits). Float images (mode ``F``) are taken as [0, 1] when their maximum is <= 1, else clipped
  to [0, 255]. python-pillow/Pillow#5991.
* **Alpha** (RGBA, LA, PA, P with a transparent colour): composited over ``background`` (RGB,
  0-255) instead of dropping the alpha channel, which shows whatever colour is stored under the
  transparent pixels (usually black). python-pillow/Pillow#2574.
* **CMYK, palette (P), greyscale (L, 1), YCbCr, LAB, HSV**: Pillow's conversion to RGB.

Files whose extension is not one Pillow opens (``notes.txt``, ``labels.csv``) are not images: an
ImageFolder scan ignores them and counts them apart from undecodable images.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any, Iterable

import numpy as np
from PIL import Image, ImageColor, ImageFile, ImageOps

#: lower-case file extensions (with the dot) of the formats this Pillow can open
IMAGE_EXTENSIONS = frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

#: the cases :func:`ImagePolicy.decode_case` reports (a file can be in more than one)
CASES = ("rgb", "exif_oriented", "16bit", "float", "alpha", "cmyk", "palette", "grey", "other")

_ORIENTATION_TAG = 0x0112


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path``'s extension is one Pillow opens (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def parse_colour(value: str | Iterable[int]) -> tuple[int, int, int]:
    """``"white"``, ``"#00ff80"``, ``"0,128,255"`` or a 3-sequence -> an (R, G, B) tuple of 0-255 ints.
    Raises ``ValueError`` naming the accepted forms."""
    if not isinstance(value, str):
        t = tuple(int(v) for v in value)
    elif "," in value:
        t = tuple(int(v) for v in value.split(","))
    else:
        try:
            t = tuple(ImageColor.getrgb(value.strip()))[:3]
        except ValueError:
            t = ()
    if len(t) != 3 or not all(0 <= v <= 255 for v in t):
        raise ValueError(f"background colour {value!r}: give a colour name (white), #rrggbb or R,G,B with 0-255 values")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class ImagePolicy:
    """How an image file becomes 8-bit RGB (see the module docstring for each case).

    ``exif_orientation``: apply the EXIF Orientation tag (default True). ``background``: the RGB
    colour (0-255) transparent pixels are composited over (default white).
    """

    exif_orientation: bool = True
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        object.__setattr__(self, "background", parse_colour(self.background))

    def to_dict(self) -> dict[str, Any]:
        return {"exif_orientation": self.exif_orientation, "background": list(self.background),
                "sixteen_bit": "v * 255 / 65535", "alpha": "composited over background"}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ImagePolicy":
        d = d or {}
        return cls(exif_orientation=bool(d.get("exif_orientation", True)), background=tuple(d.get("background", (255, 255, 255))))

    def decode(self, source: str | os.PathLike | IO[bytes]) -> Image.Image:
        """A file path or binary stream -> an RGB ``PIL.Image`` (8 bits per channel).

        Raises ``OSError``/``ValueError`` (from Pillow) when the data cannot be fully decoded; a
        truncated JPEG is an error, not a silently grey-padded image."""
        return self.decode_case(source)[0]

    def decode_case(self, source: str | os.PathLike | IO[bytes]) -> tuple[Image.Image, tuple[str, ...]]:
        """:meth:`decode`, also returning the cases the image fell in (names from :data:`CASES`)."""
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with Image.open(source) as im:
            im.load()
            cases: list[str] = []
            orientation = im.getexif().get(_ORIENTATION_TAG, 1)
            if orientation not in (None, 1) and self.exif_orientation:
                im = ImageOps.exif_transpose(im)
                cases.append("exif_oriented")
            rgb, case = self.to_rgb(im)
            return rgb, tuple(cases + [case])

    def to_rgb(self, im: Image.Image) -> tuple[Image.Image, str]:
        """A decoded image in any mode -> (RGB image, its case)."""
        mode = im.mode
        if mode == "RGB":
            return im, "rgb"
        if mode.startswith("I;16") or mode == "I":
            a = np.asarray(im, dtype=np.float64) if mode == "I" else np.asarray(im.convert("I"), dtype=np.float64)
            g = np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
            return Image.fromarray(g, "L").convert("RGB"), "16bit"
        if mode == "F":
            a = np.asarray(im, dtype=np.float64)
            a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
            return Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L").convert("RGB"), "float"
        if mode == "P" and "transparency" in im.info:
            im, mode = im.convert("RGBA"), "RGBA"
        if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            rgba = im.convert("RGBA")
            base = Image.new("RGBA", rgba.size, self.background + (255,))
            return Image.alpha_composite(base, rgba).convert("RGB"), "alpha"
        case = {"CMYK": "cmyk", "P": "palette", "L": "grey", "1": "grey"}.get(mode, "other")
        return im.convert("RGB"), case


DEFAULT_POLICY = ImagePolicy()


def count_cases(case_lists: Iterable[Iterable[str]]) -> dict[str, int]:
    """Per-case image counts (only the cases that occur, in :data:`CASES` order)."""
    c = Counter(x for cases in case_lists for x in cases)
    return {k: c[k] for k in CASES if c[k]}
