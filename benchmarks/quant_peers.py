"""Peers side by side: the same fp32 ONNX model quantized by
(a) plain ``onnxruntime.quantization.quantize_static`` with its defaults (``ort_default``),
(b) NNCF ``nncf.quantize`` with its defaults (``nncf``) and ``nncf.quantize_with_accuracy_control``
    (``nncf_accuracy_control``, max absolute drop = the target's budget, in a subprocess stopped after
    ``--timeout`` seconds), and
(c) edgetransfer's INT8 ladder (``edgetransfer``, x86-cpu preset, decided on the validation split), with
    its defaults and with its opt-in AdaRound rung (``edgetransfer_adaround``: ``--adaround auto``, run
    only when ranges + bias correction do not hold on val).

For each: TEST top-1 with its 95 % Wilson interval, the paired drop vs fp32 on the same test
images with its Newcombe interval (:func:`edgetransfer.stats.budget_judge`), top-1 agreement with
fp32, the share of compute nodes left in float (:mod:`edgetransfer.quantize.graphstats`), and
ONNX Runtime / OpenVINO (CPU) b1 p50 and ORT b8 throughput relative to ORT fp32 b1 p50 / b8 img/s
timed in the same run (the fp32 model is timed right before each candidate, ``--rounds`` times;
medians of the per-round ratios, their quartiles in parentheses: the timing noise of the run).
Calibration: 128 class-stratified training images (the x86-cpu recipe) for every quantizer;
validation images for the decisions (edgetransfer's ladder, NNCF's accuracy control); test
images only for the figures. A bundle without a test split (made before the data roles)
gets its validation split cut in two seeded halves: decisions on one, figures on the other.

    pip install -e '.[bench]'           # nncf==3.4.0 (never in the core install)
    python benchmarks/quant_peers.py    # digits, hymenoptera, pizza_steak_sushi; bundles trained if missing
    python benchmarks/quant_peers.py --reuse --datasets digits   # re-measure, reuse the quantized files

Prints a Markdown table (its last column: for each test image INT8 lost, how close fp32 was to a tie,
top-1 minus top-2 softmax probability), writes every figure (milliseconds, margins) to
``WORK/quant_peers.json``, then one JSON line (the last line of stdout):
``{"datasets": {DS: {QUANTIZER: {"test_top1_fp32", "test_top1_int8", "test_top1_drop",
"drop_interval95", "agreement", "float_node_share", "ort_p50_ratio", "openvino_p50_ratio",
"ort_b8_throughput_ratio", "seconds"}}}}`` (drops as fractions: 0.005 = 0.5 pt).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetransfer.artifacts import read_manifest  # noqa: E402
from edgetransfer.bench.latency import measure_latency  # noqa: E402
from edgetransfer.bundle import Bundle  # noqa: E402
from edgetransfer.data import PreprocessSpec, load_arrays  # noqa: E402
from edgetransfer.progress import set_quiet  # noqa: E402
from edgetransfer.quantize.calibration import load_recipe, select_calibration_set  # noqa: E402
from edgetransfer.runtime.openvino import compile_config  # noqa: E402
from edgetransfer.quantize.graphstats import float_node_share  # noqa: E402
from edgetransfer.stats import budget_judge, softmax_margin, wilson_interval  # noqa: E402
from edgetransfer.targets import load_target  # noqa: E402
from edgetransfer.types import Precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGETRANSFER_DATA", REPO.parent / "shared" / "data"))  # as the tests (tests/fixtures)
DATASETS = ("digits", "hymenoptera", "pizza_steak_sushi")
QUANTIZERS = ("edgetransfer", "edgetransfer_adaround", "nncf", "nncf_accuracy_control", "ort_default")


def ensure_bundle(ds: str, work: Path) -> Path:
    """``work/ds``: trained and exported with the CLI when it has no model.onnx yet."""
    out = work / ds
    if (out / "model.onnx").is_file():
        return out
    cli = [sys.executable, "-m", "edgetransfer"]
    if ds == "digits":
        from edgetransfer.demo import write_digits_imagefolder

        data, extra = write_digits_imagefolder(work / "digits-data"), ["--epochs", "30", "--lr", "3e-3"]
    else:
        data, extra = DATA / ds, []
    subprocess.run(cli + ["train", str(data), "--out", str(out), "-q"] + extra, check=True)
    subprocess.run(cli + ["export", str(out), "-q"], check=True)
    return out


def splits(b: Bundle, spec: PreprocessSpec, recipe):
    """(calibration x, decision x/y, test x/y, note)."""
    calib_x, _ = load_arrays(select_calibration_set(b.folder("train"), recipe), spec)
    vx, vy = load_arrays(b.folder("val").samples, spec)
    if b.has_test:
        tx, ty = load_arrays(b.folder("test").samples, spec)
        return calib_x, vx, vy, tx, ty, "test split of the bundle"
    idx = np.random.default_rng(0).permutation(len(vy))
    d, t = np.sort(idx[: len(idx) // 2]), np.sort(idx[len(idx) // 2:])
    return calib_x, vx[d], vy[d], vx[t], vy[t], "no test split in the bundle: validation split cut in two seeded halves"


def qat_images(b: Bundle, spec: PreprocessSpec) -> list:
    """The training images the product's QAT rung uses (edgetransfer.pipeline.stage_quantize)."""
    import dataclasses

    from edgetransfer.pipeline import QAT_IMAGES

    train = b.folder("train")
    recipe = load_recipe(load_target("x86-cpu").quantization.calibration)
    return select_calibration_set(train, dataclasses.replace(recipe, num_samples=min(QAT_IMAGES, len(train))))


