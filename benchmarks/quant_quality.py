"""INT8 quality/speed grid on a bundle: calibration method x per-channel/per-tensor x preset x
accuracy budget on/off, against the bundle's fp32 ONNX model measured in the same run.

For each combination: test top-1, its drop and top-1 agreement with fp32 on the bundle's test split
(no decision saw it; "—" for a bundle made before the test split), the same on the validation split
(which decides the "budget on" rows), validation top-1 with ONNX Runtime graph optimisations off,
nodes kept in float, b1 p50 latency and b8 throughput relative to ORT fp32 (paired: the fp32 model
is timed right before each candidate, --rounds times, medians reported). "budget off" is the
calibration recipe's plain QDQ file; "budget on" re-uses it when it already meets the budget on
val, otherwise runs the INT8 ladder (:mod:`edgetransfer.quantize.ladder`, decided on val).
Optionally an fp16 row.

    python -m edgetransfer run --data ../shared/data/hymenoptera --out /tmp/bees --quiet
    python benchmarks/quant_quality.py --bundle /tmp/bees --out /tmp/bees-qq [--fp16]
    python benchmarks/quant_quality.py --bundle /tmp/bees --out /tmp/bees-qq --reuse   # re-time only

Artifacts go to --out (never into the bundle). Prints a Markdown table, then one JSON line
(the last line of stdout). Goals (issue 4): top-1 drop <= 0.5 pt and agreement >= 98 % for the
default configuration, best INT8 b1 p50 <= 0.45x ORT fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetransfer.artifacts import read_manifest  # noqa: E402
from edgetransfer.host import cpu_info  # noqa: E402
from edgetransfer.bench.latency import measure_latency  # noqa: E402
from edgetransfer.data import PreprocessSpec, load_arrays  # noqa: E402
from edgetransfer.errors import EdgeTransferError  # noqa: E402
from edgetransfer.bundle import Bundle  # noqa: E402
from edgetransfer.pipeline import quantization_preset  # noqa: E402
from edgetransfer.progress import set_quiet  # noqa: E402
from edgetransfer.quantize.calibration import load_recipe, select_calibration_set  # noqa: E402
from edgetransfer.quantize.int8 import AccuracyBudget, qdq_int8_from_onnx  # noqa: E402
from edgetransfer.runtime.ort import make_session  # noqa: E402

RECIPES = {"minmax": "default", "entropy": "entropy", "percentile": "percentile"}


def logits_of(sess, x: np.ndarray, batch: int = 32) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _test(r: dict) -> str:
    """The row's three test cells (``— | — | — |`` for a bundle without a test split)."""
    if "test_top1" not in r:
        return "— | — | — | "
    return f"{r['test_top1']:.4f} | {100 * r['test_top1_drop']:+.2f} | {r['test_agreement']:.4f} | "


