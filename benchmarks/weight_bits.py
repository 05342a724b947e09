"""8-bit vs 7-bit (ONNX Runtime ``reduce_range``) vs U8U8 INT8 weights on this CPU, in one run.

    python benchmarks/weight_bits.py BUNDLE [--calib 128]

BUNDLE: a finished bundle (e.g. runs/demo after ``make demo``). One set of minmax activation ranges
from up to ``--calib`` training images; three plain QDQ files of the x86-cpu preset, no ladder:
``u8s8_8bit`` (reduce_range off), ``u8s8_7bit`` (reduce_range on, weights in [-64, 64]) and
``u8u8_8bit`` (uint8 asymmetric weights, ONNX Runtime's other remedy for saturation). For each, on
the bundle's INT8-decision val images: agreement and top-1 vs the fp32 ONNX model, mean KL (nats),
mean |logit difference| between ONNX Runtime graph optimisations on and off relative to the
mean |off logit| (large where the fused kernels saturate), and ONNX Runtime b1 median ms
(``graphstats.b1_ms``; the fp32 figure measured in the same run). Prints one JSON line at the end.

Measured 2026-12-07 on a 2-CPU AMD EPYC with AVX2 and no VNNI, digits bundle of ``make demo`` (359 val
images), two runs: 8-bit agreement 0.465 (on/off 78 %), 7-bit 0.922 (2.3 %) at 0.66-0.76x fp32's b1,
U8U8 0.958 at 6.7-9.3x fp32's b1 (83-86 ms vs fp32 9.2-12.4 ms: the host's timings drift between runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

from edgetransfer.artifacts import read_manifest
from edgetransfer.bundle import Bundle
from edgetransfer.data import PreprocessSpec, load_arrays
from edgetransfer.host import cpu_info, int8_saturates
from edgetransfer.quantize.calibration import CalibrationRecipe, cached_ranges
from edgetransfer.quantize.graphstats import b1_ms
from edgetransfer.quantize.ort_qdq import op_types_to_quantize, preprocess, quantize_with_ranges
from edgetransfer.runtime.ort import onnx_logits
from edgetransfer.targets import QuantizationPreset

VARIANTS = {
    "u8s8_8bit": QuantizationPreset(reduce_range=False),
    "u8s8_7bit": QuantizationPreset(reduce_range=True),
    "u8u8_8bit": QuantizationPreset(weight_type="uint8", symmetric_weights=False, reduce_range=False),
}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--calib", type=int, default=128)
    a = ap.parse_args()
    b = Bundle(a.bundle)
    spec = PreprocessSpec.from_dict(read_manifest(b.checkpoint).preprocessing)
    x, y = b.decision_arrays(spec)
    train = b.folder("train").samples
    cx, _ = load_arrays(train[:: max(len(train) // a.calib, 1)][: a.calib], spec)
    recipe = CalibrationRecipe()
    out: dict = {"cpu": cpu_info()["cpu"], "arch": platform.machine(), "cpu_saturates_u8s8": int8_saturates(),
                 "val_images": int(len(x)), "calibration_images": int(len(cx))}
    with tempfile.TemporaryDirectory(prefix="weight-bits-") as td:
        td = Path(td)
        pre = td / "pre.onnx"
        preprocess(b.path("model.onnx"), pre)
        ref = onnx_logits(pre, x)
        lp = _log_softmax(ref)
        ranges = cached_ranges(pre, "weight-bits", cx, "input", recipe, VARIANTS["u8s8_8bit"], td / "cache",
                               op_types_to_quantize())
        out["fp32"] = {"top1": float((ref.argmax(1) == y).mean()), "b1_ms": b1_ms(pre, x[:1])}
        for name, preset in VARIANTS.items():
            q = td / f"{name}.onnx"
            quantize_with_ranges(pre, q, ranges.path, preset, recipe)
            on, off = onnx_logits(q, x), onnx_logits(q, x, optimize=False)
            r = {"agreement": float((on.argmax(1) == ref.argmax(1)).mean()), "top1": float((on.argmax(1) == y).mean()),
                 "mean_kl": float((np.exp(lp) * (lp - _log_softmax(on))).sum(1).mean()),
                 "on_off_rel_diff": float(np.abs(on - off).mean() / np.abs(off).mean()), "b1_ms": b1_ms(q, x[:1])}
            r["b1_vs_fp32"] = r["b1_ms"] / out["fp32"]["b1_ms"]
            out[name] = r
            print(name, json.dumps(r), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
