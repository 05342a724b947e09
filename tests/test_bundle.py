"""bundle.py: one target rule, target recorded by every stage that makes artifacts, the artifact
list (registered, then engines found by their manifests), the recorded splits."""

from __future__ import annotations

import json
import shutil

import pytest

from .fixtures.bundles import CLASSES, make_bundle
from edgetransfer.artifacts import atomic_write_json
from edgetransfer.bundle import DEFAULT_TARGET, Bundle, engine_file, resolve_target_name
from edgetransfer.errors import ArtifactError, DataError
from edgetransfer.targets import load_target


def test_target_rule_explicit_then_recorded_then_default(tmp_path):
    assert resolve_target_name("jetson-nano", "x86-cpu") == "jetson-nano"
    assert resolve_target_name(None, "jetson-nano") == "jetson-nano"
    assert resolve_target_name(None, None) == DEFAULT_TARGET == "x86-cpu"
    b = Bundle(make_bundle(tmp_path, target="jetson-orin-nano"))
    info = b.info
    info["target"] = "jetson-orin-nano"
    b.write_info(info)
    assert b.resolve_target().name == "jetson-orin-nano"
    assert b.resolve_target("rpi5-arm64").name == "rpi5-arm64"
    assert Bundle(tmp_path / "nowhere").resolve_target().name == DEFAULT_TARGET  # no bundle.json: the default


def test_a_stage_records_its_target_so_a_later_command_uses_it(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgetransfer.pipeline import stage_quantize

    b = Bundle(make_bundle(tmp_path))
    assert b.resolve_target().name == "x86-cpu"
    stage_quantize(b.dir, load_target("jetson-orin-nano"), precision="fp16")
    info = b.info
    assert info["target"] == "jetson-orin-nano" and info["stages"]["quantize"]["target"] == "jetson-orin-nano"
    assert b.resolve_target().name == "jetson-orin-nano"  # a later `build` without --target builds for it
    assert [a["file"] for a in b.registered()] == ["model.onnx", "model.fp16.onnx"]


def test_artifacts_lists_registered_then_unlisted_engines_only(tmp_path):
    b = Bundle(make_bundle(tmp_path))
    # an unlisted ONNX copy is not an artifact of the bundle; an unlisted engine (build_engine.sh) is
    shutil.copy(b.onnx_fp32, b.path("stray.onnx"))
    shutil.copy(b.path("model.onnx.json"), b.path("stray.onnx.json"))
    eng = engine_file("jetson-orin-nano", "fp16")
    b.path(eng).write_bytes(b"engine")
    man = json.loads(b.path("model.onnx.json").read_text())
    man.update(file=eng, format="engine", precision="fp16")
    atomic_write_json(b.path(eng + ".json"), man)
    assert [p.name for p, _ in b.artifacts()] == ["model.onnx", eng]
    assert b.planned_engines(load_target("jetson-orin-nano")) == [(engine_file("jetson-orin-nano", "int8"), "int8")]
    # without bundle.json (a bare copy) every file with a manifest counts
    b.json_path.unlink()
    assert sorted(p.name for p, _ in b.artifacts()) == sorted(["model.onnx", "stray.onnx", eng])
    with pytest.raises(ArtifactError, match="not an edgetransfer bundle"):
        Bundle.open(b.dir)


def test_register_refuses_a_modified_artifact_and_splits_must_exist(tmp_path):
    b = Bundle(make_bundle(tmp_path))
    with b.onnx_fp32.open("ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="sha256"):
        b.register("model.onnx")
    assert b.folder("val").class_names == CLASSES and len(b.folder("train")) == 8
    info = b.info
    info["dataset"]["val_files"][0][0] = str(tmp_path / "gone.png")
    b.write_info(info)
    with pytest.raises(DataError, match="missing on this machine"):
        b.folder("val")


def test_int8_decisions_use_up_to_1024_val_images_parity_checks_256(tmp_path):
    pytest.importorskip("PIL")
    from edgetransfer.bundle import DECISION_MAX_IMAGES, PARITY_MAX_IMAGES
    from edgetransfer.data import PreprocessSpec

    b = Bundle(make_bundle(tmp_path))
    info = b.info
    info["dataset"]["val_files"] = (info["dataset"]["val_files"] * 40)[:300]  # 300 val entries (8 files repeated)
    b.write_info(info)
    spec = PreprocessSpec.from_dict(json.loads((b.dir / "model.onnx.json").read_text())["preprocessing"])
    x, y = b.decision_arrays(spec)
    assert (PARITY_MAX_IMAGES, DECISION_MAX_IMAGES) == (256, 1024)
    assert x.shape[0] == y.shape[0] == 300  # the whole split: digits' 359 val images were cut to 256 before
    assert b.parity_arrays(spec)[0].shape[0] == 256
