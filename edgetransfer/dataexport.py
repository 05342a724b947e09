"""``edgetransfer export-data BUNDLE DIR --split val|test``: a split recorded in bundle.json
(a list of workstation paths when the split was made from train/) written as an ImageFolder,
``DIR/<class>/<file>``, to copy to a board or give to another tool. Files are copied unchanged
(bytes, EXIF and all); two files of one class with the same name get ``_1``, ``_2`` ... The folder
appears atomically (written beside DIR, then renamed); an existing non-empty DIR is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

from .bundle import Bundle
from .errors import DataError


def export_split(bundle_dir: Path, out: Path, split: str = "val") -> dict[str, int]:
    """Copy the ``split`` images into ``out/<class>/``; returns {class: count}. Raises
    :class:`DataError` for an unknown or unrecorded split, missing images, or a non-empty ``out``."""
    if split not in ("train", "val", "test"):
        raise DataError(f"--split must be val, test or train (got {split!r})")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; give a new directory")
    folder = Bundle.open(bundle_dir).folder(split)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, int] = {n: 0 for n in folder.class_names}
    for s in folder.samples:
        cls = folder.class_names[s.label]
        d = tmp / cls
        d.mkdir(parents=True, exist_ok=True)
        dst, i = d / s.path.name, 0
        while dst.exists():
            i += 1
            dst = d / f"{s.path.stem}_{i}{s.path.suffix}"
        shutil.copy2(s.path, dst)
        counts[cls] += 1
    tmp.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return counts