def logits(path: Path, x: np.ndarray, batch: int = 32) -> np.ndarray:
    from edgetransfer.runtime.ort import onnx_logits

    return onnx_logits(path, x, batch)


# -- the quantizers ----------------------------------------------------------------------------

def q_edgetransfer(fp32: Path, out: Path, calib_x, vx, vy, budget: float, adaround: str = "off", qat_x=None) -> dict:
    from edgetransfer.quantize.int8 import AccuracyBudget, qdq_int8_from_onnx
    from edgetransfer.quantize.ladder import LadderConfig

    tgt = load_target("x86-cpu")
    m = qdq_int8_from_onnx(fp32, out, calib_x, tgt.quantization, load_recipe(tgt.quantization.calibration),
                           parity_x=vx, parity_y=vy, budget=AccuracyBudget(budget), target=tgt.name,
                           ladder=LadderConfig(adaround=adaround), qat_x=qat_x)
    return {"status": m.details["status"], "chosen_rung": m.details["chosen_rung"],
            "ladder": [(r["rung"], r.get("skipped") or round(r.get("top1_int8", float("nan")), 4)) for r in m.details["ladder"]]}


class _Reader:
    def __init__(self, x, name, batch=16):
        self.x, self.name, self.batch, self.i = x, name, batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += self.batch
        return {self.name: self.x[self.i - self.batch: self.i]}

    def rewind(self):
        self.i = 0


def q_ort_default(fp32: Path, out: Path, calib_x, vx, vy, budget: float) -> dict:
    from onnxruntime.quantization import quantize_static

    name = read_manifest(fp32).inputs[0]["name"]
    quantize_static(str(fp32), str(out), _Reader(calib_x, name))
    return {}


def _nncf_dataset(x, name):
    import nncf

    return nncf.Dataset([x[i: i + 1] for i in range(len(x))], lambda a: {name: a})


def q_nncf(fp32: Path, out: Path, calib_x, vx, vy, budget: float) -> dict:
    import nncf
    import onnx

    name = read_manifest(fp32).inputs[0]["name"]
    q = nncf.quantize(onnx.load(str(fp32)), _nncf_dataset(calib_x, name), subset_size=len(calib_x))
    onnx.save_model(q, str(out))
    return {"nncf": nncf.__version__}


