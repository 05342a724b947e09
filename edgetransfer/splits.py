"""The data roles of a run: train (fit), val (best epoch, the INT8 decision, parity checks) and
test (the report's headline figures, never seen by any decision).

Where each comes from, one rule (:func:`resolve_data_roles`):

* train: ``DIR/train/`` when it exists, else ``DIR`` itself (``DIR/<class>/<images>``);
* val: ``--val DIR``, else ``DIR/val/``, ``DIR/valid/`` or ``DIR/validation/`` (the synonyms timm's
  ``ImageDataset`` folder reader accepts); two of them at once is an error (say which with --val);
* test: ``--test DIR``, else ``DIR/test/``;
* a split that is missing is carved, seeded and class-stratified: val from train
  (``val_fraction`` of train's images per class); test from val when val is a folder
  (``test_fraction`` of val, default 0.5) or from train when both are missing (``test_fraction``
  of DIR's images, default 0.2: a 60/20/20 three-way split). ``test_fraction=0`` makes no test
  split (the report then says its figures are on val, an optimistic estimate).

Every folder found under DIR is logged with its role; a folder that is no split name (when DIR
has ``train/``) is logged as ignored, never silently. The roles are recorded in bundle.json
(:data:`edgetransfer.bundle.SPLIT_KEYS`).
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import ImageFolder, scan_image_folder
from .errors import DataError

VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test",)
TRAIN_NAMES = ("train",)
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.2  # of DIR's images, when neither val nor test exists
DEFAULT_TEST_FRACTION_OF_VAL = 0.5  # of val/, when only test is missing


@dataclass
class DataRoles:
    """The resolved splits: ``train``, ``val``, ``test`` (None: no test split) and ``roles``
    (one ``{"folder", "role", "note"}`` per folder found or carved split), ``how`` (one line)."""

    train: ImageFolder
    val: ImageFolder
    test: ImageFolder | None
    roles: list[dict[str, str]] = field(default_factory=list)
    how: str = ""
    carving: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for f in (self.train, self.val, self.test):
            out += [s for s in (f.skipped if f else []) if s not in out]
        return out


def carve(folder: ImageFolder, fraction: float, seed: int, *, what: str, min_keep: int = 1) -> tuple[ImageFolder, ImageFolder]:
    """Seeded, class-stratified split of ``folder`` into (kept, carved): per class
    ``round(n * fraction)`` images (at least 1, and ``min_keep`` left) are carved. A class with
    fewer than ``min_keep + 1`` images keeps them all (nothing carved from it) unless ``what`` is
    ``val``, where every class must reach validation: :class:`DataError` naming it."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the {what} fraction must be in (0, 1) (got {fraction})")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(folder.samples):
        by_class[s.label].append(i)
    kept: list[int] = []
    out: list[int] = []
    for label in range(len(folder.class_names)):
        idx = list(by_class.get(label, []))
        if len(idx) <= min_keep:
            if what == "val":
                raise DataError(
                    f"class '{folder.class_names[label]}' ({folder.root / folder.class_names[label]}) has "
                    f"{len(idx)} image(s); a validation split needs at least 2 per class — add images or pass --val DIR")
            kept += idx
            continue
        rng.shuffle(idx)
        n = min(len(idx) - min_keep, max(1, round(len(idx) * fraction)))
        out += idx[:n]
        kept += idx[n:]
    return folder.subset(sorted(kept)), folder.subset(sorted(out))


def _found(data: Path, names: tuple[str, ...]) -> list[Path]:
    return [data / n for n in names if (data / n).is_dir()]


