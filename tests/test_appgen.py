"""`edgetransfer app`: the generated ONNX Runtime app, run torch-free in a subprocess on the
bundle's validation images, predicts what edgetransfer's own path predicts and reproduces the
report's accuracy and confusion matrix. (Its latency vs the report's e2e figure is a timing,
measured in benchmarks/app_latency.py, not here.)"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from .fixtures.cli import cli
from edgetransfer.bundle import Bundle
from edgetransfer.data import preprocess_file


def run_app(app_dir, files, tmp_path, *extra):
    blocker = tmp_path / "no_torch"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\nsys.modules['edgetransfer'] = None\n")
    r = subprocess.run([sys.executable, str(app_dir / "run_onnxruntime.py"), *map(str, files), "--json", "--top-k", "3", *extra],
                       capture_output=True, text=True, env={"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    return lines[:-1], lines[-1]


def test_app_predictions_equal_the_report(bundle_copy, tmp_path):
    assert cli(["app", str(bundle_copy), "--target", "x86-cpu"]) == 0
    app = bundle_copy / "app"
    cfg = json.loads((app / "app.json").read_text())
    assert cfg["artifacts"] == {"onnxruntime": "../model.int8.qdq.onnx"}  # the INT8 model is what ships on a CPU
    assert (app / "labels.txt").read_text().split() == cfg["labels"] and not (app / "run_tensorrt.py").exists()
    assert (bundle_copy / "labels.txt").read_text().split() == cfg["labels"]  # beside every artifact (Bundle.register writes it)
    b = Bundle(bundle_copy)
    names = cfg["labels"]
    val, _ = b.validation(names, None)
    rows, summary = run_app(app, [s.path for s in val.samples], tmp_path)
    assert summary["images"] == len(val.samples) == len(rows) and summary["median_ms"] > 0
    pred = np.array([names.index(r["top"][0][0]) for r in rows])
    truth = np.array([s.label for s in val.samples])
    # edgetransfer's own path (library preprocessing + ONNX Runtime) on the same files
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle_copy / "model.int8.qdq.onnx"), providers=["CPUExecutionProvider"])
    spec = b.artifacts()[[p.name for p, _ in b.artifacts()].index("model.int8.qdq.onnx")][1]
    from edgetransfer.data import PreprocessSpec

    ps = PreprocessSpec.from_dict(spec.preprocessing)
    ref = np.array([int(sess.run(None, {sess.get_inputs()[0].name: preprocess_file(s.path, ps)[None]})[0].argmax()) for s in val.samples])
    assert np.array_equal(pred, ref)
    report = json.loads((bundle_copy / "report.json").read_text())
    row = next(r for r in report["results"] if r["name"] == "model.int8.qdq.onnx" and r["runtime"] == "onnxruntime")
    assert float((pred == truth).mean()) == row["accuracy"]["top1"]
    conf = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(conf, (truth, pred), 1)
    assert conf.tolist() == row["accuracy"]["confusion"]
    probs = [p for _, p in rows[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_app_without_a_runnable_artifact_says_what_to_build(bundle_copy, capsys):
    assert cli(["app", str(bundle_copy), "--target", "ios-arm64"]) == 2  # Core ML / ExecuTorch: no app runtime
    err = capsys.readouterr().err
    assert "no artifact for an app runtime of ios-arm64" in err and "edgetransfer build" in err
    assert not (bundle_copy / "app").exists()


def test_export_data_writes_the_split_as_an_image_folder(bundle_copy, tmp_path, capsys):
    from edgetransfer.data import scan_image_folder

    b = Bundle(bundle_copy)
    val = b.folder("val")
    assert cli(["export-data", str(bundle_copy), str(tmp_path / "val"), "--split", "val"]) == 0
    got = scan_image_folder(tmp_path / "val")
    assert sorted(got.class_names) == sorted(val.class_names) and len(got.samples) == len(val.samples)
    want = sorted((val.class_names[s.label], s.path.read_bytes()) for s in val.samples)
    assert sorted((got.class_names[s.label], s.path.read_bytes()) for s in got.samples) == want  # same bytes, same classes
    assert cli(["export-data", str(bundle_copy), str(tmp_path / "val"), "--split", "val"]) == 2  # not over a non-empty folder
    assert "not empty" in capsys.readouterr().err
