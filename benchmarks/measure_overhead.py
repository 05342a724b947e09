"""Measurement overhead of the benchmark: edgetransfer's compute-only p50 vs a bare
``session.run`` loop on the same ONNX file, in the same process.

The edgetransfer side is exactly what ``edgetransfer benchmark`` times: ``OnnxRuntimeRunner``
(activated with the target's providers) called through ``Runner.__call__`` inside
``bench.latency.measure_latency``. The bare side is the loop a user would write:

    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    t0 = perf_counter(); sess.run(None, {name: x}); t1 = perf_counter()

Both run alternately (ABBA order over ``--rounds`` rounds of ``--seconds`` each) so drift in the
machine's load hits both; the figure is the ratio of the medians of the per-round p50s.
Goal: ratio <= 1.05. The last line printed is the JSON result.

    python benchmarks/measure_overhead.py --onnx runs/bees/model.onnx
    python benchmarks/measure_overhead.py            # a synthetic 224x224 conv net (needs onnx)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgetransfer.artifacts import Manifest, manifest_path  # noqa: E402
from edgetransfer.bench.latency import measure_latency  # noqa: E402
from edgetransfer.runtime.ort import OnnxRuntimeRunner  # noqa: E402
from edgetransfer.targets import load_target  # noqa: E402

GOAL = 1.05


def synthetic_onnx(path: Path, size: int = 224) -> Path:
    """A small conv net (4 strided 3x3 convs + ReLU, global pool, linear) as fp32 ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, ch = [], [], "input", 3
    for i, out_ch in enumerate([16, 32, 64, 128]):
        w = (rng.normal(size=(out_ch, ch, 3, 3)) * np.sqrt(2 / (ch * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, ch = f"r{i}", out_ch
    inits.append(numpy_helper.from_array(rng.normal(size=(ch, 10)).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gp"]), helper.make_node("Flatten", ["gp"], ["f"]),
              helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    g = helper.make_graph(nodes, "synthetic", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, help="ONNX file (default: a synthetic conv net)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for both sides (0 = ORT default)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per side (ABBA order)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per round and side")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--target", default="x86-cpu")
    args = ap.parse_args()

    import onnxruntime as ort

    tmp = None
    path = args.onnx
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = synthetic_onnx(Path(tmp.name) / "synthetic.onnx")
    manifest = None
    if manifest_path(path).is_file():
        manifest = Manifest.from_dict(json.loads(manifest_path(path).read_text()))
    target = load_target(args.target)

    runner = OnnxRuntimeRunner(path, manifest, threads=args.threads, options=OnnxRuntimeRunner.options_for(target, manifest))
    runner.activate()
    so = ort.SessionOptions()
    if args.threads:
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
    bare = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    inp = bare.get_inputs()[0]
    size = [d if isinstance(d, int) else args.batch for d in inp.shape]
    x = np.random.default_rng(0).normal(size=size).astype(np.float32)
    feeds = {inp.name: x}
    assert np.allclose(runner(x), bare.run(None, feeds)[0], atol=1e-4), "the two sessions disagree"

    def edgetransfer_round() -> float:
        return measure_latency(lambda: runner(x), args.batch, warmup=args.warmup, min_iterations=1,
                               min_seconds=args.seconds, sync=runner.synchronize).p50_ms

    def bare_round() -> float:
        for _ in range(args.warmup):
            bare.run(None, feeds)
        times, clock = [], time.perf_counter
        end = clock() + args.seconds
        while True:
            t0 = clock()
            bare.run(None, feeds)
            t1 = clock()
            times.append((t1 - t0) * 1e3)
            if t1 >= end:
                break
        return float(np.percentile(times, 50))

    et, br = [], []
    for r in range(args.rounds):
        order = [(edgetransfer_round, et), (bare_round, br)]
        if r % 2:
            order.reverse()
        for fn, sink in order:
            sink.append(fn())
        print(f"round {r + 1}/{args.rounds}: edgetransfer p50 {et[-1]:.4f} ms, bare session.run p50 {br[-1]:.4f} ms", file=sys.stderr)
    runner.deactivate()
    p_et, p_br = float(np.median(et)), float(np.median(br))
    ratio = p_et / p_br
    result = {
        "benchmark": "measure_overhead", "onnx": str(args.onnx or "synthetic conv net 224x224"), "batch": args.batch,
        "threads": args.threads or f"onnxruntime default ({os.cpu_count()} logical CPUs)", "rounds": args.rounds,
        "seconds_per_round": args.seconds, "edgetransfer_p50_ms": round(p_et, 5), "bare_p50_ms": round(p_br, 5),
        "per_round_ratio": [round(a / b, 4) for a, b in zip(et, br)], "ratio": round(ratio, 4),
        "overhead_pct": round((ratio - 1) * 100, 2), "goal_ratio": GOAL, "within_goal": ratio <= GOAL,
        "onnxruntime": ort.__version__,
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