def q_nncf_accuracy_control(fp32: Path, out: Path, calib_x, vx, vy, budget: float) -> dict:
    import nncf
    import onnx
    import onnxruntime as ort

    name = read_manifest(fp32).inputs[0]["name"]

    def validate(model, data) -> float:
        # NNCF passes the raw items of the validation dataset (maybe a subset): (image, label) pairs
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        items = list(data)
        pred = [int(np.argmax(sess.run(None, {name: a})[0])) for a, _ in items]
        return float(np.mean([p == int(y) for p, (_, y) in zip(pred, items)]))

    val = nncf.Dataset([(vx[i: i + 1], int(vy[i])) for i in range(len(vy))], lambda item: {name: item[0]})
    q = nncf.quantize_with_accuracy_control(
        onnx.load(str(fp32)), _nncf_dataset(calib_x, name), val, validate, max_drop=budget,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib_x))
    onnx.save_model(q, str(out))
    return {"nncf": nncf.__version__}


def q_edgetransfer_adaround(fp32: Path, out: Path, calib_x, vx, vy, budget: float, qat_x=None) -> dict:
    return q_edgetransfer(fp32, out, calib_x, vx, vy, budget, adaround="auto", qat_x=qat_x)


RUN = {"edgetransfer": q_edgetransfer, "edgetransfer_adaround": q_edgetransfer_adaround, "nncf": q_nncf, "nncf_accuracy_control": q_nncf_accuracy_control,
       "ort_default": q_ort_default}


def quantize_in_subprocess(q: str, fp32: Path, out: Path, arrays: Path, budget: float, timeout: float) -> dict:
    """Run quantizer ``q`` in a child process (this script with ``--_child``), stopped after ``timeout`` s."""
    cmd = [sys.executable, __file__, "--_child", q, str(fp32), str(out), str(arrays), str(budget)]
    try:
        r = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after --timeout {timeout:.0f} s"}
    if r.returncode != 0 or not out.is_file():
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- measuring ---------------------------------------------------------------------------------

def _iqr(q) -> str:
    """``lo-hi``: the quartiles of the per-round ratios (the timing noise of this run), ``-`` without them."""
    return f"{q[0]:.2f}-{q[1]:.2f}" if q else "-"


def speed(path: Path, ref: Path, x: np.ndarray, args) -> dict:
    """ORT b1 p50 / b8 img/s and OpenVINO b1 p50 of ``path``, the ORT fp32 ``ref`` timed right
    before it, ``args.rounds`` rounds; medians of the per-round ratios."""
    import openvino as ov

    from edgetransfer.runtime.ort import make_session

    x1, x8 = np.ascontiguousarray(x[:1]), np.ascontiguousarray(np.resize(x, (8,) + x.shape[1:]))
    s_ref, s = make_session(ref), make_session(path)
    try:
        # the product runner's properties: f32 inference precision for INT8 files (OpenVINO's default on an AMX host
        # is bf16, which runs the float remainder of an INT8 file, float-fallback nodes included, in bf16)
        req, ov_error = ov.Core().compile_model(str(path), "CPU", compile_config(Precision.INT8)).create_infer_request(), None
    except RuntimeError as exc:  # OpenVINO's CPU plugin refuses some QDQ layouts
        req, ov_error = None, str(exc).strip().splitlines()[-1][:200]
    name = s.get_inputs()[0].name

    def lat(fn, batch, iters):
        return measure_latency(fn, batch, warmup=5, min_iterations=iters, min_seconds=0)

    rounds = []
    for _ in range(args.rounds):
        # the b1 figures back to back, then the b8 ones: the less time between a ratio's two figures, the less
        # of the host's drift gets into it
        f1 = lat(lambda: s_ref.run(None, {name: x1}), 1, args.b1_iters).p50_ms
        q1 = lat(lambda: s.run(None, {name: x1}), 1, args.b1_iters).p50_ms
        o1 = lat(lambda: req.infer({0: x1}), 1, args.b1_iters).p50_ms if req is not None else float("nan")
        f8 = lat(lambda: s_ref.run(None, {name: x8}), 8, args.b8_iters).throughput_ips
        q8 = lat(lambda: s.run(None, {name: x8}), 8, args.b8_iters).throughput_ips
        rounds.append({"ort": q1 / f1, "ov": o1 / f1, "b8": q8 / f8, "fp32_b1_p50_ms": f1, "ort_b1_p50_ms": q1,
                       "openvino_b1_p50_ms": o1})
    med = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    iqr = {k: [float(v) for v in np.percentile([r[k] for r in rounds], [25, 75])] for k in ("ort", "ov")}
    return {"ort_p50_ratio": med["ort"], "openvino_p50_ratio": None if ov_error else med["ov"],
            "ort_p50_ratio_iqr": iqr["ort"], **({} if ov_error else {"openvino_p50_ratio_iqr": iqr["ov"]}),
            **({"openvino_error": ov_error} if ov_error else {}), "ort_b8_throughput_ratio": med["b8"],
            "fp32_b1_p50_ms": med["fp32_b1_p50_ms"], "ort_b1_p50_ms": med["ort_b1_p50_ms"],
            "openvino_b1_p50_ms": med["openvino_b1_p50_ms"]}


