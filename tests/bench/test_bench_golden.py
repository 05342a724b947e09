"""Golden self-test: passes on a fresh bundle, fails on an artifact whose weights were altered."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ..fixtures.cli import cli
from edgetransfer.artifacts import Manifest, manifest_path, write_manifest
from edgetransfer.bench.golden import GOLDEN_DIR, GOLDEN_FILE, read_golden, select_golden, selftest
from edgetransfer.errors import ArtifactError
from edgetransfer.targets import load_target

X86 = load_target("x86-cpu")


def test_select_golden_is_stratified_and_confident():
    logits = np.array([[5, 0], [1, 0], [0, 3], [0, 9], [2, 0], [4, 5]], np.float32)
    labels = np.array([0, 0, 1, 1, 0, 0])
    # class 0: correct by margin 5 (0), 2 (4), 1 (1); wrong last (5); class 1: margins 9 (3), 3 (2)
    assert select_golden(logits, labels, 4) == [0, 3, 4, 2]
    assert select_golden(logits, labels, 10) == [0, 3, 4, 2, 1, 5]


def test_fresh_bundle_passes(tiny_bundle):
    doc = json.loads((tiny_bundle / GOLDEN_DIR / GOLDEN_FILE).read_text())
    assert len(doc["images"]) == 6 and doc["reference"]["file"] == "model.onnx"  # all of val (6; 6 more are test)
    assert sorted({im["class_name"] for im in doc["images"]}) == ["blue", "green", "red"]
    res = selftest(tiny_bundle, X86, threads=1)
    assert res["passed"] and res["input_ok"] and res["input_max_diff"] == 0.0
    by = {(r["name"], r["runtime"]): r for r in res["rows"]}
    assert by[("model.onnx", "onnxruntime")]["max_abs"] == 0.0  # the reference reproduces itself exactly
    assert by[("model.pt", "torch")]["status"] == "pass" and by[("model.pt", "torch")]["max_abs"] <= 1e-3
    assert by[("model.int8.qdq.onnx", "onnxruntime")]["agreement"] == 1.0


def _alter_onnx_weights(path, factor=1.01):
    """Scale the classifier's weight matrix by ``factor`` (1 %: a subtle corruption)."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    (node,) = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and any(i in inits for i in n.input)]
    t = inits[next(i for i in node.input if i in inits)]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32) * np.float32(factor), t.name))
    onnx.save(model, str(path))
    # re-write the manifest's sha256 so the failure is the numbers, not the hash check
    m = Manifest.from_dict(json.loads(manifest_path(path).read_text()))
    write_manifest(path, m)


def test_altered_weights_fail(bundle_copy, capsys):
    _alter_onnx_weights(bundle_copy / "model.onnx")
    res = selftest(bundle_copy, X86, threads=1)
    by = {(r["name"], r["runtime"]): r for r in res["rows"]}
    bad = by[("model.onnx", "onnxruntime")]
    assert bad["status"] == "fail" and bad["max_abs"] > 1e-3 and "tolerance" in bad["error"]
    assert by[("model.onnx", "openvino")]["status"] in ("fail", "unavailable")
    assert res["input_ok"]  # the images and preprocessing are unchanged: the artifact is at fault
    assert by[("model.pt", "torch")]["status"] == "pass"
    assert not res["passed"]
    assert any("golden logits come from an earlier model.onnx" in n for n in res["notes"])
    capsys.readouterr()
    assert cli(["selftest", bundle_copy, "--json", "--threads", "1"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_a_modified_golden_image_is_an_error(bundle_copy):
    img = sorted((bundle_copy / GOLDEN_DIR).glob("00_*"))[0]
    img.write_bytes(img.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="modified"):
        read_golden(bundle_copy)
    (bundle_copy / GOLDEN_DIR / GOLDEN_FILE).unlink()
    assert cli(["selftest", bundle_copy]) == 2
