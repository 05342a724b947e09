"""A tiny edgetransfer bundle without torch: an fp32 ONNX CNN (Conv-Relu-GAP-Gemm, 16x16 input,
dynamic batch) written with onnx.helper, its manifest, bundle.json with a two-class ImageFolder
split, and INT8 Q/DQ files made by the real quantize stage with a chosen preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .conftest import make_image_folder
from edgetransfer.artifacts import Manifest, atomic_write_json, write_manifest
from edgetransfer.data import PreprocessSpec, scan_image_folder
from edgetransfer.targets import QuantizationPreset

SIZE = 16
CLASSES = ["a", "b"]
SPEC = PreprocessSpec(input_size=SIZE, resize_size=18)


def tiny_onnx(path: Path, opset: int = 17, batch="batch") -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, (4,)).astype(np.float32)
    fw = rng.normal(0, 0.5, (2, 4)).astype(np.float32)
    fb = np.zeros(2, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(fw, "fw"),
         numpy_helper.from_array(fb, "fb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def make_bundle(root: Path, opset: int = 17, target: str = "x86-cpu") -> Path:
    """``root/bundle`` with bundle.json, model.onnx (+ manifest); images in ``root/data``."""
    data = make_image_folder(root / "data", classes=tuple(CLASSES), per_class=4, size=40)
    folder = scan_image_folder(data)
    bundle = root / "bundle"
    bundle.mkdir(parents=True)
    files = [[str(s.path), CLASSES[s.label]] for s in folder.samples]
    atomic_write_json(bundle / "bundle.json", {
        "edgetransfer_version": "0.1.0", "target": target,
        "dataset": {"data": str(data), "class_names": CLASSES, "train_root": str(data), "val_root": str(data),
                    "train_files": files, "val_files": files, "training": {"num_images": len(files)}},
        "artifacts": [],
    })
    tiny_onnx(bundle / "model.onnx", opset=opset)
    write_manifest(bundle / "model.onnx", Manifest(
        format="onnx", precision="fp32", file="model.onnx", target=target, preprocessing=SPEC.to_dict(), class_names=CLASSES,
        inputs=[{"name": "input", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": ["batch", 2], "dtype": "float32"}], producer="tests"))
    info = json.loads((bundle / "bundle.json").read_text())
    info["artifacts"] = [{"file": "model.onnx", "format": "onnx", "precision": "fp32"}]
    atomic_write_json(bundle / "bundle.json", info)
    return bundle


def quantize(bundle: Path, preset: QuantizationPreset, target: str) -> Path:
    """Run the real INT8 stage (onnxruntime.quantization) on the tiny model with ``preset``."""
    from edgetransfer.quantize.calibration import CalibrationRecipe
    from edgetransfer.quantize.int8 import qdq_int8_from_onnx

    info = json.loads((bundle / "bundle.json").read_text())
    from edgetransfer.data import Sample

    calib = [Sample(Path(f), CLASSES.index(c)) for f, c in info["dataset"]["train_files"]]
    out = bundle / "model.int8.qdq.onnx"
    qdq_int8_from_onnx(bundle / "model.onnx", out, calib, preset, CalibrationRecipe(num_samples=len(calib), batch_size=4), target=target)
    info["artifacts"] = [a for a in info["artifacts"] if a["file"] != out.name] + [{"file": out.name, "format": "onnx", "precision": "int8"}]
    atomic_write_json(bundle / "bundle.json", info)
    return out


def bundles_with_presets(root: Path) -> dict[str, Path]:
    """Two tiny bundles: ``"tensorrt"`` quantized with jetson-orin-nano's preset (signed,
    symmetric), ``"x86"`` with x86-cpu's (unsigned asymmetric activations, int32 biases)."""
    from edgetransfer.targets import load_target

    out = {}
    for key, target in (("tensorrt", "jetson-orin-nano"), ("x86", "x86-cpu")):
        b = make_bundle(root / key, target=target)
        quantize(b, load_target(target).quantization, target)
        out[key] = b
    return out
