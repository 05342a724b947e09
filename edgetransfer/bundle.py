"""The bundle: the one directory the stages share, and the only code that knows its layout.

Stages talk only through files in the bundle directory:

``bundle.json`` (dataset split, class names, target, artifact list), ``model.pt`` (checkpoint),
``model.onnx`` (fp32), ``model.int8.qdq.onnx`` (INT8 QDQ), ``model.fp16.onnx`` (fp16, on request), the
target's mobile formats (``model[.int8].tflite``, ``model[.int8].pte``, ``model.{fp16,int8w}.mlpackage``,
``model*.ort`` + ``ort.required_operators.config``), TensorRT engines ``model.<target>.<precision>.engine``
and ``build_engine.sh`` (the trtexec commands that build them on the device), ``golden/`` (golden images
and the fp32 model's logits, for ``edgetransfer selftest``), ``report.json`` / ``report.md`` /
``report.png`` (and ``devices/`` for the boards' combined report); every artifact has its
``<file>.json`` manifest (:mod:`edgetransfer.artifacts`). ``cache/calibration/`` holds calibration
tensor ranges, ``.trt-cache/`` TensorRT timing caches and OpenVINO/ORT EP caches.

Target resolution, one rule for every command: an explicit ``--target`` > the target recorded in
bundle.json (the last one a stage ran for) > :data:`DEFAULT_TARGET`. Every stage that makes
artifacts for a target (train, export, quantize, build) records it (:meth:`Bundle.record_target`),
so a later ``build``, ``benchmark`` or ``selftest`` without ``--target`` uses the target the bundle
was last made for. Measuring (benchmark, selftest) never edits bundle.json: a bundle copied to a
board may be read-only, and the remote benchmark keeps the board's copy identical to what it sent.

Torch-free: the device benchmark imports this module.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .artifacts import Manifest, atomic_write_json, manifest_path, read_manifest
from .errors import ArtifactError, DataError
from .types import Format

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .data import ImageFolder, PreprocessSpec, Sample
    from .targets import Target

DEFAULT_TARGET = "x86-cpu"

BUNDLE_FILE = "bundle.json"
CHECKPOINT = "model.pt"
LAST_CHECKPOINT = "last.pt"
METRICS_CSV = "metrics.csv"  # per-epoch training metrics
METRICS_JSON = "metrics.json"
RESOLVED_CONFIG = "config.yaml"  # the resolved options of `train` / `run` (timm writes args.yaml beside its run)
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.qdq.onnx"
ONNX_FP16 = "model.fp16.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
SUSTAINED_PNG = "sustained.png"  # --sustained: latency and temperature over time
APP_DIR = "app"  # edgetransfer app: the sample app for the board
LABELS_TXT = "labels.txt"  # one class name a line, the model's output order
DEVICES_DIR = "devices"  # remote benchmark: the boards' combined report
GOLDEN_DIR = "golden"
HF_DIR = "hf"  # a Hugging Face model's save_pretrained folder (config.json, safetensors, preprocessor config)
GOLDEN_FILE = "golden.json"
BUILD_SCRIPT = "build_engine.sh"
OPERATOR_CONFIG = "ort.required_operators.config"
CALIBRATION_CACHE = "cache/calibration"
TRT_CACHE = ".trt-cache"
LOCK_FILE = ".edgetransfer.lock"  # flock'ed by the command using the bundle (edgetransfer/locking.py)
STALE_DIR = "stale"  # artifacts of an earlier generation, moved aside when what they derive from was replaced
# the mobile formats' files per precision (the builders of edgetransfer.builders write them)
FORMAT_FILES: dict[str, dict[str, str]] = {
    "tflite": {"fp32": "model.tflite", "int8": "model.int8.tflite"},
    "pte": {"fp32": "model.pte", "int8": "model.int8.pte"},
    "mlpackage": {"fp16": "model.fp16.mlpackage", "int8": "model.int8w.mlpackage"},
}
# files with a ``.json`` beside them that are not artifact manifests
_NOT_MANIFESTS = {BUNDLE_FILE, REPORT_JSON, GOLDEN_FILE}

PARITY_MAX_IMAGES = 256  # export / fp16 parity checks run on at most this many evenly spaced validation images
# INT8 decisions (the ladder's accuracy budget, the ORT optimisations on/off gate, the mobile INT8 budget and
# conversion parity) run on at most this many: a decision's power grows with its sample (digits' 359 val images
# were cut to 256 before; one image is then 0.39 pt, more than a 0.28 pt step). 1024 images of 224 px are 617 MB
# of float32
DECISION_MAX_IMAGES = 1024
SPLIT_KEYS = {"train": "train_files", "val": "val_files", "test": "test_files"}  # bundle.json keys of the data roles


def engine_file(target_name: str, label: str) -> str:
    """``model.<target>.<label>.engine`` (label: fp32 / fp16 / int8 / best)."""
    return f"model.{target_name}.{label}.engine"


def ort_file(onnx_name: str) -> str:
    """The ``.ort`` file made from the bundle's ONNX file ``onnx_name``."""
    return str(Path(onnx_name).with_suffix(".ort"))


