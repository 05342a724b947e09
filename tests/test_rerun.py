"""Re-runs and two processes: `run` resumes finished stages, --force, another dataset's --out,
bundle generations (stale/), the bundle lock, compare refusing different data."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from .fixtures.bundles import FAST, pipeline_bundle  # noqa: F401
from .fixtures.cli import cli
from edgetransfer.errors import DataError
from edgetransfer.locking import BundleBusyError, bundle_lock
from edgetransfer.rerun import Rerun


def _rerun_args(tiny_bundle):
    from edgetransfer.bench.benchmark import BenchSettings
    from edgetransfer.export.onnx import ExportConfig
    from edgetransfer.train import TrainConfig

    root = tiny_bundle.parent  # what tests.fixtures.bundles.pipeline_bundle made the session bundle with
    cfg = TrainConfig(model=f"file:{root / 'seed' / 'seed.pt'}", epochs=15, lr=1e-2, batch_size=8)
    return cfg, dict(target="x86-cpu", recipe=str(root / "calib.yaml"), export_cfg=ExportConfig(dynamo=False), settings=BenchSettings(**FAST))


def test_run_again_skips_finished_stages_and_gives_the_same_figures(tiny_bundle, tiny_data, bundle_copy):
    pytest.importorskip("torch")
    from edgetransfer.pipeline import run

    cfg, kw = _rerun_args(tiny_bundle)
    before = json.loads((bundle_copy / "bundle.json").read_text())
    assert set(before["run_inputs"]) == {"train", "export", "quantize"}
    mtimes = {f: (bundle_copy / f).stat().st_mtime_ns for f in ("model.pt", "model.onnx", "model.int8.qdq.onnx")}
    old = json.loads((bundle_copy / "report.json").read_text())
    report = run(tiny_data, bundle_copy, cfg, **kw)
    assert {f: (bundle_copy / f).stat().st_mtime_ns for f in mtimes} == mtimes  # nothing retrained, re-exported, re-quantized
    assert json.loads((bundle_copy / "bundle.json").read_text())["run_inputs"] == before["run_inputs"]
    top1 = lambda r: {(x["name"], x["runtime"]): x["accuracy"]["top1"] for x in r["results"] if x.get("accuracy")}  # noqa: E731
    assert top1(report) == top1(old)
    s = report["stage_seconds"]
    assert s["train_s"] + s["export_s"] + s["quantize_s"] < 0.5 * old["stage_seconds"]["train_s"]


def test_a_replaced_artifact_retires_what_derives_from_it(bundle_copy):
    moved = Rerun(bundle_copy).retire_derived("model.pt", "model.pt is being replaced (test)")
    assert {"model.onnx", "model.int8.qdq.onnx", "golden", "report.json", "report.md"} <= set(moved)
    info = json.loads((bundle_copy / "bundle.json").read_text())
    assert [a["file"] for a in info["artifacts"]] == ["model.pt"]
    [rec] = info["stale"]
    stale = bundle_copy / rec["moved_to"]
    assert (stale / "model.int8.qdq.onnx").is_file() and (stale / "model.int8.qdq.onnx.json").is_file()
    assert not (bundle_copy / "model.onnx").exists() and (bundle_copy / "model.pt").is_file()
    # only the descendants of the replaced file: replacing the INT8 model keeps model.onnx
    assert "model.onnx" not in Rerun(bundle_copy).retire_derived("model.int8.qdq.onnx", "t")


def test_force_redoes_a_current_stage(bundle_copy):
    key = json.loads((bundle_copy / "bundle.json").read_text())["run_inputs"]["export"]["key"]
    assert Rerun(bundle_copy).needed("export", key) is False
    assert Rerun(bundle_copy).needed("export", "other inputs") is True  # and its descendants were retired
    assert not (bundle_copy / "model.int8.qdq.onnx").exists()
    assert Rerun(bundle_copy, force=True).needed("train", "x") is True


def test_an_out_holding_another_datasets_bundle_is_refused_unless_force(bundle_copy, tmp_path):
    from .fixtures.images import make_image_folder

    other = make_image_folder(tmp_path / "other", classes=("cat", "dog"), per_class=3)
    with pytest.raises(DataError, match="another dataset.*--force"):
        Rerun(bundle_copy).check_dataset(other, None)
    assert (bundle_copy / "model.pt").is_file()
    Rerun(bundle_copy, force=True).check_dataset(other, None)
    left = {p.name for p in bundle_copy.iterdir()}
    assert "model.pt" not in left and "bundle.json" not in left and "stale" in left


def test_a_second_process_on_a_bundle_is_refused_naming_the_holder(bundle_copy):
    code = ("import sys, time; from edgetransfer.locking import bundle_lock\n"
            f"with bundle_lock({str(bundle_copy)!r}, 'holder-test'):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(BundleBusyError, match=rf"pid {p.pid} .*holder-test"):
            with bundle_lock(bundle_copy):
                pass
        assert cli(["export", str(bundle_copy)]) == 2
    finally:
        p.kill()
        p.wait()
    with bundle_lock(bundle_copy):  # the kernel dropped the dead holder's lock
        with bundle_lock(bundle_copy):  # re-entrant in one process
            pass


def test_compare_refuses_reports_of_different_data(tiny_bundle, tmp_path):
    old = json.loads((tiny_bundle / "report.json").read_text())
    new = json.loads(json.dumps(old))
    new["dataset"]["class_names"] = ["cat", "dog", "bird"]
    a, b = tmp_path / "old.json", tmp_path / "new.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps(new))
    assert cli(["compare", str(a), str(b)]) == 2
    assert cli(["compare", str(a), str(b), "--allow-different-data"]) == 0


def test_run_cli_into_another_datasets_bundle_exits_2_and_leaves_it_alone(bundle_copy, tmp_path):
    from .fixtures.images import make_image_folder

    other = make_image_folder(tmp_path / "other", classes=("cat", "dog"), per_class=3)
    before = sorted(p.name for p in bundle_copy.iterdir())
    sha = (bundle_copy / "bundle.json").read_bytes()
    assert cli(["run", "--data", str(other), "--out", str(bundle_copy)]) == 2
    assert sorted(p.name for p in bundle_copy.iterdir() if p.name != ".edgetransfer.lock") == [n for n in before if n != ".edgetransfer.lock"]
    assert (bundle_copy / "bundle.json").read_bytes() == sha


def test_benchmark_flags_an_artifact_of_an_earlier_parent(bundle_copy):
    from edgetransfer.bench.benchmark import BenchSettings, benchmark_bundle
    from edgetransfer.targets import load_target

    assert not any("made from an earlier" in n for n in json.loads((bundle_copy / "report.json").read_text())["notes"])
    mp = bundle_copy / "model.int8.qdq.onnx.json"
    m = json.loads(mp.read_text())
    m["parent_sha256"] = "0" * 64  # as if model.onnx had been re-exported after this INT8 model was made
    mp.write_text(json.dumps(m))
    rep = benchmark_bundle(bundle_copy, load_target("x86-cpu"), settings=BenchSettings(**FAST, e2e=False), write=False)
    assert any(n.startswith("model.int8.qdq.onnx was made from an earlier model.onnx") for n in rep["notes"])


def test_train_over_a_bundle_retires_the_old_models_descendants(bundle_copy, tmp_path, tiny_data):
    """`edgetransfer train` into an existing bundle: the old model's ONNX, INT8,
    golden set and reports go to stale/, so nothing of the old model looks current."""
    pytest.importorskip("torch")
    from edgetransfer.pipeline import stage_train

    from edgetransfer.train import TrainConfig

    cfg = TrainConfig(model="timm:resnet10t", pretrained=False, input_size=32, epochs=1, batch_size=8)
    stage_train(tiny_data, bundle_copy, cfg)
    info = json.loads((bundle_copy / "bundle.json").read_text())
    assert [a["file"] for a in info["artifacts"]] == ["model.pt"]
    assert not (bundle_copy / "model.onnx").exists() and not (bundle_copy / "report.json").exists()
    assert {"model.onnx", "model.int8.qdq.onnx"} <= set(info["stale"][0]["files"])