def figures(ref_logits, path: Path, tx, ty, budget: float) -> dict:
    cand = logits(path, tx)
    j = budget_judge(ref_logits, cand, ty, budget)
    f = j.figures
    k8 = int((cand.argmax(1) == ty).sum())
    lost = (ref_logits.argmax(1) == ty) & (cand.argmax(1) != ty)
    return {"test_top1_fp32": f["top1_fp32"], "test_top1_int8": f["top1_cand"],
            "test_top1_int8_interval95": list(wilson_interval(k8, len(ty))), "test_top1_drop": f["drop"],
            "drop_interval95": f["drop_interval95"], "agreement": f["fidelity"]["agreement"],
            "lost": f["lost"], "gained": f["gained"], "test_images": len(ty), "budget_holds_on_test": j.holds,
            # how close to a tie fp32 was on each image INT8 lost: top-1 minus top-2 softmax probability
            "lost_fp32_margins": [round(float(v), 4) for v in softmax_margin(ref_logits)[lost]]}


def run_dataset(ds: str, args) -> dict:
    b = Bundle.open(ensure_bundle(ds, args.work))
    fp32 = b.onnx_fp32
    man = read_manifest(fp32)
    spec = PreprocessSpec.from_dict(man.preprocessing)
    tgt = load_target("x86-cpu")
    budget = tgt.max_top1_drop
    calib_x, vx, vy, tx, ty, note = splits(b, spec, load_recipe(tgt.quantization.calibration))
    outdir = args.work / ds / "peers"
    outdir.mkdir(parents=True, exist_ok=True)
    arrays = outdir / "arrays.pkl"
    with open(arrays, "wb") as fh:
        pickle.dump({"calib_x": calib_x, "vx": vx, "vy": vy, "qat": qat_images(b, spec), "spec": spec.to_dict()}, fh)
    ref = logits(fp32, tx)
    res = {}
    for q in args.quantizers:
        out = outdir / f"{q}.onnx"
        meta_p = outdir / f"{q}.meta.json"
        if args.reuse and out.is_file() and meta_p.is_file() and json.loads(meta_p.read_text()).get("fp32_sha256") == man.sha256:
            meta = json.loads(meta_p.read_text())
        else:
            out.unlink(missing_ok=True)
            t0 = time.perf_counter()
            meta = quantize_in_subprocess(q, fp32, out, arrays, budget, args.timeout)
            meta.update(seconds=time.perf_counter() - t0, fp32_sha256=man.sha256)
            meta_p.write_text(json.dumps(meta))
        print(f"[{ds}] {q}: {meta.get('error') or 'quantized'} in {meta['seconds']:.0f} s", file=sys.stderr)
        if "error" in meta:
            res[q] = {"error": meta["error"], "seconds": meta["seconds"]}
            continue
        r = {**figures(ref, out, tx, ty, budget), "float_node_share": float_node_share(out)}
        r.update(speed(out, fp32, tx, args))
        r["seconds"] = meta["seconds"]
        r.update({k: v for k, v in meta.items() if k in ("status", "chosen_rung", "ladder")})
        res[q] = r
    return {"split": note, "calibration_images": int(len(calib_x)), "decision_images": int(len(vy)),
            "test_images": int(len(ty)), "load_average": os.getloadavg()[0], "quantizers": res}