def subsample(samples: list["Sample"], max_samples: int | None) -> list["Sample"]:
    """At most ``max_samples`` evenly spaced samples, in order (all when ``None`` or 0)."""
    if max_samples and len(samples) > max_samples:
        step = len(samples) / max_samples
        return [samples[int(i * step)] for i in range(max_samples)]
    return list(samples)


def resolve_target_name(explicit: str | None = None, recorded: str | None = None) -> str:
    """The one target rule: ``explicit`` > ``recorded`` (bundle.json's) > :data:`DEFAULT_TARGET`."""
    return explicit or recorded or DEFAULT_TARGET


@dataclass(frozen=True)
class Bundle:
    """A bundle directory. ``Bundle(dir)`` works on any directory (a copy on a board may lack
    bundle.json); :meth:`open` requires bundle.json. Reads bundle.json afresh on every access, so
    two stages in one process always see each other's registrations."""

    dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path) -> "Bundle":
        """Raise :class:`ArtifactError` when ``directory`` has no bundle.json."""
        b = cls(Path(directory))
        if not b.json_path.is_file():
            raise ArtifactError(f"{directory} is not an edgetransfer bundle (no {BUNDLE_FILE}); create one with "
                                "'edgetransfer train' or 'edgetransfer run'")
        return b

    @classmethod
    def create(cls, directory: str | Path, info: dict[str, Any]) -> "Bundle":
        """Write a new bundle.json (atomically) into ``directory`` (created) and return the bundle."""
        b = cls(Path(directory))
        b.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(b.json_path, {"artifacts": [], **info})
        return b

    @property
    def json_path(self) -> Path:
        return self.dir / BUNDLE_FILE

    @property
    def exists(self) -> bool:
        return self.json_path.is_file()

    @property
    def info(self) -> dict[str, Any]:
        """bundle.json's content ({} when the directory has none)."""
        return json.loads(self.json_path.read_text()) if self.json_path.is_file() else {}

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.json_path, info)

    # -- files -----------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.dir / name

    checkpoint = property(lambda self: self.dir / CHECKPOINT)
    last_checkpoint = property(lambda self: self.dir / LAST_CHECKPOINT)
    onnx_fp32 = property(lambda self: self.dir / ONNX_FP32)
    onnx_int8 = property(lambda self: self.dir / ONNX_INT8)
    onnx_fp16 = property(lambda self: self.dir / ONNX_FP16)
    golden_dir = property(lambda self: self.dir / GOLDEN_DIR)
    calibration_cache = property(lambda self: self.dir / CALIBRATION_CACHE)
    trt_cache = property(lambda self: self.dir / TRT_CACHE)
    build_script = property(lambda self: self.dir / BUILD_SCRIPT)
    operator_config = property(lambda self: self.dir / OPERATOR_CONFIG)
    devices_dir = property(lambda self: self.dir / DEVICES_DIR)

    def require(self, name: str, how: str) -> tuple[Path, Manifest]:
        """``(path, manifest)`` of artifact ``name``; :class:`ArtifactError` saying ``how`` to make it
        when it is missing, or when it does not match its manifest (sha256)."""
        p = self.dir / name
        if not p.exists():
            raise ArtifactError(f"{self.dir} has no {name}; {how}")
        return p, read_manifest(p)

    # -- the artifact list -----------------------------------------------------------------
    def register(self, file: str) -> None:
        """Add ``file`` (validated against its manifest) to bundle.json's artifact list, atomically."""
        info = self.info if self.exists else {}
        if not info:
            raise ArtifactError(f"{self.dir} has no {BUNDLE_FILE}; cannot register {file}")
        m = read_manifest(self.dir / file)
        arts = [a for a in info.get("artifacts", []) if a["file"] != file]
        arts.append({"file": file, "format": m.format, "precision": m.precision, "sha256": m.sha256})
        order = {CHECKPOINT: 0, ONNX_FP32: 1}
        arts.sort(key=lambda a: order.get(a["file"], 2))
        info["artifacts"] = arts
        self.write_info(info)
        self.write_labels(m.class_names)

    def write_labels(self, class_names) -> None:
        """``labels.txt`` beside the artifacts: one class name a line, in the models' output order
        (what Android's and TFLite's label files hold). Rewritten when the classes differ."""
        from .artifacts import atomic_write_text

        text = "".join(f"{n}\n" for n in class_names)
        p = self.dir / LABELS_TXT
        if not p.is_file() or p.read_text() != text:
            atomic_write_text(p, text)

    def registered(self, fmt: Format | str | None = None) -> list[dict[str, Any]]:
        """bundle.json's artifact entries (``file``, ``format``, ``precision``, ``sha256``), optionally of one format."""
        arts = self.info.get("artifacts", [])
        return [a for a in arts if fmt is None or a["format"] == str(fmt)]

    def artifacts(self) -> list[tuple[Path, Manifest]]:
        """``(path, manifest)`` of every artifact, in bundle.json's order, then the artifacts with a
        manifest that bundle.json does not list, by file name: engines built on the device by
        build_engine.sh (which never edits bundle.json) or, in a directory without bundle.json, all. Manifests are parsed, not verified
        (the benchmark verifies sha256 per row). Raises :class:`ArtifactError` when there is none."""
        if not self.dir.is_dir():
            raise ArtifactError(f"bundle {self.dir} is not a directory; pass the --out directory of 'edgetransfer run'")
        has_json = self.exists
        listed = [a["file"] for a in self.info.get("artifacts", [])]
        unlisted = [mp.name[: -len(".json")] for mp in sorted(self.dir.glob("*.json")) if mp.name not in _NOT_MANIFESTS]
        out = []
        for f in listed + [u for u in unlisted if u not in listed]:
            p = self.dir / f
            if not (manifest_path(p).is_file() and p.exists()):
                continue
            try:
                m = Manifest.from_dict(json.loads(manifest_path(p).read_text()))
            except (KeyError, TypeError, ValueError):  # a .json that is no manifest
                continue
            if has_json and f not in listed and m.format != str(Format.ENGINE):
                continue  # with a bundle.json, only engines are taken unlisted (build_engine.sh never edits it)
            out.append((p, m))
        if not out:
            raise ArtifactError(f"bundle {self.dir} holds no artifact with a manifest; run 'edgetransfer run' or the stages first")
        return out

    # -- the dataset -----------------------------------------------------------------------
    @property
    def has_test(self) -> bool:
        """Whether bundle.json records a test split (bundles made before the data roles do not)."""
        return bool((self.info.get("dataset") or {}).get(SPLIT_KEYS["test"]))

    def folder(self, split: str) -> "ImageFolder":
        """The ``train``, ``val`` or ``test`` split recorded in bundle.json, labels indexing its class
        names. Raises :class:`DataError` when the images are not on this machine or the split is
        not recorded (a bundle made before the test split has none: check :attr:`has_test`)."""
        from .data import ImageFolder, Sample

        ds = self.info.get("dataset") or {}
        names = ds.get("class_names") or []
        files = ds.get(SPLIT_KEYS[split])
        if files is None:
            raise DataError(f"{self.json_path} records no {split} images; re-run 'edgetransfer train' here")
        missing = [f for f, _ in files if not Path(f).is_file()]
        if missing:
            raise DataError(f"images recorded in the bundle are missing on this machine (e.g. {missing[0]}); re-run 'edgetransfer train' here")
        idx = {n: i for i, n in enumerate(names)}
        return ImageFolder(Path(ds.get(f"{split}_root") or ""), names, [Sample(Path(f), idx[c]) for f, c in files])

    def validation(self, class_names: list[str], data: Path | None = None, *,
                   allow_missing_classes: bool = False) -> tuple["ImageFolder", str]:
        """The labelled validation set: ``data`` (an ImageFolder), else the list recorded in bundle.json.

        Labels always index ``class_names`` (the manifest's order), whatever order the class folders
        sort in on disk. A folder that is not a trained class is a :class:`DataError`; so is a trained
        class with no folder, unless ``allow_missing_classes``.
        """
        from .data import ImageFolder, Sample, scan_image_folder

        if data is not None:
            folder = scan_image_folder(data, class_names=class_names)
            missing = [n for n, c in folder.counts().items() if c == 0]
            if missing and not allow_missing_classes:
                raise DataError(f"validation folder {data} has no images of the trained class(es) {missing} (classes, in the "
                                f"model's order: {class_names}); add {Path(data) / missing[0]}/ with images, or pass "
                                "--allow-missing-classes to measure on the classes present")
            return folder, str(data)
        ds = self.info.get("dataset", {})
        files = ds.get("val_files")
        if files:
            missing = [f for f in files if not Path(f[0]).is_file()]
            if not missing:
                idx = {n: i for i, n in enumerate(class_names)}
                return ImageFolder(Path(ds.get("val_root", "")), list(class_names), [Sample(Path(f), idx[c]) for f, c in files]), ds.get("val_root", "")
            raise DataError(f"the validation images recorded in {self.json_path} are not on this machine (e.g. {missing[0][0]}); pass --data VAL_DIR")
        raise DataError(f"no validation data: pass --data VAL_DIR (an ImageFolder with the classes {class_names})")

    def parity_arrays(self, spec: "PreprocessSpec", max_images: int = PARITY_MAX_IMAGES) -> tuple["np.ndarray", "np.ndarray"]:
        """Preprocessed validation images for parity checks: float32 (N, 3, S, S) and int64 (N,)
        labels, N <= ``max_images`` evenly spaced over the validation split."""
        from .data import load_arrays

        return load_arrays(subsample(self.folder("val").samples, max_images), spec)

    def decision_arrays(self, spec: "PreprocessSpec") -> tuple["np.ndarray", "np.ndarray"]:
        """:meth:`parity_arrays` for the INT8 decisions: up to :data:`DECISION_MAX_IMAGES` validation
        images (all of a split that size or smaller)."""
        return self.parity_arrays(spec, DECISION_MAX_IMAGES)

    # -- the target ------------------------------------------------------------------------
    @property
    def recorded_target(self) -> str | None:
        return self.info.get("target")

    def resolve_target(self, explicit: "str | Target | None" = None) -> "Target":
        """The target a command runs for: ``explicit`` > bundle.json's ``target`` > :data:`DEFAULT_TARGET`."""
        from .targets import Target, load_target

        if isinstance(explicit, Target):
            return explicit
        return load_target(resolve_target_name(explicit, self.recorded_target))

    def record_target(self, target: "Target | str", stage: str) -> None:
        """Record that ``stage`` ran for ``target``: bundle.json's ``target`` becomes it (what a
        later command without --target uses) and ``stages[stage]`` keeps name and time."""
        if not self.exists:
            return
        name = target if isinstance(target, str) else target.name
        info = self.info
        info["target"] = name
        info.setdefault("stages", {})[stage] = {"target": name, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.write_info(info)

    # -- tensorrt engines ------------------------------------------------------------------
    def planned_engines(self, target: "Target") -> list[tuple[str, str]]:
        """``(engine file, precision)`` of the engines a TensorRT target's benchmark expects (one per
        reduced precision it lists) that the bundle does not hold."""
        from .types import Precision, Runtime

        if Runtime.TENSORRT not in target.runtimes:
            return []
        out = []
        for p in (Precision.FP16, Precision.INT8):
            if target.supports(p) and not (self.dir / engine_file(target.name, str(p))).is_file():
                out.append((engine_file(target.name, str(p)), str(p)))
        return out


def as_bundle(bundle: "Bundle | str | Path") -> Bundle:
    return bundle if isinstance(bundle, Bundle) else Bundle(Path(bundle))


def names() -> Iterable[str]:
    """Every fixed file name of the bundle layout (the layering test checks that no other module spells them)."""
    yield from (BUNDLE_FILE, CHECKPOINT, LAST_CHECKPOINT, ONNX_FP32, ONNX_INT8, ONNX_FP16, REPORT_JSON, REPORT_MD,
                REPORT_PNG, SUSTAINED_PNG, LABELS_TXT, GOLDEN_FILE, BUILD_SCRIPT, OPERATOR_CONFIG, CALIBRATION_CACHE)
    for files in FORMAT_FILES.values():
        yield from files.values()
