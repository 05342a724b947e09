"""Tiny hand-built ONNX classifiers (no torch) and bundles around them, for the export/quantize tests.

Every model takes float32 (N, 3, S, S) normalised images (``input``) and returns logits (N, 2)
(``logits``); the weights are set by hand so that, on :func:`conftest.make_image_folder` data
(class ``a`` red, class ``b`` green), the fp32 model classifies every image correctly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetransfer.artifacts import Manifest, atomic_write_json, write_manifest
from edgetransfer.data import PreprocessSpec, scan_image_folder

SIZE = 8
SPEC = PreprocessSpec(input_size=SIZE, resize_size=SIZE, interpolation="bilinear")
CLASSES = ["a", "b"]


def _model(nodes, inits, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _head():
    """GlobalAveragePool -> Flatten -> Gemm computing (R - G, G - R) from channels 0 and 1."""
    w = np.zeros((2, 4), np.float32)
    w[0, :2], w[1, :2] = [1, -1], [-1, 1]
    nodes = [helper.make_node("GlobalAveragePool", ["h"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w_fc", "b_fc"], ["logits"], name="fc", transB=1)]
    return nodes, {"w_fc": w, "b_fc": np.zeros(2)}


def sensitive_model(outlier: float = 1e4, const: float = 1.0) -> onnx.ModelProto:
    """conv1 (1x1, RGB + a constant channel 3) -> Mul (channel 3 x ``outlier``: a huge activation
    outlier range) -> conv2 (1x1, passes RGB, drops channel 3) -> head. Per-tensor INT8
    activations of the Mul output get a scale of ~outlier/255, which rounds the RGB channels to
    the zero point: the INT8 model loses the signal unless that one tensor stays in float.
    ``const``: channel 3's value before the Mul (``const * outlier`` > 65504 overflows fp16)."""
    w1 = np.zeros((4, 3, 1, 1), np.float32)
    w1[0, 0] = w1[1, 1] = w1[2, 2] = 1.0
    b1 = np.array([0, 0, 0, const], np.float32)
    s = np.array([1, 1, 1, outlier], np.float32).reshape(1, 4, 1, 1)
    w2 = np.diag([1, 1, 1, 0]).astype(np.float32).reshape(4, 4, 1, 1)
    head, head_inits = _head()
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("Mul", ["c1", "scale"], ["m"], name="outlier_mul"),
             helper.make_node("Conv", ["m", "w2", "b2"], ["h"], name="conv2")] + head
    return _model(nodes, {"w1": w1, "b1": b1, "scale": s, "w2": w2, "b2": np.zeros(4), **head_inits})


def mlp_model() -> onnx.ModelProto:
    """Flatten -> Gemm: a model without convolutions."""
    w = np.zeros((2, 3 * SIZE * SIZE), np.float32)
    w[0, : SIZE * SIZE], w[1, SIZE * SIZE : 2 * SIZE * SIZE] = 1.0 / SIZE**2, 1.0 / SIZE**2
    nodes = [helper.make_node("Flatten", ["input"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], name="fc", transB=1)]
    return _model(nodes, {"w": w, "b": np.zeros(2)})


def write_onnx(model: onnx.ModelProto, path: Path) -> Manifest:
    """Save ``model`` with an fp32 ONNX manifest as the export stage would write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return write_manifest(path, Manifest(
        format="onnx", precision="fp32", file=path.name, preprocessing=SPEC.to_dict(), class_names=CLASSES,
        inputs=[{"name": "input", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", 2], "dtype": "float32"}], producer="tests"))


def write_bundle(model: onnx.ModelProto, bundle: Path, train_dir: Path, val_dir: Path, target: str = "x86-cpu") -> Path:
    """A bundle holding ``model`` as its fp32 ONNX model, with the train/val images of two ImageFolders."""
    tr, va = scan_image_folder(train_dir, CLASSES), scan_image_folder(val_dir, CLASSES)
    bundle.mkdir(parents=True, exist_ok=True)
    atomic_write_json(bundle / "bundle.json", {
        "target": target, "artifacts": [],
        "dataset": {"class_names": CLASSES, "train_root": str(train_dir), "val_root": str(val_dir),
                    "train_files": [[str(s.path), CLASSES[s.label]] for s in tr.samples],
                    "val_files": [[str(s.path), CLASSES[s.label]] for s in va.samples]}})
    write_onnx(model, bundle / "model.onnx")
    info = json.loads((bundle / "bundle.json").read_text())
    info["artifacts"] = [{"file": "model.onnx", "format": "onnx", "precision": "fp32"}]
    atomic_write_json(bundle / "bundle.json", info)
    return bundle
