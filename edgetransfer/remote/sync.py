"""Send a bundle and its validation images to a board: only what changed, resumable, read-only
on this side.

Remote layout (``<workdir>`` from the inventory)::

    <workdir>/bundles/<bundle name>-<8 hex of its local path>/
        bundle.json                 the local one, validation paths rewritten for the board
        model.onnx, model.onnx.json ... every artifact bundle.json lists, with its manifest
        val/000000-<name>.png ...   the validation images (the ``--max-samples`` subset only)
        data/<class>/<file>         or the ImageFolder given with --data

What is sent: a file whose sha256 on the board (``sha256sum`` there) differs from the local one
(the artifact's manifest sha256, checked against the local file first). How: into
``.<name>.<sha256[:16]>.part`` beside its final name, continued from its current size when a
previous run broke off, then every part is hashed on the board and renamed into place only when
it matches. Local files are only ever opened for reading.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artifacts import read_manifest, sha256_file
from ..bundle import BUNDLE_FILE, Bundle, subsample
from ..data import scan_image_folder
from ..errors import RemoteError, TransferError
from .inventory import Device
from .ssh import asyncssh, error_reason, is_connection_lost, run, shell_join

CHUNK_BYTES = 256 * 1024
PARALLEL_FILES = 8


def safe_name(name: str) -> str:
    """A file name with only ``[A-Za-z0-9._-]`` (others become ``_``), never hidden."""
    s = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return s or "_"


@dataclass(frozen=True)
class SendItem:
    """One file for the board: ``rel`` (POSIX path under the remote bundle directory), its
    sha256 and size in bytes, from ``local`` or from generated ``data``."""

    rel: str
    sha256: str
    size: int
    local: Path | None = None
    data: bytes | None = None

    @classmethod
    def from_bytes(cls, rel: str, data: bytes) -> "SendItem":
        return cls(rel, hashlib.sha256(data).hexdigest(), len(data), data=data)


@dataclass
class BundlePlan:
    """What a bundle needs on a board (built once, locally, before any connection)."""

    bundle: Path
    key: str  # remote directory name
    items: list[SendItem]  # artifacts, manifests, images (bundle.json is made per board)
    bundle_info: dict[str, Any]
    val_files: list[tuple[str, str]]  # (rel, class name) in the local bundle's order
    data_mode: bool  # True: the user's --data ImageFolder goes to data/, passed as --data
    num_val: int
    test_files: list[tuple[str, str]] = field(default_factory=list)  # the bundle's test split, sent beside val

    def items_for(self, remote_dir: str) -> list[SendItem]:
        """All items, with bundle.json rewritten for ``remote_dir`` (absolute, on the board)."""
        info = json.loads(json.dumps(self.bundle_info))
        ds = info.setdefault("dataset", {})
        ds.pop("train_files", None)  # local paths; the board never trains
        if not self.data_mode:
            ds["val_files"] = [[posixpath.join(remote_dir, rel), c] for rel, c in self.val_files]
            ds["val_root"] = posixpath.join(remote_dir, "val")
            if self.test_files:  # the report's headline split (edgetransfer.splits): measured on the board too
                ds["test_files"] = [[posixpath.join(remote_dir, rel), c] for rel, c in self.test_files]
                ds["test_root"] = posixpath.join(remote_dir, "test")
            else:
                ds.pop("test_files", None)
        info["sent_from"] = {"bundle": str(self.bundle), "note": "dataset paths rewritten for this board by edgetransfer"}
        bj = SendItem.from_bytes(BUNDLE_FILE, (json.dumps(info, indent=2) + "\n").encode())
        return self.items + [bj]


def plan_bundle(bundle: Path, data: Path | None = None, max_samples: int | None = None) -> BundlePlan:
    """Everything of ``bundle`` a board needs, with hashes.

    Raises :class:`ArtifactError` when an artifact does not match its manifest (it is not sent)
    and :class:`DataError` when the validation images are not on this machine."""
    b = Bundle.open(bundle)
    bundle, info = b.dir, b.info
    arts = b.artifacts()
    items: list[SendItem] = []
    for p, _ in arts:
        m = read_manifest(p, verify=True)  # a corrupted local artifact is an error here, not on the board
        mp = Path(str(p) + ".json")
        items.append(SendItem(mp.name, sha256_file(mp), mp.stat().st_size, local=mp))
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                items.append(SendItem(f.relative_to(bundle).as_posix(), sha256_file(f), f.stat().st_size, local=f))
        else:
            items.append(SendItem(p.name, m.sha256, p.stat().st_size, local=p))
    class_names = arts[0][1].class_names
    val_files: list[tuple[str, str]] = []
    test_files: list[tuple[str, str]] = []
    if data is not None:
        folder = scan_image_folder(data, class_names=class_names)
        for s in folder.samples:
            rel = "data/" + Path(s.path).relative_to(folder.root).as_posix()
            items.append(SendItem(rel, sha256_file(s.path), Path(s.path).stat().st_size, local=Path(s.path)))
        n = len(folder.samples)
    else:
        folder, _ = b.validation(class_names, None)
        samples = subsample(folder.samples, max_samples)
        for i, s in enumerate(samples):
            rel = f"val/{i:06d}-{safe_name(Path(s.path).name)}"
            items.append(SendItem(rel, sha256_file(s.path), Path(s.path).stat().st_size, local=Path(s.path)))
            val_files.append((rel, class_names[s.label]))
        n = len(samples)
        if b.has_test:
            for i, s in enumerate(subsample(b.folder("test").samples, max_samples)):
                rel = f"test/{i:06d}-{safe_name(Path(s.path).name)}"
                items.append(SendItem(rel, sha256_file(s.path), Path(s.path).stat().st_size, local=Path(s.path)))
                test_files.append((rel, class_names[s.label]))
    key = f"{safe_name(bundle.resolve().name)}-{hashlib.sha256(str(bundle.resolve()).encode()).hexdigest()[:8]}"
    return BundlePlan(bundle, key, items, info, val_files, data is not None, n, test_files)


@dataclass
class TransferStats:
    """Bytes and files of one sync. ``bytes_resumed``: bytes already on the board in partial
    files from an earlier, broken run (not sent again)."""

    files_total: int = 0
    files_sent: int = 0
    files_unchanged: int = 0
    files_resumed: int = 0
    bytes_total: int = 0
    bytes_sent: int = 0
    bytes_unchanged: int = 0
    bytes_resumed: int = 0
    seconds: float = 0.0
    sent: list[str] = field(default_factory=list)

    def to_dict(self, max_names: int = 100) -> dict[str, Any]:
        """For the report: the names of at most ``max_names`` sent files (``sent_more`` counts the rest)."""
        d = asdict(self)
        d["mib_sent"] = self.bytes_sent / 2**20
        d["sent"], d["sent_more"] = self.sent[:max_names], max(0, len(self.sent) - max_names)
        return d

    def summary(self) -> str:
        s = f"sent {self.files_sent} file(s), {self.bytes_sent / 2**20:.2f} MiB in {self.seconds:.1f} s; {self.files_unchanged} unchanged"
        if self.files_resumed:
            s += f"; resumed {self.files_resumed} ({self.bytes_resumed / 2**20:.2f} MiB were already there)"
        return s


def part_name(rel: str, sha256: str) -> str:
    d, b = posixpath.split(rel)
    return posixpath.join(d, f".{b}.{sha256[:16]}.part")


def _unescape_sha256sum(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        if name[i] == "\\" and i + 1 < len(name):
            out.append({"n": "\n", "\\": "\\", "r": "\r"}.get(name[i + 1], name[i + 1]))
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def parse_sha256sum(output: str) -> dict[str, str]:
    """``sha256sum`` output -> ``{name: hex}`` (GNU's ``\\`` escaping of odd names undone)."""
    out = {}
    for line in output.splitlines():
        esc = line.startswith("\\")
        if esc:
            line = line[1:]
        m = re.match(r"^([0-9a-f]{64}) [ *](.*)$", line)
        if m:
            out[_unescape_sha256sum(m.group(2)) if esc else m.group(2)] = m.group(1)
    return out


async def remote_hashes(conn, base: str, rels: list[str]) -> dict[str, str]:
    """sha256 of the files ``rels`` under ``base`` on the board (missing files are left out)."""
    if not rels:
        return {}
    cmd = f"cd -- {shell_join([base])} && xargs -0 -r sha256sum --"
    r = await run(conn, cmd, input="\0".join(rels) + "\0")
    if r.exit_status in (126, 127) or (r.exit_status not in (0, 123) and not r.stdout):
        raise RemoteError(f"cannot hash files on the board (exit {r.exit_status}: {(r.stderr or '').strip()[-300:]}); "
                          "it needs sha256sum and xargs (coreutils/findutils or busybox)")
    return parse_sha256sum(r.stdout or "")


async def _upload(sftp, it: SendItem, remote_dir: str, stats: TransferStats, progress: Callable[[int], None] | None) -> None:
    a = asyncssh()
    part = posixpath.join(remote_dir, part_name(it.rel, it.sha256))
    try:
        offset = int((await sftp.stat(part)).size or 0)
    except a.SFTPNoSuchFile:
        offset = 0
    if offset > it.size:
        await sftp.remove(part)
        offset = 0
    if offset:
        stats.files_resumed += 1
        stats.bytes_resumed += offset
    src = open(it.local, "rb") if it.local is not None else None  # read-only: the local bundle is never written
    try:
        async with sftp.open(part, "r+b" if offset else "wb") as fh:
            pos = offset
            if src is not None:
                src.seek(offset)
            while pos < it.size:
                chunk = src.read(CHUNK_BYTES) if src is not None else it.data[pos:pos + CHUNK_BYTES]  # type: ignore[index]
                if not chunk:
                    raise TransferError(f"{it.local} shrank while it was being sent; do not modify the bundle during a transfer")
                await fh.write(chunk, pos)
                pos += len(chunk)
                stats.bytes_sent += len(chunk)
                if progress:
                    progress(len(chunk))
    finally:
        if src is not None:
            src.close()


async def sync(conn, sftp, device: Device, items: list[SendItem], remote_dir: str,
               progress: Callable[[int], None] | None = None) -> TransferStats:
    """Bring ``remote_dir`` on the board up to ``items``; returns what was sent.

    Raises :class:`TransferError` when the connection breaks (re-running resumes) or a file
    arrives corrupted (its part is deleted, re-running sends it again)."""
    a = asyncssh()
    t0 = time.perf_counter()
    stats = TransferStats(files_total=len(items), bytes_total=sum(i.size for i in items))
    current = ""
    try:
        await sftp.makedirs(remote_dir, exist_ok=True)
        have = await remote_hashes(conn, remote_dir, [i.rel for i in items])
        todo = [i for i in items if have.get(i.rel) != i.sha256]
        stats.files_unchanged = len(items) - len(todo)
        stats.bytes_unchanged = sum(i.size for i in items if have.get(i.rel) == i.sha256)
        for d in sorted({posixpath.dirname(i.rel) for i in todo} - {""}):
            await sftp.makedirs(posixpath.join(remote_dir, d), exist_ok=True)
        # big files one at a time (a broken link leaves one part), small ones several at once
        big = [i for i in todo if i.size > 4 * CHUNK_BYTES]
        small = [i for i in todo if i.size <= 4 * CHUNK_BYTES]
        for it in big:
            current = it.rel
            await _upload(sftp, it, remote_dir, stats, progress)
        sem = asyncio.Semaphore(PARALLEL_FILES)

        async def one(it: SendItem) -> None:
            async with sem:
                await _upload(sftp, it, remote_dir, stats, progress)

        current = f"{len(small)} small file(s)"
        results = await asyncio.gather(*(one(i) for i in small), return_exceptions=True)
        errs = [e for e in results if isinstance(e, BaseException)]
        if errs:
            raise errs[0]
        current = "verification"
        parts = {part_name(i.rel, i.sha256): i for i in todo}
        got = await remote_hashes(conn, remote_dir, list(parts))
        bad = [i for p, i in parts.items() if got.get(p) != i.sha256]
        for i in bad:
            await sftp.remove(posixpath.join(remote_dir, part_name(i.rel, i.sha256)))
        if bad:
            raise TransferError(f"{len(bad)} file(s) arrived on {device.name} with a different sha256 (e.g. {bad[0].rel}); "
                                "they were deleted there — re-run the same command to send them again")
        for p, i in parts.items():
            src, dst = posixpath.join(remote_dir, p), posixpath.join(remote_dir, i.rel)
            try:
                await sftp.posix_rename(src, dst)
            except a.SFTPOpUnsupported:  # servers without the posix-rename extension
                if await sftp.exists(dst):
                    await sftp.remove(dst)
                await sftp.rename(src, dst)
        stats.files_sent = len(todo)
        stats.sent = [i.rel for i in todo]
    except (a.Error, OSError) as exc:
        stats.seconds = time.perf_counter() - t0
        if not is_connection_lost(exc):
            raise TransferError(
                f"{device.name} refused a file operation while sending {current or 'files'}: {error_reason(exc)}; check that the "
                f"login can write to its workdir ({remote_dir}) and that the board has free disk") from exc
        raise TransferError(
            f"the connection to {device.name} ({device.destination}) broke while sending {current or 'files'} "
            f"({stats.bytes_sent / 2**20:.2f} MiB sent in this run): {error_reason(exc)}. "
            "Nothing on this workstation was changed; re-run the same command to resume — files already on the board are "
            "not sent again and a partly sent file continues where it stopped") from exc
    stats.seconds = time.perf_counter() - t0
    return stats
