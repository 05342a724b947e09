"""ImageFolder scanning/validation and THE preprocessing implementation (numpy + Pillow).

One preprocessing function, :func:`preprocess_image`, serves training evaluation, feature
extraction, calibration and benchmarking, so an artifact is always fed exactly what its model
was trained on. It needs no torch (the device benchmark imports this module).
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from .errors import DataError
from .host import usable_cpus
from .imagepolicy import DEFAULT_POLICY, ImagePolicy, count_cases, is_image_file

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB image becomes a model input.

    Steps: decode and convert to 8-bit RGB by the image policy ``image``
    (:class:`~edgetransfer.imagepolicy.ImagePolicy`: EXIF orientation, 16-bit scaling, alpha over a
    background), resize the shorter side to ``resize_size`` px with
    ``interpolation`` (``resize_mode='squash'``: both sides to ``resize_size``, aspect ratio not
    kept), center-crop ``input_size`` x ``input_size`` px, scale to [0, 1], subtract
    ``mean`` and divide by ``std`` (per channel, RGB order), reorder the channels to
    ``channel_order`` (``BGR``: MobileViT's image processor), lay out as ``layout`` (NCHW),
    dtype float32. ``resize_size = round(input_size / crop_pct)`` (timm's eval transform; crop_pct
    0.875 is the classic ImageNet 224/256 recipe). ``resize_rounding``: the longer side after a
    shorter-side resize is ``round`` (edgetransfer's own models) or ``floor`` of ``resize_size *
    long / short`` (torchvision ``Resize`` and Hugging Face image processors); ``crop_rounding``:
    the crop offset is ``round((size - crop) / 2)`` (torchvision ``CenterCrop``) or ``floor``
    (Hugging Face ``center_crop``). :mod:`edgetransfer.preprocess` derives these from a model's
    own eval config.
    """

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    image: ImagePolicy = DEFAULT_POLICY
    resize_mode: str = "shorter"
    resize_rounding: str = "round"
    crop_rounding: str = "round"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise DataError(f"interpolation must be one of {sorted(_INTERPOLATION)} (got {self.interpolation!r})")
        if self.resize_size < self.input_size:
            raise DataError(f"resize_size ({self.resize_size}) must be >= input_size ({self.input_size})")
        if any(s <= 0 for s in self.std):
            raise DataError(f"std must be positive (got {self.std})")
        if self.channel_order not in ("RGB", "BGR") or self.layout != "NCHW" or self.dtype != "float32":
            raise DataError("only RGB or BGR, NCHW, float32 inputs are implemented")
        if self.resize_mode not in ("shorter", "squash") or {self.resize_rounding, self.crop_rounding} - {"round", "floor"}:
            raise DataError(f"resize_mode must be 'shorter' or 'squash' and resize_rounding / crop_rounding 'round' or 'floor' "
                            f"(got {self.resize_mode!r}, {self.resize_rounding!r}, {self.crop_rounding!r})")

    @classmethod
    def from_crop_pct(cls, input_size: int, crop_pct: float, **kw: Any) -> "PreprocessSpec":
        return cls(input_size=input_size, resize_size=int(round(input_size / crop_pct)), **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["image"] = self.image.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        d["image"] = ImagePolicy.from_dict(d.get("image"))
        return cls(**d)


def decode_rgb(path, policy: ImagePolicy | None = None) -> Image.Image:
    """Open any image Pillow can decode (JPEG, PNG, GIF first frame, ...; a path or a binary
    stream) as 8-bit RGB by ``policy`` (default: EXIF orientation applied, 16-bit scaled, alpha
    over white; :mod:`edgetransfer.imagepolicy`).

    Raises ``OSError``/``ValueError`` (from Pillow) when the file cannot be fully decoded; a
    truncated JPEG is an error, not a silently grey-padded image.
    """
    return (policy or DEFAULT_POLICY).decode(path)


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB PIL image -> float32 array of shape (3, input_size, input_size), normalised."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    r = spec.resize_size
    if spec.resize_mode == "squash":
        nw, nh = r, r
    elif spec.resize_rounding == "floor":  # torchvision / transformers: int(size * long / short)
        nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    else:
        scale = r / min(w, h)
        nw, nh = max(r, round(w * scale)), max(r, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), _INTERPOLATION[spec.interpolation])
    c = spec.input_size
    if spec.crop_rounding == "floor":
        left, top = (nw - c) // 2, (nh - c) // 2
    else:
        left, top = int(round((nw - c) / 2.0)), int(round((nh - c) / 2.0))
    image = image.crop((left, top, left + c, top + c))
    arr = np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.channel_order == "BGR":
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_file(path: str | os.PathLike, spec: PreprocessSpec) -> np.ndarray:
    return preprocess_image(decode_rgb(path, spec.image), spec)


