"""Preprocessing parity: every stage feeds a model the same tensors for the same image.

Captured where each stage hands them to a model: training evaluation (``train.evaluate`` on ``train.image_batches``, what every epoch runs),
INT8 calibration (``quantize.int8._Reader``), the benchmark's accuracy pass and its end-to-end
path (JPEG bytes -> ``ImageClassifier``), and the golden self-test (``bench.golden.read_golden``).
"""

from __future__ import annotations

import numpy as np
import pytest

from ..fixtures.images import colour_folder

from ..fixtures.colour import write_colour_onnx
from edgetransfer.artifacts import read_manifest
from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
from edgetransfer.bench.e2e import ImageClassifier
from edgetransfer.bench.golden import read_golden, write_golden
from edgetransfer.data import PreprocessSpec, scan_image_folder
from edgetransfer.runtime import base as runtime_base
from edgetransfer.runtime.ort import OnnxRuntimeRunner
from edgetransfer.targets import load_target
from edgetransfer.types import Format, Runtime

CLASSES = ("red", "green", "blue")


def test_every_stage_feeds_identical_tensors(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from edgetransfer.train import evaluate, image_batches

    onnx_path = write_colour_onnx(tmp_path / "b", CLASSES, input_size=24, resize_size=28, interpolation="bicubic")
    val = colour_folder(tmp_path / "val", CLASSES, per_class=3, size=37, fmt="jpg")  # odd size: resize + crop both act
    spec = PreprocessSpec.from_dict(read_manifest(onnx_path).preprocessing)
    folder = scan_image_folder(val, class_names=list(CLASSES))
    n = len(folder)

    # 1. training evaluation
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x.numpy().copy())
            return torch.zeros(len(x), len(CLASSES))

    evaluate(Recorder(), torch.nn.CrossEntropyLoss(), image_batches(folder.samples, spec, 4, "cpu"), "cpu")
    reference = np.concatenate(seen)
    assert reference.shape == (n, 3, 24, 24) and reference.dtype == np.float32

    # 2. INT8 calibration: qdq_int8_from_onnx preprocesses its calibration samples with load_arrays
    from edgetransfer.data import load_arrays

    calib, _ = load_arrays(folder.samples, spec, batch_size=5)

    # 3. benchmark: accuracy pass and end-to-end (JPEG bytes) through a recording ORT runner
    fed = []

    class RecordingRunner(OnnxRuntimeRunner):
        def infer(self, feeds):
            fed.append(feeds["input"].copy())
            return super().infer(feeds)

    monkeypatch.setitem(runtime_base._REGISTRY, (Format.ONNX, Runtime.ONNXRUNTIME), RecordingRunner)
    tgt_yaml = tmp_path / "ort-only.yaml"
    tgt_yaml.write_text("name: ort-only\ndescription: t\narch: x86_64\nruntimes: [onnxruntime]\nprecisions: [fp32]\n")
    rep = benchmark_bundle(tmp_path / "b", load_target(tgt_yaml), data=val, write=False,
                           settings=BenchSettings(batch_sizes=(4,), warmup=0, min_iterations=n, min_seconds=0.0, e2e_images=n))
    assert rep["results"][0]["status"] == "ok" and rep["results"][0]["accuracy"]["top1"] == 1.0
    accuracy_pass = np.concatenate(fed[: -(-n // 4)])
    end_to_end = np.concatenate(fed[-n:])  # the last n calls: one per JPEG payload, in sample order

    # 4. golden self-test inputs (decoded again from the copies inside the bundle)
    write_golden(tmp_path / "b", onnx_path, folder.samples, count=n)
    doc, golden_x, _ = read_golden(tmp_path / "b")
    order = [next(i for i, s in enumerate(folder.samples) if str(s.path) == im["source"]) for im in doc["images"]]

    # 5. the deployable classifier's own preprocess on the file bytes
    clf = ImageClassifier(None, spec, CLASSES)
    app = np.concatenate([clf.preprocess(s.path.read_bytes()) for s in folder.samples])

    for name, got in [("calibration", calib), ("benchmark accuracy", accuracy_pass), ("benchmark end-to-end", end_to_end),
                      ("golden self-test", golden_x), ("ImageClassifier", app)]:
        want = reference[order] if name == "golden self-test" else reference
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= 1e-6, name
