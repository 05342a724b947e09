"""Golden self-test: a handful of images travel inside the bundle with the fp32 model's logits.

``write_golden`` (run by the pipeline right after the ONNX export) copies ``count`` validation
images into ``BUNDLE/golden/`` and writes ``golden/golden.json``: for each image its sha256, label,
the fp32 reference's logits (float32, exact in JSON) and a fingerprint of the preprocessed input
(per-channel mean and overall std). ``selftest`` (``edgetransfer selftest BUNDLE`` on the device)
decodes and preprocesses the same files with the manifest's recipe, runs every artifact on every
runtime the target lists, and checks the logits against the reference within the artifact's
precision tolerance (:data:`edgetransfer.parity.TOLERANCES`). A mismatch in the input
fingerprint points at decoding/preprocessing (Pillow build, colour order); matching inputs with
diverging logits point at the runtime or the artifact.

Images are chosen class-stratified and, within a class, among those the reference classifies
correctly with the largest top-1 margin, so an INT8 artifact (held to top-1 agreement only) flips
one only when something is really wrong.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import GOLDEN_DIR, GOLDEN_FILE
from ..artifacts import Manifest, atomic_path, atomic_write_json, read_manifest, sha256_file
from ..data import PreprocessSpec, Sample, load_arrays, preprocess_file
from ..errors import ArtifactError, MissingExtraError
from ..parity import TOLERANCES, Tolerance, judge
from ..runtime.base import deactivate_quietly
from ..runtime import get_runner_class
from ..targets import Target
from ..types import Runtime, Status

GOLDEN_VERSION = 1
DEFAULT_COUNT = 8
MAX_CANDIDATES = 256
INPUT_ATOL = 1e-3  # per-channel mean / std of the preprocessed input, in normalised units


def input_fingerprint(x: np.ndarray) -> dict[str, Any]:
    """(3, S, S) float32 -> ``{"channel_mean": [3 floats], "std": float}`` (catches RGB/BGR swaps,
    wrong mean/std, a different resize or crop)."""
    return {"channel_mean": [float(v) for v in x.reshape(x.shape[0], -1).mean(1)], "std": float(x.std())}


def select_golden(logits: np.ndarray, labels: np.ndarray, count: int) -> list[int]:
    """Indices of ``count`` images: round-robin over classes; within a class, correct predictions
    first, by decreasing top-1 margin (top-1 minus top-2 logit)."""
    srt = np.sort(logits, axis=1)
    margin = srt[:, -1] - srt[:, -2] if logits.shape[1] > 1 else srt[:, -1]
    correct = logits.argmax(1) == labels
    queues = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        queues[int(c)] = sorted(idx.tolist(), key=lambda i: (not correct[i], -margin[i]))
    chosen: list[int] = []
    while len(chosen) < count and any(queues.values()):
        for c in sorted(queues):
            if queues[c] and len(chosen) < count:
                chosen.append(queues[c].pop(0))
    return chosen


def _reference_runner(path: Path, manifest: Manifest):
    from ..runtime.base import runtimes_for

    for rt in runtimes_for(manifest.format):
        cls = get_runner_class(manifest.format, rt)
        if cls.is_available():
            return cls(path, manifest)
    raise MissingExtraError(runtimes_for(manifest.format)[0].value, "device", f"computing golden logits of {path.name}")


def write_golden(bundle: Path, reference: Path, samples: Sequence[Sample], count: int = DEFAULT_COUNT) -> Path:
    """Write ``bundle/golden/`` from ``samples`` (labelled validation images) and the logits of
    the fp32 ``reference`` artifact (sha256-verified). Returns the path of golden.json.
    Replaces an earlier golden set; golden.json is written last (atomically), so a half-written
    set is never taken for a complete one."""
    bundle, reference = Path(bundle), Path(reference)
    m = read_manifest(reference)
    if m.precision != "fp32":
        raise ArtifactError(f"golden logits must come from an fp32 artifact; {reference.name} is {m.precision}")
    if not samples:
        raise ArtifactError("no validation images to take golden images from")
    spec = PreprocessSpec.from_dict(m.preprocessing)
    cand = list(samples)
    if len(cand) > MAX_CANDIDATES:
        step = len(cand) / MAX_CANDIDATES
        cand = [cand[int(i * step)] for i in range(MAX_CANDIDATES)]
    x, y = load_arrays(cand, spec)
    with _reference_runner(reference, m) as runner:
        logits = np.concatenate([np.asarray(runner(np.ascontiguousarray(x[i : i + 32])), np.float32) for i in range(0, len(x), 32)])
        rt = str(runner.runtime)
    picked = select_golden(logits, y, count)
    gdir = bundle / GOLDEN_DIR
    gdir.mkdir(parents=True, exist_ok=True)
    old = gdir / GOLDEN_FILE
    if old.exists():
        old.unlink()
    for f in gdir.iterdir():
        if f.is_file():
            f.unlink()
    images = []
    for k, i in enumerate(picked):
        s = cand[i]
        name = f"{k:02d}_{m.class_names[s.label]}{s.path.suffix.lower()}"
        with atomic_path(gdir / name) as tmp:
            shutil.copyfile(s.path, tmp)
        images.append({"file": name, "sha256": sha256_file(gdir / name), "label": int(s.label),
                       "class_name": m.class_names[s.label], "source": str(s.path),
                       "logits": [float(v) for v in logits[i]], "input": input_fingerprint(x[i])})
    doc = {
        "golden_version": GOLDEN_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": {"file": reference.name, "sha256": m.sha256, "format": m.format, "precision": m.precision, "runtime": rt},
        "class_names": list(m.class_names),
        "preprocessing": m.preprocessing,
        "input_atol": INPUT_ATOL,
        "images": images,
    }
    atomic_write_json(gdir / GOLDEN_FILE, doc)
    return gdir / GOLDEN_FILE


def read_golden(bundle: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """golden.json plus the preprocessed golden inputs float32 (G, 3, S, S) and expected logits
    float32 (G, C). Raises :class:`ArtifactError` when the set is missing or an image changed."""
    gdir = Path(bundle) / GOLDEN_DIR
    gp = gdir / GOLDEN_FILE
    if not gp.is_file():
        raise ArtifactError(f"{bundle} has no golden set ({GOLDEN_DIR}/{GOLDEN_FILE}); re-run 'edgetransfer export' "
                            "(or 'edgetransfer run') to write it")
    doc = json.loads(gp.read_text())
    spec = PreprocessSpec.from_dict(doc["preprocessing"])
    xs = []
    for im in doc["images"]:
        p = gdir / im["file"]
        if not p.is_file() or sha256_file(p) != im["sha256"]:
            raise ArtifactError(f"golden image {p} is missing or was modified (sha256 differs from {gp.name}); copy the bundle again")
        xs.append(preprocess_file(p, spec))
    return doc, np.stack(xs), np.asarray([im["logits"] for im in doc["images"]], np.float32)


def _check_row(path: Path, manifest: Manifest, runtime: Runtime, target: Target | None, x: np.ndarray, expected: np.ndarray,
               threads: int) -> dict[str, Any]:
    tol = TOLERANCES.get(manifest.precision, TOLERANCES["fp32"])
    row: dict[str, Any] = {"name": path.name, "format": manifest.format, "precision": manifest.precision, "runtime": str(runtime),
                           "status": "", "error": None, "tolerance": dict(tol)}
    try:
        cls = get_runner_class(manifest.format, runtime)
    except Exception as exc:
        return {**row, "status": str(Status.UNAVAILABLE), "error": str(exc)}
    if not cls.is_available():
        return {**row, "status": str(Status.UNAVAILABLE), "error": cls.unavailable_reason()}
    runner = None
    try:
        read_manifest(path)
        runner = cls(path, manifest, threads=threads, options=cls.options_for(target, manifest, None))
        try:
            runner.activate()
        except MissingExtraError as exc:
            return {**row, "status": str(Status.UNAVAILABLE), "error": str(exc)}
        got = np.concatenate([np.asarray(runner(np.ascontiguousarray(x[i : i + 1])), np.float32) for i in range(len(x))])
        row["execution_provider"] = runner.execution_provider
        result = judge(expected, got, Tolerance(**tol), what=f"{path.name} on {runtime} vs the golden logits")
        stats = result.stats
        per_image = np.abs(got.astype(np.float64) - expected).max(1)
        row.update(max_abs=stats.max_abs, mean_abs=stats.mean_abs, agreement=stats.agreement, num_images=stats.num_samples,
                   per_image_max_abs=[float(v) for v in per_image],
                   predicted=[int(v) for v in got.argmax(1)], expected=[int(v) for v in expected.argmax(1)])
        passed, problems = result.passed, result.problems
        if manifest.precision == "int8":  # INT8 moves borderline images by design: the sample-sized flip gate
            from ..gates import flip_gate

            gate = flip_gate(expected, got, name=f"{path.name} on {runtime} vs the golden logits")
            row["gate"] = gate.to_dict()
            passed, problems = gate.passed, ([] if gate.passed else [gate.reason])
        row["status"] = "pass" if passed else "fail"
        if not passed:
            row["error"] = "out of tolerance: " + "; ".join(problems)
    except Exception as exc:
        row.update(status=str(Status.FAILED), error=f"{type(exc).__name__}: {exc}")
    finally:
        deactivate_quietly(runner)
    return row


def selftest(bundle: Path, target: Target, *, threads: int = 0) -> dict[str, Any]:
    """Check every artifact x runtime of ``bundle`` against the golden logits.

    Returns ``{"passed": bool, "input_ok": bool, "input_max_diff": float, "rows": [...], ...}``;
    ``passed`` is True when no row failed and at least one row ran. Rows: status ``pass`` /
    ``fail`` (out of tolerance) / ``failed`` (error) / ``unavailable`` (runtime not installed).
    """
    from .benchmark import discover_artifacts, plan_rows

    bundle = Path(bundle)
    doc, x, expected = read_golden(bundle)
    arts = discover_artifacts(bundle)
    got_fp = [input_fingerprint(xi) for xi in x]
    diffs = [max(max(abs(a - b) for a, b in zip(g["channel_mean"], im["input"]["channel_mean"])), abs(g["std"] - im["input"]["std"]))
             for g, im in zip(got_fp, doc["images"])]
    input_max = float(max(diffs)) if diffs else 0.0
    input_ok = input_max <= float(doc.get("input_atol", INPUT_ATOL))
    plan, _ = plan_rows(arts, target)
    rows = []
    for p, m, rt in plan:
        if m.class_names != doc["class_names"]:
            rows.append({"name": p.name, "format": m.format, "precision": m.precision, "runtime": str(rt), "status": "fail",
                         "error": f"class names {m.class_names} differ from the golden set's {doc['class_names']}"})
            continue
        rows.append(_check_row(p, m, rt, target, x, expected, threads))
    ran = [r for r in rows if r["status"] in ("pass", "fail", str(Status.FAILED))]
    bad = [r for r in rows if r["status"] in ("fail", str(Status.FAILED))]
    notes = []
    if not input_ok:
        notes.append(f"the preprocessed golden inputs differ from the reference host's by up to {input_max:.3g} "
                     f"(tolerance {doc.get('input_atol', INPUT_ATOL)}): decoding or preprocessing differs on this machine "
                     "(Pillow/libjpeg build, resize filter, colour order)")
    if not ran:
        notes.append("no artifact could run here: install a runtime, e.g. pip install 'edgetransfer[device]'")
    ref = doc["reference"]
    current = {p.name: m.sha256 for p, m in arts}
    if ref["file"] in current and current[ref["file"]] != ref["sha256"]:
        notes.append(f"the golden logits come from an earlier {ref['file']} (sha256 {ref['sha256'][:12]}…, now "
                     f"{current[ref['file']][:12]}…): re-run 'edgetransfer export' to refresh golden/")
    return {"bundle": str(bundle), "target": target.name, "golden_images": len(doc["images"]), "reference": doc["reference"],
            "input_ok": input_ok, "input_max_diff": input_max, "passed": bool(ran) and not bad, "rows": rows, "notes": notes}
