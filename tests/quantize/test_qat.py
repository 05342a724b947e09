"""Rung f, QAT of the classifier head (edgetransfer/quantize/qat.py), on tiny ONNX models."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from edgetransfer.data import load_arrays, scan_image_folder  # noqa: E402
from edgetransfer.quantize.calibration import CalibrationRecipe  # noqa: E402
from edgetransfer.quantize.int8 import AccuracyBudget, qdq_int8_from_onnx  # noqa: E402
from edgetransfer.quantize.ladder import LadderConfig  # noqa: E402
from edgetransfer.quantize.ort_qdq import preprocess, quantize_with_ranges, weight_qrange  # noqa: E402
from edgetransfer.quantize.qat import head_parity, qat_head  # noqa: E402
from edgetransfer.runtime.ort import onnx_logits  # noqa: E402
from edgetransfer.targets import QuantizationPreset  # noqa: E402

from ..fixtures.images import make_image_folder  # noqa: E402
from ..fixtures.onnx_models import SPEC, sensitive_model, write_onnx  # noqa: E402

RECIPE = CalibrationRecipe(num_samples=16, batch_size=8)
# ORT's 7-bit reduce_range weights ([-64, 64]) on an x86 CPU without VNNI, else [-127, 127]
QMAX = weight_qrange(QuantizationPreset())[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    tr = make_image_folder(root / "train", per_class=8, seed=1)
    va = make_image_folder(root / "val", per_class=8, seed=2)
    cx, _ = load_arrays(scan_image_folder(tr).samples, SPEC)
    vx, vy = load_arrays(scan_image_folder(va).samples, SPEC)
    p = root / "m" / "model.onnx"
    write_onnx(sensitive_model(outlier=300.0), p)  # an outlier that coarsens, not destroys, the RGB channels
    return {"root": root, "cx": cx, "vx": vx, "vy": vy, "model": p}


def _plain_qdq(setup, tmp_path):
    """The pre-processed float model and its minmax QDQ file (ranges from ORT's calibrator)."""
    from edgetransfer.quantize.calibration import cached_ranges
    from edgetransfer.quantize.ort_qdq import op_types_to_quantize

    pre = tmp_path / "pre.onnx"
    preprocess(setup["model"], pre)
    cache = cached_ranges(pre, "x", setup["cx"], "input", RECIPE, QuantizationPreset(), tmp_path / "cache", op_types_to_quantize())
    q = tmp_path / "q.onnx"
    quantize_with_ranges(pre, q, cache.path, QuantizationPreset(), RECIPE)
    return pre, q, cache.path


def test_qat_head_lowers_the_kl_and_ort_requantizes_its_weights_exactly(setup, tmp_path):
    pre, q, ranges = _plain_qdq(setup, tmp_path)
    ref = onnx_logits(pre, setup["cx"])
    out = tmp_path / "qat.onnx"
    s = qat_head(pre, q, setup["cx"], ref, "input", out, steps=200, lr=1e-2, weight_qmax=QMAX)
    assert s["head"] == "fc" and s["images"] == len(setup["cx"]) == 16
    assert s["kl_after"] < 0.5 * s["kl_before"], s  # the head learned to read the INT8 features
    # the weights written back are grid values: ORT's symmetric per-channel int8 quantization gives q exactly
    w = numpy_helper.to_array(next(i for i in onnx.load(str(out)).graph.initializer if i.name == "w_fc"))
    scale = np.abs(w).max(1) / QMAX
    qint = w / scale[:, None]
    assert np.abs(qint - np.rint(qint)).max() < 1e-4 and np.abs(qint).max() <= QMAX + 1e-4
    q2 = tmp_path / "q2.onnx"
    quantize_with_ranges(out, q2, ranges, QuantizationPreset(), RECIPE)
    wq = [numpy_helper.to_array(i) for i in onnx.load(str(q2)).graph.initializer if i.name.startswith("w_fc")
          and numpy_helper.to_array(i).dtype == np.int8 and numpy_helper.to_array(i).ndim == 2]
    assert len(wq) == 1 and np.array_equal(wq[0].astype(np.int64), np.rint(qint).astype(np.int64))
    par = head_parity(q2, s, setup["cx"], "input")
    assert par["passed"] and par["agreement"] == 1.0 and par["rel_diff"] <= 0.05, par
    assert par["images"] == 16 and 0 <= par["saturated_images"] < 16 and par["output_range"][0] < 0 < par["output_range"][1]
    # and on held-out images the re-quantized file is closer to fp32 than the starting candidate
    rv = onnx_logits(pre, setup["vx"])
    err0 = float(((onnx_logits(q, setup["vx"]) - rv) ** 2).mean())
    err1 = float(((onnx_logits(q2, setup["vx"]) - rv) ** 2).mean())
    assert err1 < err0, (err0, err1)


def test_ladder_records_the_qat_rung_with_its_parity(setup, tmp_path):
    m = qdq_int8_from_onnx(setup["model"], tmp_path / "q.onnx", setup["cx"], QuantizationPreset(), RECIPE,
                           parity_x=setup["vx"], parity_y=setup["vy"], budget=AccuracyBudget(0.005, max_steps=0),
                           ladder=LadderConfig(qat="on"))
    f = [r for r in m.details["ladder"] if r["rung"] == "f:qat"]
    assert len(f) == 1 and f[0]["qat"]["parity"]["passed"] and f[0]["qat"]["images"] == 16, f[0]["qat"]["parity"]
    assert "judgement" in f[0] and f[0]["qat"]["kl_after"] <= f[0]["qat"]["kl_before"]
    # the calibration images are the training split's: the 16 validation images never reached the rung
    assert f[0]["qat"]["images"] == len(setup["cx"])
    off = qdq_int8_from_onnx(setup["model"], tmp_path / "q2.onnx", setup["cx"], QuantizationPreset(), RECIPE,
                             parity_x=setup["vx"], parity_y=setup["vy"], budget=AccuracyBudget(0.005, max_steps=0),
                             ladder=LadderConfig(qat="off"))
    assert [r for r in off.details["ladder"] if r["rung"] == "f:qat"][0]["skipped"].startswith("off")


def test_qat_tail_of_two_weighted_nodes(setup, tmp_path):
    """qat_nodes=2 on the tiny net: conv2 -> pool -> flatten -> fc trained on conv2's INT8 input."""
    from edgetransfer.quantize.qat import exposed_outputs, find_tail, run_tail
    import torch

    pre, q, ranges = _plain_qdq(setup, tmp_path)
    fm = onnx.load(str(pre))
    cut, tail = find_tail(fm, 2)
    assert cut == "m" and [n.name for n in tail] == ["conv2", "pool", "flatten", "fc"], (cut, tail)
    # the torch mapping of the tail without fake quantization reproduces the float graph on float features
    (mf, lf) = exposed_outputs(pre, ["m", "logits"], setup["cx"], "input")
    inits = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
    zt = run_tail(tail, cut, torch.from_numpy(mf), {}, inits, {}, fake_quant=False)["logits"].numpy()
    assert np.abs(zt - lf).max() < 1e-4, np.abs(zt - lf).max()
    ref = onnx_logits(pre, setup["cx"])
    out = tmp_path / "qat2.onnx"
    from edgetransfer.quantize.qat import qat_tail

    s = qat_tail(pre, q, setup["cx"], ref, "input", out, qat_nodes=2, steps=200, lr=1e-4, batch=16, weight_qmax=QMAX)
    assert s["tail"] == ["conv2", "pool", "flatten", "fc"] and s["images"] == 16
    assert s["fake_quant_activations"] == ["f", "h", "p"], s  # the candidate's fixed calibrated scales
    assert s["kl_after"] < 0.75 * s["kl_before"], s  # measured 9.4e-5 -> 5.4e-5
    # the kept weights are the best full-set checkpoint (every 20 of the 200 steps): with 7-bit weights the last
    # step's were KL 0.496 here (a weight crossed a rounding boundary on the outlier channel), the best 6.4e-5
    assert s["checkpoint_every"] == 20 and 0 < s["best_step"] <= 200 and s["best_step"] % 20 == 0, s
    q2 = tmp_path / "q2.onnx"
    quantize_with_ranges(out, q2, ranges, QuantizationPreset(), RECIPE)
    # every trained weight is re-quantized by ORT to exactly the integers the torch fake-quant used
    fo = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    qi = [numpy_helper.to_array(i) for i in onnx.load(str(q2)).graph.initializer]
    for name, axis in (("w2", 0), ("w_fc", 0)):
        w = fo[name]
        red = tuple(d for d in range(w.ndim) if d != axis)
        sc = np.abs(w).max(red, keepdims=True) / QMAX
        qint = np.rint(w / np.where(sc == 0, 1, sc)).astype(np.int64)
        assert any(a.dtype == np.int8 and a.shape == w.shape and np.array_equal(a.astype(np.int64), qint) for a in qi), name
    par = head_parity(q2, s, setup["cx"], "input")
    assert par["passed"] and par["agreement"] == 1.0, par
    rv = onnx_logits(pre, setup["vx"])
    err0 = float(((onnx_logits(q, setup["vx"]) - rv) ** 2).mean())
    err1 = float(((onnx_logits(q2, setup["vx"]) - rv) ** 2).mean())
    assert err1 < err0, (err0, err1)


def test_a_tail_torch_cannot_run_falls_back_to_the_head(setup, tmp_path):
    """qat_nodes beyond what the graph maps (here more weighted nodes than the net has): the rung
    trains the classifier head alone and records why the tail was not trained."""
    m = qdq_int8_from_onnx(setup["model"], tmp_path / "q.onnx", setup["cx"], QuantizationPreset(), RECIPE,
                           parity_x=setup["vx"], parity_y=setup["vy"], budget=AccuracyBudget(0.005, max_steps=0),
                           ladder=LadderConfig(qat="on", qat_nodes=5))
    f = [r for r in m.details["ladder"] if r["rung"] == "f:qat"]
    assert len(f) == 1 and "fewer than 5 weighted nodes" in f[0]["qat"]["tail_skipped"], f[0]
    assert f[0]["qat"]["parity"]["passed"] and f[0]["qat"]["kl_after"] <= f[0]["qat"]["kl_before"]