@dataclass
class Sample:
    path: Path
    label: int
    cases: tuple[str, ...] = ()  # image-policy cases found when the file was scanned (imagepolicy.CASES)


@dataclass
class ImageFolder:
    """An indexed ImageFolder: ``root/<class>/<image>``; labels index ``class_names``."""

    root: Path
    class_names: list[str]
    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    ignored: list[str] = field(default_factory=list)  # files that are not images by extension (notes.txt)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([s.label for s in self.samples], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        c = {n: 0 for n in self.class_names}
        for s in self.samples:
            c[self.class_names[s.label]] += 1
        return c

    def image_cases(self) -> dict[str, int]:
        """Images per image-policy case (16bit, alpha, exif_oriented, cmyk ...; empty when not scanned)."""
        return count_cases(s.cases for s in self.samples)

    def subset(self, indices: Sequence[int]) -> "ImageFolder":
        return ImageFolder(self.root, list(self.class_names), [self.samples[i] for i in indices], list(self.skipped), list(self.ignored))


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def scan_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None, *, verify: bool = True) -> ImageFolder:
    """Index ``root/<class>/<file>``.

    ``class_names``: the class-index order decided at training time. When given, every class folder
    must be one of them (a folder unknown to training is an error naming it) and labels follow
    that order, whatever the folder order on disk; classes missing here are allowed.
    When ``None``, classes are the sorted sub-folder names.
    Files whose extension Pillow does not open (``notes.txt``) are listed in ``ignored``, not
    decoded. With ``verify``, every image file is fully decoded once (by the default image
    policy; each sample records its cases); files that fail are listed in ``skipped`` with the
    reason and left out. Raises :class:`DataError` for a missing root, no
    class folders, an empty class folder, or an unknown class.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a directory")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not _is_hidden(d))
    if not dirs:
        raise DataError(
            f"{root} has no class folders; an ImageFolder is laid out as {root}/<class_name>/<image files>"
        )
    if class_names is None:
        names = [d.name for d in dirs]
    else:
        names = list(class_names)
        unknown = [d for d in dirs if d.name not in names]
        if unknown:
            raise DataError(
                f"class folder {unknown[0]} is not a class of the training set ({', '.join(names)}); "
                "remove or rename it, or retrain with it"
            )
    index = {n: i for i, n in enumerate(names)}
    samples: list[Sample] = []
    skipped: list[dict[str, str]] = []
    candidates: list[tuple[Path, int]] = []
    ignored: list[str] = []
    for d in dirs:
        files = sorted(f for f in d.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(d).parts))
        images = [f for f in files if is_image_file(f)]
        ignored.extend(str(f) for f in files if not is_image_file(f))
        if not images:
            what = f"only non-image files ({', '.join(f.name for f in files[:3])})" if files else "empty"
            raise DataError(f"class folder {d} is {what}; add images to it or remove the folder")
        candidates.extend((f, index[d.name]) for f in images)

    def check(item: tuple[Path, int]) -> tuple[str | None, tuple[str, ...]]:
        try:
            return None, DEFAULT_POLICY.decode_case(item[0])[1]
        except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError...
            return f"{type(exc).__name__}: {exc}", ()

    if verify:
        with ThreadPoolExecutor(max_workers=min(8, usable_cpus())) as pool:
            reasons = list(pool.map(check, candidates))
    else:
        reasons = [(None, ())] * len(candidates)
    for (f, label), (reason, cases) in zip(candidates, reasons):
        if reason is None:
            samples.append(Sample(f, label, cases))
        else:
            skipped.append({"path": str(f), "reason": reason})
    per_class = defaultdict(int)
    for s in samples:
        per_class[s.label] += 1
    for d in dirs:
        if per_class[index[d.name]] == 0:
            raise DataError(f"class folder {d} has no decodable image (all {sum(1 for c in candidates if c[1] == index[d.name])} files failed); see the skipped list")
    return ImageFolder(root, names, samples, skipped, ignored)


def stratified_split(folder: ImageFolder, val_fraction: float, seed: int) -> tuple[ImageFolder, ImageFolder]:
    """Seeded, class-stratified split into (train, val). Each class keeps at least one image on
    each side; a class with fewer than 2 images is a :class:`DataError` naming it."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1) (got {val_fraction})")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(folder.samples):
        by_class[s.label].append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in range(len(folder.class_names)):
        idx = by_class.get(label, [])
        if len(idx) < 2:
            raise DataError(
                f"class '{folder.class_names[label]}' ({folder.root / folder.class_names[label]}) has "
                f"{len(idx)} image(s); a validation split needs at least 2 per class — add images or pass --val DIR"
            )
        idx = idx[:]
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val_idx.extend(sorted(idx[:n_val]))
        train_idx.extend(sorted(idx[n_val:]))
    return folder.subset(sorted(train_idx)), folder.subset(sorted(val_idx))


