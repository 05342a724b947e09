"""Remote benchmark pieces that need no SSH server: what is sent, how commands are quoted,
version compatibility, sha256sum parsing."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from edgetransfer.artifacts import Manifest, sha256_file, write_manifest
from edgetransfer.bench.benchmark import BenchSettings
from edgetransfer.data import PreprocessSpec
from edgetransfer.errors import ArtifactError, DataError, InventoryError
from edgetransfer.remote.bench import BOOTSTRAP, benchmark_argv, benchmark_on_devices, compare_versions, launcher
from edgetransfer.remote.inventory import Device
from edgetransfer.remote.ssh import shell_join
from edgetransfer.remote.sync import parse_sha256sum, part_name, plan_bundle, safe_name

from ..fixtures.images import make_image_folder


@pytest.fixture
def fake_bundle(tmp_path):
    """A bundle of one (fake-content) fp32 ONNX artifact with its manifest and 8 validation images."""
    data = make_image_folder(tmp_path / "data", classes=("ants", "bees"), per_class=4)
    (data / "bees" / "odd name (1).png").write_bytes((data / "bees" / "0.png").read_bytes())
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "model.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    write_manifest(out / "model.onnx", Manifest(format="onnx", precision="fp32", file="model.onnx", class_names=["ants", "bees"],
                                                preprocessing=PreprocessSpec().to_dict()))
    val = sorted(p for p in data.rglob("*.png"))
    info = {"target": "x86-cpu", "dataset": {"class_names": ["ants", "bees"], "val_root": str(data),
                                             "val_files": [[str(p), p.parent.name] for p in val], "train_files": [["/x/y.png", "ants"]],
                                             "training": {"num_images": 1}},
            "artifacts": [{"file": "model.onnx", "format": "onnx", "precision": "fp32"}]}
    (out / "bundle.json").write_text(json.dumps(info))
    return out, data


def test_plan_sends_artifacts_manifests_and_images_with_remapped_paths(fake_bundle):
    out, data = fake_bundle
    plan = plan_bundle(out)
    rels = [i.rel for i in plan.items]
    assert rels[:2] == ["model.onnx.json", "model.onnx"]
    assert len(rels) == 2 + 9 and plan.num_val == 9
    assert all(r.startswith("val/") for r in rels[2:]) and "val/000008-odd_name__1_.png" in rels  # safe names on the board
    onnx = next(i for i in plan.items if i.rel == "model.onnx")
    assert onnx.sha256 == sha256_file(out / "model.onnx") and onnx.size == 5000
    items = plan.items_for("/home/me/edgetransfer/bundles/" + plan.key)
    bj = json.loads(items[-1].data)
    assert items[-1].rel == "bundle.json" and "train_files" not in bj["dataset"]
    assert bj["dataset"]["val_files"][0] == [f"/home/me/edgetransfer/bundles/{plan.key}/val/000000-0.png", "ants"]
    assert [c for _, c in bj["dataset"]["val_files"]] == [c for _, c in json.loads((out / "bundle.json").read_text())["dataset"]["val_files"]]
    # --max-samples: only the evenly spaced subset the benchmark would use is sent
    assert plan_bundle(out, max_samples=3).num_val == 3
    # --data: the ImageFolder goes to data/<class>/<file>, bundle.json's list is left alone
    dplan = plan_bundle(out, data=data)
    assert dplan.data_mode and "data/bees/odd name (1).png" in [i.rel for i in dplan.items]


def test_plan_refuses_a_modified_artifact_and_missing_images(fake_bundle, tmp_path):
    out, data = fake_bundle
    with open(out / "model.onnx", "r+b") as fh:
        fh.write(b"X")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        plan_bundle(out)
    write_manifest(out / "model.onnx", Manifest(format="onnx", precision="fp32", file="model.onnx", class_names=["ants", "bees"],
                                                preprocessing=PreprocessSpec().to_dict()))
    (data / "ants" / "0.png").unlink()
    with pytest.raises(DataError, match="pass --data VAL_DIR"):
        plan_bundle(out)
    # local problems fail before any connection (the device below does not exist)
    dev = Device("nowhere", "192.0.2.1", connect_timeout_s=1)
    with pytest.raises(DataError):
        benchmark_on_devices(out, [dev], write=False)
    with pytest.raises(InventoryError, match="repeat"):
        benchmark_on_devices(out, [dev, dev], write=False)


def test_remote_commands_are_quoted_argument_lists():
    evil = "$(touch /tmp/pwned); `id` 'x'"
    dev = Device("b", "h", python="/opt/my env/bin/python", env={"OMP_NUM_THREADS": "4", "X": evil})
    argv = benchmark_argv(dev, "/w d", "/w d/bundles/b'1", "x86-cpu", BenchSettings(batch_sizes=(1, 8), warmup=2, max_samples=10))
    assert argv[:4] == ["env", "OMP_NUM_THREADS=4", f"X={evil}", "/opt/my env/bin/python"]
    assert argv[4:] == ["-c", BOOTSTRAP, "benchmark", "/w d/bundles/b'1", "--target", "x86-cpu", "--quiet", "--bench-batch", "1",
                        "--bench-batch", "8", "--warmup", "2", "--max-samples", "10"]
    assert shlex.split(shell_join(argv)) == argv  # what the remote shell parses is exactly the list
    assert launcher(Device("b", "h", python="~/venv/bin/python")) == ["venv/bin/python"]  # relative to the login's home
    dock = Device("b", "h", docker_image="edgetransfer-jetson:r36", docker_args=("--runtime", "nvidia"), env={"A": "1"})
    assert launcher(dock, "/home/me/et") == ["docker", "run", "--rm", "-v", "/home/me/et:/home/me/et", "-w", "/home/me/et", "-e", "A=1",
                                              "--runtime", "nvidia", "edgetransfer-jetson:r36", "python3"]


def test_versions_sha256sum_and_names():
    assert compare_versions("0.1.0", "0.1.0") == "same"
    assert compare_versions("0.1.0", "0.1.3") == "compatible"
    assert compare_versions("0.1.0", "0.2.0") == "incompatible"
    assert compare_versions("1.2.0", "1.4.1") == "compatible" and compare_versions("1.2.0", "2.0.0") == "incompatible"
    h = "a" * 64
    out = f"{h}  model.onnx\n\\{h}  val/odd\\nname\\\\x.png\n{'b' * 64} *bin.dat\nsha256sum: missing: No such file or directory\n"
    assert parse_sha256sum(out) == {"model.onnx": h, "val/odd\nname\\x.png": h, "bin.dat": "b" * 64}
    assert part_name("val/a.png", "0123456789abcdef" * 4) == "val/.a.png.0123456789abcdef.part"
    assert safe_name("../é x.png") == "___x.png" and safe_name("...") == "_"
