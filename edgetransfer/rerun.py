"""Re-running ``edgetransfer run`` on its ``--out``, and bundle generations.

* **Resume**: after a stage completes, bundle.json's ``run_inputs.<stage>`` records a key: the
  sha256 of the stage's inputs (train: the data's file list with sizes and mtimes, every
  training option, the target; export: the export options, the target's opset and model.pt's
  sha256; quantize: recipe, budget, the target's preset and model.onnx's sha256). A re-run skips
  a stage whose key is unchanged and whose artifact still matches its manifest (sha256) — a
  crash in the benchmark after 20 minutes of training costs seconds on the next run, not a
  retrain. ``force`` redoes every stage. Build and benchmark always run.
* **Generations**: before a stage replaces an artifact, every artifact derived from the old one
  (transitively, by the manifests' ``parent_file`` / ``parent_sha256``), the golden set and the
  reports move to ``stale/<time>/``, and bundle.json's ``stale`` list records what went where — a
  bundle never presents an INT8 model, engine or report of an earlier model as current.
* **Another dataset**: an ``--out`` holding a bundle trained on other data (another folder or
  other class names) is refused unless ``force``, which moves the whole old bundle to ``stale/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .artifacts import Manifest, sha256_file
from .bundle import (BUNDLE_FILE, CALIBRATION_CACHE, CHECKPOINT, GOLDEN_DIR, LOCK_FILE, ONNX_FP32, ONNX_INT8, REPORT_JSON, REPORT_MD,
                     REPORT_PNG, STALE_DIR, TRT_CACHE, Bundle)
from .errors import ArtifactError, DataError
from .progress import log

STAGE_FILES = {"train": CHECKPOINT, "export": ONNX_FP32, "quantize": ONNX_INT8}
_DERIVED_ALWAYS = (GOLDEN_DIR, REPORT_JSON, REPORT_MD, REPORT_PNG)
_KEEP = {LOCK_FILE, STALE_DIR, CALIBRATION_CACHE.split("/")[0], TRT_CACHE}


def data_digest(*roots: str | os.PathLike | None) -> str:
    """sha256 over every file under ``roots`` (relative path, size, mtime in ns), in sorted order:
    changes when an image is added, removed, renamed or rewritten; not when the folder moves."""
    h = hashlib.sha256()
    for root in roots:
        if root is None:
            continue
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                st = p.stat()
                h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(b"\1")
    return h.hexdigest()


def key_of(**inputs: Any) -> str:
    """sha256 of the JSON of ``inputs`` (dataclasses as dicts, other objects by ``str``)."""
    def plain(v: Any) -> Any:
        return dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else str(v)

    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=plain).encode()).hexdigest()


def file_sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _manifests(directory: Path) -> dict[str, Manifest]:
    out = {}
    for mp in directory.glob("*.json"):
        try:
            m = Manifest.from_dict(json.loads(mp.read_text()))
        except (KeyError, TypeError, ValueError, AttributeError, OSError):  # a .json that is no manifest (metrics.json)
            continue
        if (directory / mp.name[: -len(".json")]).exists():
            out[mp.name[: -len(".json")]] = m
    return out


class Rerun:
    """Skip, redo and retire decisions for one ``run`` into ``out`` (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, force: bool = False):
        self.bundle, self.force = Bundle(Path(out)), force
        self.stamp = time.strftime("%Y%m%dT%H%M%S")
        self.records: list[dict[str, Any]] = []  # what this run moved to stale/ (kept in bundle.json across a re-train)

    # -- another dataset -------------------------------------------------------------------
    def check_dataset(self, data: Path, val: Path | None, class_names: list[str] | None = None) -> None:
        """Refuse (:class:`DataError`, exit 2) a bundle made from another data folder or other
        class names, unless ``force``: then the whole old bundle moves to ``stale/``."""
        b = self.bundle
        if not b.exists:
            return
        ds = b.info.get("dataset") or {}
        old_data, old_names = ds.get("data"), ds.get("class_names")
        root = Path(data) / "train" if (Path(data) / "train").is_dir() else Path(data)
        names = class_names or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        same = old_data == str(Path(data).resolve()) and old_names == names
        if same:
            return
        if not self.force:
            err = DataError(f"--out {b.dir} holds a bundle of another dataset ({old_data}, classes {old_names}); "
                            "choose another --out, or pass --force to move the old bundle to "
                            f"{b.dir / STALE_DIR}/ and start afresh")
            err.bundle_untouched = True  # the command line then leaves the old bundle's config.yaml alone
            raise err
        moved = self._move([p.name for p in b.dir.iterdir() if p.name not in _KEEP], "another dataset (--force)")
        log(f"[yellow]--force: the bundle of {old_data} moved to {b.dir / STALE_DIR / self.stamp} ({len(moved)} entries)")

    # -- resume ----------------------------------------------------------------------------
    def needed(self, stage: str, key: str) -> bool:
        """Whether ``stage`` must run (else it is skipped, and says so). When it runs, what derives
        from its current artifact is retired first."""
        b, f = self.bundle, STAGE_FILES[stage]
        rec = ((b.info.get("run_inputs") or {}).get(stage) or {}) if b.exists else {}
        why = None
        if self.force:
            why = "--force"
        elif rec.get("key") != key:
            why = "first run" if not rec else "its inputs changed"
        else:
            try:
                from .artifacts import read_manifest

                read_manifest(b.dir / f)  # sha256 verified
            except ArtifactError as exc:
                why = f"{exc}"
        if why is None:
            log(f"{stage}: skipped — {f} is current (inputs unchanged since {rec.get('at', '?')}; --force redoes it)")
            return False
        if (b.dir / f).exists():
            self.retire_derived(f, f"{f} is being replaced ({why})")
        return True

    def done(self, stage: str, key: str) -> None:
        b = self.bundle
        info = b.info
        info.setdefault("run_inputs", {})[stage] = {"key": key, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        stale = info.setdefault("stale", [])
        stale += [r for r in self.records if r not in stale]
        b.write_info(info)

    # -- generations -----------------------------------------------------------------------
    def retire_derived(self, file: str, reason: str) -> list[str]:
        """Move every artifact derived from ``file`` (transitively), the golden set and the
        reports to ``stale/<time>/``; unregister them from bundle.json. Returns the moved names."""
        d = self.bundle.dir
        ms = _manifests(d)
        sha = {file: ms[file].sha256 if file in ms else file_sha(d / file)}
        derived: list[str] = []
        frontier = [file]
        while frontier:
            parent = frontier.pop()
            for name, m in ms.items():
                if name in derived or name == file:
                    continue
                if m.parent_file == parent or (m.parent_sha256 and m.parent_sha256 == sha.get(parent)):
                    derived.append(name)
                    sha[name] = m.sha256
                    frontier.append(name)
        names = derived + [n for n in _DERIVED_ALWAYS if (d / n).exists()]
        moved = self._move(names + [n + ".json" for n in derived], reason)
        if moved:
            log(f"[yellow]{reason}: moved what derives from it to {d / STALE_DIR / self.stamp}: {', '.join(sorted(names))}")
        return moved

    def _move(self, names: list[str], reason: str) -> list[str]:
        d = self.bundle.dir
        names = [n for n in dict.fromkeys(names) if (d / n).exists()]
        if not names:
            return []
        dst = d / STALE_DIR / self.stamp
        dst.mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.move(str(d / n), str(dst / n))
        rec = {"moved_to": str(Path(STALE_DIR) / self.stamp), "files": names, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.records.append(rec)
        if (d / BUNDLE_FILE).is_file():
            info = self.bundle.info
            info["artifacts"] = [a for a in info.get("artifacts", []) if a["file"] not in names]
            info.setdefault("stale", []).append(rec)
            self.bundle.write_info(info)
        return names