def resolve_splits(data: str | os.PathLike, val: str | os.PathLike | None = None, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[ImageFolder, ImageFolder, str]:
    """Find the training and validation ImageFolders for ``data``.

    ``val`` given: train on ``data`` (or ``data/train`` when it exists), validate on ``val``.
    Else ``data/train`` + ``data/val`` when ``data/val`` exists. Else a seeded class-stratified
    split of ``data``. Returns ``(train, val, how)``, ``how`` describing the choice.
    Validation classes unknown to training raise :class:`DataError` naming the folder.
    """
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"dataset folder {data} does not exist; pass an ImageFolder (DIR/<class>/<images>)")
    train_root = data / "train" if (data / "train").is_dir() else data
    if val is None and (data / "val").is_dir():
        val = data / "val"
    if val is not None:
        train = scan_image_folder(train_root)
        valf = scan_image_folder(val, class_names=train.class_names)
        return train, valf, f"train={train_root}, val={val}"
    full = scan_image_folder(train_root)
    tr, va = stratified_split(full, val_fraction, seed)
    return tr, va, f"seeded ({seed}) class-stratified split of {train_root}, {val_fraction:.0%} validation"


def iter_batches(samples: Sequence[Sample], spec: PreprocessSpec, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)``: x float32 (B, 3, S, S) preprocessed, y int64 (B,) labels."""
    workers = min(4, usable_cpus())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            arrays = list(pool.map(lambda s: preprocess_file(s.path, spec), chunk))
            yield np.stack(arrays), np.asarray([s.label for s in chunk], dtype=np.int64)


def load_arrays(samples: Sequence[Sample], spec: PreprocessSpec, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """All samples preprocessed at once: x float32 (N, 3, S, S), y int64 (N,)."""
    xs, ys = [], []
    for x, y in iter_batches(samples, spec, batch_size):
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0, 3, spec.input_size, spec.input_size), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def stratified_sample(folder: ImageFolder, n: int, seed: int, stratified: bool = True) -> list[Sample]:
    """Pick ``n`` samples (seeded). Stratified: an equal share per class, the remainder going to
    the classes with the most images; a class smaller than its share gives all it has and the
    others make up the difference. Returns fewer than ``n`` only when the folder is smaller."""
    rng = random.Random(seed)
    if not stratified:
        idx = list(range(len(folder.samples)))
        rng.shuffle(idx)
        return [folder.samples[i] for i in sorted(idx[:n])]
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(folder.samples):
        by_class[s.label].append(i)
    for v in by_class.values():
        rng.shuffle(v)
    chosen: list[int] = []
    pools = {k: list(v) for k, v in by_class.items()}
    remaining = n
    while remaining > 0 and any(pools.values()):
        active = sorted((k for k in pools if pools[k]), key=lambda k: (-len(pools[k]), k))
        share = max(1, remaining // len(active))
        for k in active:
            take = min(share, len(pools[k]), remaining)
            chosen.extend(pools[k][:take])
            pools[k] = pools[k][take:]
            remaining -= take
            if remaining == 0:
                break
    return [folder.samples[i] for i in sorted(chosen)]