def child(argv) -> None:
    q, fp32, out, arrays, budget = argv
    set_quiet(True)
    with open(arrays, "rb") as fh:
        a = pickle.load(fh)
    kw = {"qat_x": lambda: load_arrays(a["qat"], PreprocessSpec.from_dict(a["spec"]))[0]} if q.startswith("edgetransfer") else {}
    info = RUN[q](Path(fp32), Path(out), a["calib_x"], a["vx"], a["vy"], float(budget), **kw)
    print(json.dumps(info))


def _x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: digits and/or folders of ../shared/data")
    ap.add_argument("--quantizers", default=",".join(QUANTIZERS))
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "quant-peers", help="bundles and quantized files")
    ap.add_argument("--reuse", action="store_true", help="reuse quantized files of a previous run made from the same fp32 model")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per quantizer before it is stopped")
    # 15 rounds of 60: with 3 rounds of 40 two byte-identical files measured 0.46x and 0.61x ORT fp32 in one run
    # (hymenoptera, 2026-12-03); with 9 x 60, 0.58x and 0.64x; on the faster AMD host (fp32 b1 2.2-3.4 ms, its speed
    # drifting between runs) the same digits file measured 0.48x and 0.59x in two runs with 9 x 60 (2026-12-04)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--b1-iters", type=int, default=60)
    ap.add_argument("--b8-iters", type=int, default=8)
    args = ap.parse_args()
    args.quantizers = [q for q in args.quantizers.split(",") if q]
    bad = [q for q in args.quantizers if q not in RUN]
    if bad:
        ap.error(f"unknown quantizer(s) {bad}; known: {', '.join(RUN)}")
    set_quiet(True)
    out = {}
    for ds in [d for d in args.datasets.split(",") if d]:
        out[ds] = run_dataset(ds, args)
    print("| dataset | quantizer | fp32 | INT8 [95 %] | drop pt [95 %] | agree | float | ORT b1 | OV b1 | ORT b8 thr | s "
          "| lost images' fp32 top-2 margin |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ds, d in out.items():
        for q, r in d["quantizers"].items():
            if "error" in r:
                print(f"| {ds} | {q} | - | {r['error']} | | | | | | | {r['seconds']:.0f} | |")
                continue
            lo, hi = r["test_top1_int8_interval95"]
            dlo, dhi = r["drop_interval95"]
            print(f"| {ds} | {q} | {r['test_top1_fp32']:.4f} | {r['test_top1_int8']:.4f} [{lo:.3f}, {hi:.3f}] | "
                  f"{r['test_top1_drop'] * 100:.2f} [{dlo * 100:.1f}, {dhi * 100:.1f}] | {r['agreement']:.3f} | "
                  f"{r['float_node_share']:.0%} | {r['ort_p50_ratio']:.2f}x ({_iqr(r.get('ort_p50_ratio_iqr'))}) | "
                  f"{_x(r['openvino_p50_ratio'])} ({_iqr(r.get('openvino_p50_ratio_iqr'))}) | "
                  f"{r['ort_b8_throughput_ratio']:.2f}x | {r['seconds']:.0f} | "
                  f"{', '.join(f'{m:.2f}' for m in sorted(r['lost_fp32_margins'])[:6]) or '-'} |")
        print(f"\n{ds}: {d['split']}; {d['test_images']} test, {d['decision_images']} decision, "
              f"{d['calibration_images']} calibration images; load average {d['load_average']:.1f}", file=sys.stderr)
    (args.work / "quant_peers.json").write_text(json.dumps(out, indent=1))  # everything, ms and margins included
    keys = ("test_top1_fp32", "test_top1_int8", "test_top1_drop", "drop_interval95", "agreement", "float_node_share",
            "ort_p50_ratio", "openvino_p50_ratio", "ort_b8_throughput_ratio", "seconds")
    print(json.dumps({"datasets": {ds: {q: ({k: r[k] for k in keys} if "error" not in r else r)
                                        for q, r in d["quantizers"].items()} for ds, d in out.items()}}))


if __name__ == "__main__":
    main()