def paired_speed(path: Path, ref_path: Path, x: np.ndarray, args) -> dict:
    """b1 p50 (ms) and b8 throughput (images/s) of ``path`` with ORT (graph optimisations on), and
    their ratios to ``ref_path`` (the fp32 model) measured right before it, ``args.rounds``
    times; the medians are reported. Pairing keeps the ratios meaningful on a shared host whose
    load drifts (fp32 b1 p50 moved from 33 to 17 ms within one unpaired run here)."""
    x1, x8 = np.ascontiguousarray(x[:1]), np.ascontiguousarray(np.resize(x, (8,) + x.shape[1:]))
    sessions = [(p, make_session(p, threads=args.threads)) for p in (ref_path, path)]
    rounds = []
    for _ in range(args.rounds):
        r = []
        for _, sess in sessions:
            name = sess.get_inputs()[0].name
            b1 = measure_latency(lambda: sess.run(None, {name: x1}), 1, warmup=args.warmup, min_iterations=args.b1_iters,
                                 min_seconds=0)
            b8 = measure_latency(lambda: sess.run(None, {name: x8}), 8, warmup=max(2, args.warmup // 4),
                                 min_iterations=args.b8_iters, min_seconds=0)
            r.append((b1.p50_ms, b8.throughput_ips))
        rounds.append({"fp32_b1_p50_ms": r[0][0], "b1_p50_ms": r[1][0], "fp32_b8_ips": r[0][1], "b8_ips": r[1][1]})
    med = lambda k: float(np.median([q[k] for q in rounds]))  # noqa: E731
    return {"b1_p50_ms": med("b1_p50_ms"), "b8_ips": med("b8_ips"), "fp32_b1_p50_ms": med("fp32_b1_p50_ms"),
            "fp32_b8_ips": med("fp32_b8_ips"),
            "b1_p50_rel": float(np.median([q["b1_p50_ms"] / q["fp32_b1_p50_ms"] for q in rounds])),
            "b8_ips_rel": float(np.median([q["b8_ips"] / q["fp32_b8_ips"] for q in rounds]))}


def reusable(path: Path, fp32_sha: str, preset, recipe, budget: float | None, max_steps: int):
    """The manifest of a previous run's ``path`` when it was made from the same fp32 model with the
    same preset, recipe and budget (``--reuse``), else None."""
    from edgetransfer.errors import ArtifactError

    try:
        m = read_manifest(path)
    except ArtifactError:
        return None
    d = m.details
    b = d.get("budget")
    same_budget = (budget is None and b is None) or (b is not None and budget is not None and b["max_top1_drop"] == budget
                                                     and b["max_steps"] == max_steps)
    if m.parent_sha256 == fp32_sha and d.get("preset") == preset.to_dict() and d.get("calibration") == recipe.to_dict() \
            and same_budget:
        return m
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="bundle of 'edgetransfer run' (model.onnx + bundle.json)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgetransfer-quant-quality"), help="where the INT8 files go")
    ap.add_argument("--methods", default="minmax,entropy,percentile")
    ap.add_argument("--granularities", default="per-channel,per-tensor")
    ap.add_argument("--presets", default="target,tensorrt")
    ap.add_argument("--budget", type=float, default=None, help="max top-1 drop (default: the target's)")
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--calibration-samples", type=int, default=None, help="override the recipes' num_samples")
    ap.add_argument("--b1-iters", type=int, default=100)
    ap.add_argument("--b8-iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="paired fp32/candidate latency rounds (median reported)")
    ap.add_argument("--reuse", action="store_true", help="reuse INT8 files of a previous run in --out made with the same settings")
    ap.add_argument("--fp16", action="store_true", help="add an fp16 row (checks the 'no speed on CPU' note)")
    args = ap.parse_args()
    set_quiet(True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    bundle = args.bundle
    b = Bundle.open(bundle)
    target = b.resolve_target()
    budget = target.max_top1_drop if args.budget is None else args.budget
    fp32_path = b.onnx_fp32
    fp32 = read_manifest(fp32_path)
    spec = PreprocessSpec.from_dict(fp32.preprocessing)
    val = b.folder("val")
    vx, vy = load_arrays(val.samples, spec)
    train = b.folder("train")
    # the figures a user reads are on test (no decision saw it); val decides the budget-on rows and is shown beside
    tx, ty = load_arrays(b.folder("test").samples, spec) if b.has_test else (None, None)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    fp32_sess = make_session(fp32_path, threads=args.threads)
    ref = logits_of(fp32_sess, vx)
    ref_top1 = float((ref.argmax(1) == vy).mean())
    ref_t = logits_of(fp32_sess, tx) if tx is not None else None
    calib_cache: dict = {}
    rows = []

    def row_from(m, path: Path, method: str, gran: str, preset_name: str, budget_on: bool, same_as_off: bool = False) -> dict:
        d = m.details
        r = {"method": method, "granularity": gran, "preset": preset_name, "budget": "on" if budget_on else "off",
             "top1": d["val_top1_int8"], "top1_drop": d["val_top1_drop"], "agreement": d["parity"]["agreement"],
             "mean_abs_logit_diff": d["parity"]["mean_abs"], "top1_opt_off": d["optimizations_on_off"].get("top1_off"),  # None: made for TensorRT (no ORT on/off check)
             "excluded_nodes": d["num_excluded_nodes"], "status": d.get("status"), "same_model_as_off": same_as_off,
             "calibration_s": d["calibration_cache"]["seconds"], "quantize_s": d["seconds"], "file": str(path)}
        if tx is not None:
            lt = logits_of(make_session(path, threads=args.threads), tx)
            r.update(test_top1=float((lt.argmax(1) == ty).mean()), test_agreement=float((lt.argmax(1) == ref_t.argmax(1)).mean()))
            r["test_top1_drop"] = float((ref_t.argmax(1) == ty).mean()) - r["test_top1"]
        r.update(paired_speed(path, fp32_path, vx, args))
        return r

    def failed_row(method: str, gran: str, preset_name: str, budget_on: bool, exc: Exception) -> dict:
        return {"method": method, "granularity": gran, "preset": preset_name, "budget": "on" if budget_on else "off",
                "status": f"error: {type(exc).__name__}: {exc}"[:400], "same_model_as_off": False}

    for preset_name in args.presets.split(","):
        for method in args.methods.split(","):
            recipe = load_recipe(RECIPES[method])
            if args.calibration_samples:
                recipe = dataclasses.replace(recipe, num_samples=args.calibration_samples)
            key = (recipe.num_samples, recipe.seed, recipe.stratified)
            if key not in calib_cache:
                calib_cache[key] = load_arrays(select_calibration_set(train, recipe), spec)[0]
            cx = calib_cache[key]
            for gran in args.granularities.split(","):
                q = quantization_preset(target, None if preset_name == "target" else preset_name, gran == "per-channel")
                tag = f"{preset_name}-{method}-{gran}"
                p_off = out / f"{tag}.onnx"
                try:
                    m = args.reuse and reusable(p_off, fp32.sha256, q, recipe, None, args.max_steps) or \
                        qdq_int8_from_onnx(fp32_path, p_off, cx, q, recipe, parity_x=vx, parity_y=vy, target=target.name,
                                           cache_dir=out / "cache", opset_max=target.opset_max)
                except EdgeTransferError as exc:  # a failing configuration is a row with its error
                    m, off = None, failed_row(method, gran, q.name, False, exc)
                else:
                    off = row_from(m, p_off, method, gran, q.name, False)
                rows.append(off)
                print(json.dumps(off), file=sys.stderr, flush=True)
                if m is not None and m.details["val_top1_drop"] <= budget:
                    on = {**off, "budget": "on", "same_model_as_off": True, "status": "ok"}
                else:
                    p_on = out / f"{tag}-budget.onnx"
                    try:
                        m2 = args.reuse and reusable(p_on, fp32.sha256, q, recipe, budget, args.max_steps) or \
                            qdq_int8_from_onnx(fp32_path, p_on, cx, q, recipe, parity_x=vx, parity_y=vy, target=target.name,
                                               cache_dir=out / "cache", opset_max=target.opset_max,
                                               budget=AccuracyBudget(budget, args.max_steps))
                    except EdgeTransferError as exc:
                        on = failed_row(method, gran, q.name, True, exc)
                    else:
                        on = row_from(m2, p_on, method, gran, q.name, True)
                        on["sensitivity_s"] = m2.details.get("sensitivity", {}).get("seconds")
                rows.append(on)
                print(json.dumps(on), file=sys.stderr, flush=True)
    fp16_row = None
    if args.fp16:
        from edgetransfer.quantize.fp16 import fp16_from_onnx

        p16 = out / "model.fp16.onnx"
        m16 = fp16_from_onnx(fp32_path, p16, vx, target=target.name, target_supports_fp16=target.supports("fp16"))
        l16 = logits_of(make_session(p16, threads=args.threads), vx)
        fp16_row = {"top1": float((l16.argmax(1) == vy).mean()), "agreement": m16.details["parity"]["agreement"],
                    "max_abs_logit_diff": m16.details["parity"]["max_abs"], **paired_speed(p16, fp32_path, vx, args)}
    fp32_b1 = [r["fp32_b1_p50_ms"] for r in rows if "fp32_b1_p50_ms" in r]
    f_b1 = float(np.median(fp32_b1)) if fp32_b1 else float("nan")
    f_b8 = float(np.median([r["fp32_b8_ips"] for r in rows if "fp32_b8_ips" in r])) if fp32_b1 else float("nan")
    print(f"fp32 ONNX: top-1 {ref_top1:.4f} on {len(vy)} validation images; b1 p50 {f_b1:.2f} ms, b8 {f_b8:.1f} img/s "
          f"(medians of the paired measurements; range {min(fp32_b1, default=0):.2f}-{max(fp32_b1, default=0):.2f} ms). "
          f"rel = median over {args.rounds} rounds of candidate / fp32 measured right before it.")
    print()
    if tx is not None:
        print(f"test: {len(ty)} images, fp32 top-1 {float((ref_t.argmax(1) == ty).mean()):.4f} (no decision saw them); "
              "val: the split the budget-on rows were decided on")
    print("| preset | method | weights | budget | test top-1 | test drop (pt) | test agree | val top-1 | val drop (pt) | val agree "
          "| val top-1 opt off | float nodes | b1 p50 ms | b1 rel | b8 img/s | b8 rel |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "top1" not in r:
            print(f"| {r['preset']} | {r['method']} | {r['granularity']} | {r['budget']} | {r['status']} |" + " — |" * 12)
            continue
        print(f"| {r['preset']} | {r['method']} | {r['granularity']} | {r['budget']}{' (=off)' if r['same_model_as_off'] and r['budget'] == 'on' else ''}"
              f"{' ' + r['status'] if r['status'] not in ('ok', None) else ''} | {_test(r)}{r['top1']:.4f} | {100 * r['top1_drop']:+.2f} | "
              f"{r['agreement']:.4f} | {'—' if r['top1_opt_off'] is None else format(r['top1_opt_off'], '.4f')} | {r['excluded_nodes']} | {r['b1_p50_ms']:.2f} | "
              f"{r['b1_p50_rel']:.2f} | {r['b8_ips']:.1f} | {r['b8_ips_rel']:.2f} |")
    if fp16_row:
        print(f"| fp16 (onnxconverter-common) | — | — | — | — | — | — | {fp16_row['top1']:.4f} | {100 * (ref_top1 - fp16_row['top1']):+.2f} | "
              f"{fp16_row['agreement']:.4f} | — | — | {fp16_row['b1_p50_ms']:.2f} | {fp16_row['b1_p50_rel']:.2f} | "
              f"{fp16_row['b8_ips']:.1f} | {fp16_row['b8_ips_rel']:.2f} |")
    # the fastest INT8 model that keeps the accuracy budget (a fast model that lost accuracy is no answer)
    ok_rows = [r for r in rows if r["status"] == "ok" and "b1_p50_rel" in r and r["top1_drop"] <= budget]
    best = min(ok_rows, key=lambda r: r["b1_p50_rel"]) if ok_rows else None
    default = next((r for r in rows if r["preset"] == target.quantization.name and r["method"] == "minmax"
                    and r["granularity"] == ("per-channel" if target.quantization.per_channel else "per-tensor") and r["budget"] == "on"), None)
    result = {
        "benchmark": "quant_quality", "bundle": str(bundle), "target": target.name, "budget": budget,
        "host": cpu_info(), "threads": args.threads or os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "num_val_images": int(len(vy)), "fp32": {"top1": ref_top1, "b1_p50_ms": f_b1, "b8_ips": f_b8, "b1_p50_ms_all": fp32_b1},
        "fp16": fp16_row, "rows": rows, "seconds": time.perf_counter() - t_start,
        "goals": {
            "default_config": default and {k: default[k] for k in ("preset", "method", "granularity", "top1_drop", "agreement")},
            "default_top1_drop_le_0.005": bool(default and default["top1_drop"] <= 0.005),
            "default_agreement_ge_0.98": bool(default and default["agreement"] >= 0.98),
            "best_int8_within_budget_b1_p50_rel": best and best["b1_p50_rel"],
            "best_int8_config": best and f"{best['preset']}/{best['method']}/{best['granularity']}/budget {best['budget']}",
            "best_b1_p50_rel_le_0.45": bool(best and best["b1_p50_rel"] <= 0.45),
        },
    }
    print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
