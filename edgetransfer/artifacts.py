"""The artifact contract: every artifact file ``X`` has a sidecar manifest ``X.json``.

A manifest records format, precision, sha256, parent sha256 (lineage), target, preprocessing,
class names in index order, input/output specs, producer, tool versions and free-form figures
(parity, quantization settings). Loading an artifact whose sha256 does not match its manifest is
an :class:`~edgetransfer.errors.ArtifactError`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import ArtifactError

MANIFEST_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (a directory artifact hashes its files in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(chunk_bytes), b""):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination directory; rename it onto ``final`` on success.

    On an exception the temporary file is removed and ``final`` is left as it was, so an
    interrupted write never leaves a truncated artifact behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or final.suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; artifacts are ordinary files
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory artifact (e.g. a Core ML ``.mlpackage``).

    Yields a not-yet-existing path next to ``final``; whatever is written there replaces
    ``final`` (an older directory is removed only after the new one is complete). On an
    exception the partial directory is removed and ``final`` is left as it was.
    """
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp = work / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise ArtifactError(f"nothing was written to {tmp} for {final}")
        if final.exists():
            os.replace(final, work / (final.name + ".old"))  # removed with ``work`` below
        os.replace(tmp, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def tool_versions(*modules: str) -> dict[str, str]:
    """Versions of the named top-level packages that are importable (missing ones are skipped)."""
    import importlib

    out = {"python": platform.python_version(), "edgetransfer": __version__}
    for m in modules:
        try:
            mod = importlib.import_module(m)
        except Exception:
            continue
        out[m] = str(getattr(mod, "__version__", "unknown"))
    return out


@dataclass
class TensorSpec:
    """One model input or output. ``shape`` uses a string (e.g. ``"batch"``) for dynamic axes."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"


@dataclass
class Manifest:
    """Sidecar manifest of one artifact (see module docstring for the contract)."""

    format: str
    precision: str
    file: str  # file name, relative to the manifest's directory
    sha256: str = ""
    size_bytes: int = 0
    parent_sha256: str | None = None
    parent_file: str | None = None
    target: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    producer: str = ""
    tool_versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # parity, quantization, training metrics...
    manifest_version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def manifest_path(artifact: str | os.PathLike) -> Path:
    return Path(str(artifact) + ".json")


def write_manifest(artifact: str | os.PathLike, manifest: Manifest) -> Manifest:
    """Hash ``artifact``, fill sha256/size/created_at, and write ``<artifact>.json`` atomically."""
    p = Path(artifact)
    if not p.exists():
        raise ArtifactError(f"cannot write a manifest for {p}: the artifact does not exist")
    manifest.file = p.name
    manifest.sha256 = sha256_file(p)
    manifest.size_bytes = (
        sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.is_dir() else p.stat().st_size
    )
    manifest.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(manifest_path(p), manifest.to_dict())
    return manifest


def read_manifest(artifact: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read ``<artifact>.json``; with ``verify`` check the artifact's sha256 against it.

    Raises :class:`ArtifactError` when the artifact or manifest is missing or the hash differs.
    """
    p = Path(artifact)
    mp = manifest_path(p)
    if not p.exists():
        raise ArtifactError(f"artifact {p} does not exist; re-run the stage that produces it")
    if not mp.is_file():
        raise ArtifactError(f"artifact {p} has no manifest {mp.name}; re-run the stage that produces it")
    try:
        m = Manifest.from_dict(json.loads(mp.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ArtifactError(f"manifest {mp} is not a valid manifest: {exc}") from exc
    if verify:
        actual = sha256_file(p)
        if actual != m.sha256:
            raise ArtifactError(
                f"artifact {p} does not match its manifest (sha256 {actual[:12]}… on disk, "
                f"{m.sha256[:12]}… in {mp.name}); the file was modified or replaced — re-run the stage "
                "that produces it"
            )
    return m


def float_nodes_text(details: dict[str, Any]) -> str:
    """'N node(s) kept in float (K of them Conv/Gemm/MatMul)' for an INT8 manifest's ``details``:
    ``num_excluded_nodes`` counts every node kept out of quantization (activations included),
    ``float_compute_nodes`` the compute nodes among them (absent in manifests before 2026-12-07)."""
    k = details.get("float_compute_nodes")
    return (f"{details.get('num_excluded_nodes', 0)} node(s) kept in float"
            + (f" ({k} of them Conv/Gemm/MatMul)" if k is not None else ""))
