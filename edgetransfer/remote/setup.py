"""``edgetransfer devices setup NAME``: put this edgetransfer on a board, since it is on no package
index. On the workstation: build this checkout's wheel (``pip wheel --no-deps``). On the board,
over SSH: send it to ``<workdir>/wheels/``, create ``<workdir>/venv`` with the board's Python
(``--system-site-packages`` keeps JetPack's apt-installed TensorRT / onnxruntime-gpu visible), and
``pip install 'WHEEL[device]'`` there, the dependencies coming from the board's own package index
(``--no-deps``: the wheel alone, for boards whose numpy/Pillow/onnxruntime come from the system).
Then the inventory entry's ``python`` points at the venv's interpreter.
"""

from __future__ import annotations

import asyncio
import posixpath
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import RemoteError
from ..progress import log
from .inventory import Device
from .ssh import connect, run

VENV = "venv"


def source_root() -> Path:
    """The checkout this edgetransfer runs from (it must hold pyproject.toml to build a wheel)."""
    import edgetransfer

    root = Path(edgetransfer.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise RemoteError(f"edgetransfer runs from {root}, which is not a source checkout (no pyproject.toml); "
                          "run 'devices setup' from a clone of the repository (pip install -e .)")
    return root


def build_wheel(out_dir: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of :func:`source_root` into ``out_dir``."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out_dir),
                        str(source_root())], capture_output=True, text=True)
    wheels = sorted(Path(out_dir).glob("edgetransfer-*.whl"))
    if r.returncode != 0 or not wheels:
        raise RemoteError(f"building the edgetransfer wheel failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return wheels[-1]


async def _setup(device: Device, wheel: Path, system_site_packages: bool, no_deps: bool, timeout: float) -> dict[str, Any]:
    conn = await connect(device)
    async with conn:
        async with conn.start_sftp_client() as sftp:
            wd = device.workdir[2:] if device.workdir.startswith("~/") else device.workdir
            await sftp.makedirs(posixpath.join(wd, "wheels"), exist_ok=True)
            workdir = await sftp.realpath(wd)
            remote_wheel = posixpath.join(workdir, "wheels", wheel.name)
            await sftp.put(str(wheel), remote_wheel)
        venv = posixpath.join(workdir, VENV)
        py = posixpath.join(venv, "bin", "python")
        base = device.python[2:] if device.python.startswith("~/") else device.python
        steps = [[base, "-m", "venv", *(["--system-site-packages"] if system_site_packages else []), venv],
                 [py, "-m", "pip", "install", "-q", *(["--no-deps"] if no_deps else []), "--force-reinstall", "--no-cache-dir",
                  f"{remote_wheel}" + ("" if no_deps else "[device]")],
                 [py, "-c", "import edgetransfer, sys; print(edgetransfer.__version__, sys.version.split()[0])"]]
        out = ""
        for argv in steps:
            log(f"{device.name}: {' '.join(argv)}")
            r = await run(conn, argv, timeout=timeout)
            if r.exit_status != 0:
                raise RemoteError(f"{device.name}: '{' '.join(argv)}' failed (exit {r.exit_status}): {(r.stderr or r.stdout).strip()[-600:]}")
            out = (r.stdout or "").strip()
        version, pyver = (out.split() + ["?", "?"])[:2]
        return {"device": device.name, "python": py, "wheel": remote_wheel, "edgetransfer": version, "python_version": pyver}


def setup_device(device: Device, *, system_site_packages: bool = False, no_deps: bool = False, timeout: float = 1800) -> dict[str, Any]:
    """Build the wheel, install it in a venv on ``device``; returns {python, wheel, edgetransfer, ...}.
    Raises :class:`RemoteError` naming the failing step and its output."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        return asyncio.run(_setup(device, wheel, system_site_packages, no_deps, timeout))
