"""The workstation-GPU path, measured in one call (issue 16): training with AMP off / bf16 / fp16,
then the PyTorch CUDA runner and ONNX Runtime's CUDA execution provider at batch 1, 8, 64.

Run by ``benchmarks/gpu_check.sh OUT`` (which sets up the environment first); alone:

    python benchmarks/gpu_check.py --out OUT [--device cuda|cpu] [--smoke] [--data DIR]

Data: hymenoptera's ``train/`` trains; its ``val/`` is split (seeded, class-stratified) into a
validation half (best epoch) and a test half that no decision sees. Per AMP setting (``off`` =
fp32, ``bf16``, ``fp16``; CPU: no fp16, which needs CUDA): a head phase on the feature cache, then
a fine-tune phase with ``--unfreeze last:2``; recorded: images/s of the feature extraction (train
+ val images through the frozen network, JPEG decode included) and of the fine-tune steps
(training images / training seconds, validation excluded), peak GPU memory (``torch.cuda.
max_memory_allocated``, MiB), val and test top-1. Check: every AMP run's val and test top-1
within 1 point of fp32 (``--smoke``: within one image, the sample being too small for 1 pt).

Then the fp32 checkpoint is exported to ONNX (the product's exporter, parity-checked) and timed
with the PyTorch runner and ONNX Runtime on ``--device`` (CUDA EP there) at each batch size:
p50 / p99 ms, throughput (img/s), and top-1 agreement and max |logit diff| against the CPU fp32
PyTorch model on the test images. A runtime that cannot run (no CUDA EP in this onnxruntime build,
e.g. onnxruntime-gpu could not be installed offline) is a row with ``status: "failed"`` and the
reason; the rest is still measured.

Writes ``OUT/gpu_check.json`` (gpu_check.sh adds ``setup.log``, ``run.log``: the training and
export logs, and ``result.jsonl``); checkpoints and the ONNX file go to ``--work`` (default a
temporary folder, removed at the end); prints one final JSON line
(``all_checks_pass``, the headline figures, ``wall_s``). Exit code 0 when every check passed, 1
otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("EDGETRANSFER_HYMENOPTERA", REPO.parent / "shared" / "data" / "hymenoptera"))
AMPS = ("off", "bf16", "fp16")


def facts(device: str) -> dict:
    """Versions and the device: torch, CUDA, GPU name / capability / memory, onnxruntime providers."""
    import torch

    f = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
         "cuda_available": torch.cuda.is_available(), "cpu": platform.processor() or platform.machine(),
         "cpu_count": os.cpu_count(), "setup": os.environ.get("GPU_CHECK_SETUP", "not run by gpu_check.sh"),
         "setup_s": float(os.environ["GPU_CHECK_SETUP_S"]) if os.environ.get("GPU_CHECK_SETUP_S") else None,
         "onnxruntime_gpu_install": os.environ.get("GPU_CHECK_ORT_GPU", "not attempted")}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        f.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                 bf16_supported=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
    try:
        import onnxruntime as ort

        f.update(onnxruntime=ort.__version__, ort_providers=ort.get_available_providers())
    except Exception as exc:  # noqa: BLE001  (recorded, the ORT rows then fail with it)
        f["onnxruntime"] = f"import failed: {type(exc).__name__}: {exc}"
    return f


def splits(data: Path, smoke: bool, seed: int):
    """(train, val, test) ImageFolders: data/train, and data/val halved (seeded, stratified).
    ``smoke``: 12 training and 8+8 validation/test images per class."""
    from edgetransfer.data import scan_image_folder, stratified_sample, stratified_split

    if not (data / "train").is_dir() or not (data / "val").is_dir():
        raise SystemExit(f"usage: --data must be an ImageFolder with train/ and val/ (hymenoptera); {data} is not")
    train = scan_image_folder(data / "train")
    pool = scan_image_folder(data / "val", class_names=train.class_names)
    if smoke:
        k = len(train.class_names)
        train = train.subset([train.samples.index(s) for s in stratified_sample(train, 12 * k, seed)])
        pool = pool.subset([pool.samples.index(s) for s in stratified_sample(pool, 16 * k, seed)])
    val, test = stratified_split(pool, 0.5, seed)
    return train, val, test


def top1_of(model, test, spec, device: str) -> tuple[float, "object"]:
    """Top-1 (fraction) and logits float32 (N, C) of ``model`` (fp32, eval) on ``test``."""
    import numpy as np
    import torch

    from edgetransfer.data import load_arrays

    x, y = load_arrays(test.samples, spec)
    model = model.to(device).eval()
    with torch.inference_mode():
        logits = np.concatenate([model(torch.from_numpy(x[i : i + 64]).to(device)).float().cpu().numpy()
                                 for i in range(0, len(x), 64)])
    model.cpu()
    return float((logits.argmax(1) == y).mean()), logits


def train_run(amp: str, args, train, val, test, out: Path) -> dict:
    """One training run (head on cached features, then ``--unfreeze last:2``) with autocast ``amp``."""
    import torch

    from edgetransfer.train import TrainConfig
    from edgetransfer.train import fit as fit_mod

    timing: dict = {}
    real = fit_mod.head_features

    def timed_features(model, info, train_set, val_set, cfg, d, amp_dtype):
        if d.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = real(model, info, train_set, val_set, cfg, d, amp_dtype)
        if d.device.startswith("cuda"):
            torch.cuda.synchronize()
        timing["seconds"] = time.perf_counter() - t0
        timing["images"] = len(train_set) + len(val_set)
        return r

    cuda = args.device.startswith("cuda")
    cfg = TrainConfig(epochs=args.epochs, finetune_epochs=args.finetune_epochs, unfreeze="last:2", batch_size=args.batch_size,
                      device=args.device, amp=amp, seed=args.seed)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    fit_mod.head_features = timed_features
    t0 = time.perf_counter()
    try:
        res = fit_mod.train(train, val, out, cfg)
    finally:
        fit_mod.head_features = real
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    ft = [h for h in res.history if h["phase"] == "finetune"]
    test_top1, _ = top1_of(res.model, test, res.info.preprocessing, args.device)
    return {"amp": amp, "autocast": {"off": None, "bf16": "bfloat16", "fp16": "float16"}[amp],
            "grad_scaler": amp == "fp16", "wall_s": round(wall, 2),
            "feature_extraction_images_per_s": round(timing["images"] / timing["seconds"], 1) if timing else None,
            "finetune_images_per_s": round(sum(h["images_per_s"] for h in ft) / len(ft), 1) if ft else None,
            "peak_gpu_memory_mib": round(peak, 1) if peak is not None else None,
            "val_top1": round(res.best_val_top1, 4), "test_top1": round(test_top1, 4),
            "best_phase": res.best_phase, "best_epoch": res.best_epoch, "checkpoint": str(res.checkpoint)}


def runner_rows(name: str, make, sizes, x, ref, lat_kw) -> list[dict]:
    """Latency and agreement rows of one runtime: ``make()`` -> an inactive Runner."""
    import numpy as np

    from edgetransfer.bench.latency import measure_latency

    rows = []
    try:
        r = make()
        r.activate()
    except Exception as exc:  # noqa: BLE001  (a row with the reason, not a crash)
        return [{"runtime": name, "batch": b, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:400]} for b in sizes]
    try:
        info = r.runtime_info()
        want = name.split(":", 1)[1]
        if want == "CUDAExecutionProvider" and r.execution_provider != want:
            reason = (f"CUDAExecutionProvider not in this onnxruntime build (session runs {info.get('providers')}); "
                      f"onnxruntime-gpu install: {os.environ.get('GPU_CHECK_ORT_GPU', 'not attempted')}")
            return [{"runtime": name, "batch": b, "status": "failed", "reason": reason} for b in sizes]
        for b in sizes:
            try:
                got = np.concatenate([r(np.ascontiguousarray(x[i : i + b])) for i in range(0, len(x), b)])
                xb = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))
                st = measure_latency(r.timed_call(xb), b, sync=r.synchronize, **lat_kw)
                rows.append({"runtime": name, "batch": b, "status": "ok", "execution_provider": r.execution_provider,
                             "p50_ms": round(st.p50_ms, 3), "p99_ms": round(st.p99_ms, 3),
                             "throughput_ips": round(st.throughput_ips, 1), "iterations": st.iterations,
                             "agreement_vs_cpu_fp32": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4),
                             "max_abs_diff_vs_cpu_fp32": float(np.abs(got - ref).max())})
            except Exception as exc:  # noqa: BLE001
                rows.append({"runtime": name, "batch": b, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:400]})
    finally:
        r.deactivate()
    return rows


def bench(ckpt: Path, out: Path, test, args) -> tuple[list[dict], dict]:
    """Export the fp32 checkpoint, then time torch and ONNX Runtime on ``args.device``."""
    import torch  # noqa: F401  (loaded before onnxruntime: onnxruntime-gpu finds CUDA/cuDNN in torch's wheels)

    from edgetransfer.checkpoint import load_checkpoint
    from edgetransfer.data import PreprocessSpec, load_arrays
    from edgetransfer.export.onnx import onnx_from_torch
    from edgetransfer.runtime.ort import OnnxRuntimeRunner
    from edgetransfer.runtime.pytorch import TorchRunner

    model, ck = load_checkpoint(ckpt)
    x, _ = load_arrays(test.samples, PreprocessSpec.from_dict(ck["preprocessing"]))
    _, ref = top1_of(model, test, PreprocessSpec.from_dict(ck["preprocessing"]), "cpu")
    t0 = time.perf_counter()
    onnx_path = out / "model.onnx"
    m = onnx_from_torch(ckpt, onnx_path, x[:16], opset_max=18)
    export = {"seconds": round(time.perf_counter() - t0, 1), "exporter": m.details["exporter"], "parity": m.details["parity"]}
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls") and args.device.startswith("cuda"):
            ort.preload_dlls()  # onnxruntime >= 1.21: CUDA/cuDNN from the nvidia-* wheels torch installed
    except Exception as exc:  # noqa: BLE001
        export["ort_preload"] = f"{type(exc).__name__}: {exc}"
    cuda = args.device.startswith("cuda")
    lat_kw = dict(warmup=10, min_iterations=50, min_seconds=1.0) if not args.smoke else dict(warmup=2, min_iterations=5, min_seconds=0.0)
    sizes = args.bench_batch
    rows = runner_rows(f"torch:{args.device}", lambda: TorchRunner(ckpt, options={"device": args.device}), sizes, x, ref, lat_kw)
    ep = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    rows += runner_rows(f"onnxruntime:{ep}", lambda: OnnxRuntimeRunner(onnx_path, options={"providers": [ep]}), sizes, x, ref, lat_kw)
    return rows, export


def checks(runs: list[dict], rows: list[dict], n_val: int, n_test: int, smoke: bool) -> dict:
    """AMP within 1 pt of fp32 (smoke: one image), every latency row measured, agreement >= 0.99."""
    base = next((r for r in runs if r["amp"] == "off" and "error" not in r), None)
    c: dict = {}
    for r in runs:
        if r["amp"] == "off":
            continue
        if "error" in r or base is None:
            c[f"amp_{r['amp']}_within_1pt"] = {"pass": False, "reason": r.get("error", "no fp32 run")}
            continue
        tol = {"val": max(0.01, 1.0 / n_val) if smoke else 0.01, "test": max(0.01, 1.0 / n_test) if smoke else 0.01}
        d = {s: round(r[f"{s}_top1"] - base[f"{s}_top1"], 4) for s in ("val", "test")}
        c[f"amp_{r['amp']}_within_1pt"] = {"pass": all(abs(d[s]) <= tol[s] + 1e-9 for s in d), "diff": d, "tolerance": tol}
    c["fp32_trained"] = {"pass": base is not None}
    for r in rows:
        key = f"{r['runtime']}@b{r['batch']}"
        ok = r["status"] == "ok" and r["agreement_vs_cpu_fp32"] >= 0.99
        c[key] = {"pass": ok, **({"reason": r["reason"]} if "reason" in r else {"agreement": r.get("agreement_vs_cpu_fp32")})}
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="a few images and epochs: checks the path, not the figures")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=10, help="head epochs (on cached features: cheap)")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="fine-tune epochs (default 3; smoke 1)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bench-batch", type=int, nargs="+", default=None, help="default 1 8 64 (smoke: 1 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="checkpoints and model.onnx (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    args.finetune_epochs = args.finetune_epochs or (1 if args.smoke else 3)
    args.bench_batch = args.bench_batch or ([1, 8] if args.smoke else [1, 8, 64])
    t0 = time.perf_counter()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_check", "all_checks_pass": False, "error": "--device cuda but torch sees no CUDA device "
                          f"(torch {torch.__version__}, CUDA {torch.version.cuda}); use --device cpu --smoke here"}))
        return 1
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))  # OUT keeps JSON + logs only (it travels back)
    doc = {"benchmark": "gpu_check", "device": args.device, "smoke": args.smoke, "facts": facts(args.device)}
    train, val, test = splits(args.data, args.smoke, args.seed)
    doc["data"] = {"root": str(args.data), "num_train": len(train), "num_val": len(val), "num_test": len(test),
                   "split": "train/ trains; val/ halved (seeded, stratified) into val (best epoch) and test"}
    amps = [a for a in AMPS if args.device.startswith("cuda") or a != "fp16"]
    runs = []
    for amp in amps:
        print(f"== training, amp {amp}", file=sys.stderr, flush=True)
        try:
            runs.append(train_run(amp, args, train, val, test, work / f"train-{amp}"))
        except Exception as exc:  # noqa: BLE001  (the other settings still run)
            traceback.print_exc()
            runs.append({"amp": amp, "error": f"{type(exc).__name__}: {exc}"[:600]})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    doc["training"] = runs
    rows, doc["export"] = [], None
    base = next((r for r in runs if r["amp"] == "off" and "error" not in r), None)
    if base:
        print("== export + runtimes", file=sys.stderr, flush=True)
        try:
            rows, doc["export"] = bench(Path(base["checkpoint"]), work, test, args)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            doc["export"] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
    doc["runtimes"] = rows
    doc["checks"] = checks(runs, rows, len(val), len(test), args.smoke)
    doc["all_checks_pass"] = all(v["pass"] for v in doc["checks"].values()) and bool(rows)
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    tmp = out / "gpu_check.json.part"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / "gpu_check.json")
    line = {"benchmark": "gpu_check", "device": doc["facts"].get("gpu", args.device), "smoke": args.smoke,
            "all_checks_pass": doc["all_checks_pass"], "wall_s": doc["wall_s"], "setup_s": doc["facts"]["setup_s"],
            "training": {r["amp"]: {k: r.get(k) for k in ("val_top1", "test_top1", "feature_extraction_images_per_s",
                                                        "finetune_images_per_s", "peak_gpu_memory_mib", "error") if k in r}
                         for r in runs},
            "runtimes": {f"{r['runtime']}@b{r['batch']}": ({k: r[k] for k in ("p50_ms", "p99_ms", "throughput_ips", "agreement_vs_cpu_fp32")}
                                                          if r["status"] == "ok" else {"failed": r["reason"][:160]}) for r in rows},
            "failed_checks": [k for k, v in doc["checks"].items() if not v["pass"]], "json": str(out / "gpu_check.json")}
    print(json.dumps(line), flush=True)
    return 0 if doc["all_checks_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
