"""Helpers of the benchmark/runtime tests (``from ..tiny_models import ...``): a hand-written ONNX
colour classifier, colour-coded ImageFolders, CLI runners (subprocess and in-process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHANNEL = {"red": 0, "green": 1, "blue": 2}


def colour_folder(root: Path, classes=("red", "green", "blue"), per_class: int = 6, size: int = 40, seed: int = 0,
                  fmt: str = "png") -> Path:
    """root/<class>/<i>.<fmt>: noisy images bright in the class's channel (red -> R, green -> G,
    blue -> B; other names cycle through the channels in the given order)."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.full((size, size + 8, 3), 30, np.float32)
            base[..., CHANNEL.get(c, k % 3)] = 210
            arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.{fmt}", **({"quality": 92} if fmt == "jpg" else {}))
    return root


def write_colour_onnx(bundle: Path, class_names=("red", "green", "blue"), input_size: int = 16, scale: float = 10.0,
                      resize_size: int | None = None, interpolation: str = "bilinear") -> Path:
    """A hand-written fp32 ONNX 'colour classifier' with its manifest in ``bundle`` (no torch):
    logits = scale * per-channel mean of the normalised input, channel k -> class k. On
    :func:`colour_folder` images it scores top-1 1.0 only when labels follow ``class_names``.
    Returns the .onnx path."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edgetransfer.artifacts import Manifest, write_manifest
    from edgetransfer.data import PreprocessSpec

    c = len(class_names)
    w = np.zeros((3, c), np.float32)
    for k, name in enumerate(class_names):
        w[CHANNEL.get(name, k % 3), k] = scale
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "colour", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    bundle.mkdir(parents=True, exist_ok=True)
    path = bundle / "model.onnx"
    onnx.save(model, str(path))
    spec = PreprocessSpec(input_size=input_size, resize_size=resize_size or input_size, interpolation=interpolation)
    write_manifest(path, Manifest(format="onnx", precision="fp32", file=path.name, preprocessing=spec.to_dict(),
                                  class_names=list(class_names),
                                  inputs=[{"name": "input", "shape": ["batch", 3, input_size, input_size], "dtype": "float32"}],
                                  outputs=[{"name": "logits", "shape": ["batch", c], "dtype": "float32"}], producer="tests"))
    return path


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m edgetransfer ARGS`` in a subprocess, this checkout first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e["EDGETRANSFER_QUIET"] = "1"
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "edgetransfer", *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=REPO)


def cli(args: list[str]) -> int:
    """Run the CLI in this process (no interpreter start-up, no second torch import); returns the
    exit code. Use pytest's ``capsys`` to read what it printed."""
    from edgetransfer.cli import main

    old = sys.argv
    sys.argv = ["edgetransfer", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