def resolve_data_roles(data: str | os.PathLike, val: str | os.PathLike | None = None, test: str | os.PathLike | None = None, *,
                       val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float | None = None, seed: int = 0) -> DataRoles:
    """The train / val / test splits of ``data`` (see the module docstring for the rule).

    ``val_fraction`` in (0, 1); ``test_fraction`` in [0, 1) or None (0.5 of val/ when val is a
    folder, else 0.2 of DIR). Class names come from train (sorted folder names); a val/test class
    unknown to training raises :class:`DataError` naming the folder; so does DIR with a val/ or
    test/ folder but no train/, and two val synonyms at once."""
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"dataset folder {data} does not exist; pass an ImageFolder (DIR/<class>/<images>)")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1) (got {val_fraction})")
    if test_fraction is not None and not 0.0 <= test_fraction < 1.0:
        raise DataError(f"--test-fraction must be in [0, 1) (got {test_fraction}); 0 = no test split")
    roles: list[dict[str, str]] = []
    vals, tests = _found(data, VAL_NAMES), _found(data, TEST_NAMES)
    has_train = (data / "train").is_dir()
    if not has_train and (vals or tests):
        raise DataError(f"{data} has {', '.join(p.name + '/' for p in vals + tests)} but no train/: put the training images "
                        f"in {data / 'train'}/<class>/ (or pass the training folder as DIR and the others with --val/--test)")
    train_root = data / "train" if has_train else data
    if val is None and len(vals) > 1:
        raise DataError(f"{data} has {' and '.join(p.name + '/' for p in vals)}: say which one validates with --val DIR")
    val_dir = Path(val) if val is not None else (vals[0] if vals else None)
    test_dir = Path(test) if test is not None else (tests[0] if tests else None)
    train = scan_image_folder(train_root)
    roles.append({"folder": str(train_root), "role": "train", "note": "fits the model; calibration images come from here"})
    if has_train:
        for d in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if d.name in TRAIN_NAMES + VAL_NAMES + TEST_NAMES:
                if d not in (val_dir, test_dir, train_root):
                    roles.append({"folder": str(d), "role": "ignored", "note": f"{d.name}/ found, but an explicit option names the split"})
                continue
            roles.append({"folder": str(d), "role": "ignored",
                          "note": f"not a split name ({', '.join(TRAIN_NAMES + VAL_NAMES + TEST_NAMES)}); rename it to use it"})
    carving: dict[str, Any] = {"seed": seed, "val_fraction": None, "test_fraction": None, "val_from": None, "test_from": None}
    test_set = scan_image_folder(test_dir, class_names=train.class_names) if test_dir is not None else None
    if val_dir is not None:
        val_set = scan_image_folder(val_dir, class_names=train.class_names)
        roles.append({"folder": str(val_dir), "role": "val", "note": "picks the best epoch, decides INT8, parity checks"})
        if test_set is None:
            f = DEFAULT_TEST_FRACTION_OF_VAL if test_fraction is None else test_fraction
            if f > 0:
                val_set, test_set = carve(val_set, f, seed + 1, what="test")
                carving.update(test_fraction=f, test_from="val")
    else:
        if test_set is None:
            f = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
            if f > 0:
                train, test_set = carve(train, f, seed + 1, what="test", min_keep=2)
                carving.update(test_fraction=f, test_from="train")
        train, val_set = carve(train, val_fraction / (1 - (carving["test_fraction"] or 0.0)) if carving["test_from"] == "train"
                               else val_fraction, seed, what="val")
        carving.update(val_fraction=val_fraction, val_from="train")
        roles.append({"folder": str(train_root), "role": "val",
                      "note": f"carved: {val_fraction:.0%} of {train_root.name}/ per class (seed {seed})"})
    if test_set is not None and not len(test_set):
        test_set = None
    if test_dir is not None:
        roles.append({"folder": str(test_dir), "role": "test", "note": "the report's headline figures; no decision sees it"})
    elif test_set is not None:
        src = val_dir if carving["test_from"] == "val" else train_root
        roles.append({"folder": str(src), "role": "test",
                      "note": f"carved: {carving['test_fraction']:.0%} of {Path(src).name}/ per class (seed {seed + 1}); "
                              "the report's headline figures"})
    else:
        roles.append({"folder": "", "role": "test", "note": "none: the report's figures are on val (optimistic: val chose the "
                                                            "epoch and the INT8 model)"})
    how = "; ".join(f"{r['role']}={r['folder'] or '-'} ({r['note']})" for r in roles if r["role"] != "ignored")
    return DataRoles(train, val_set, test_set, roles, how, carving)
