"""End-to-end latency (JPEG bytes -> top-k) with ONNX Runtime's intra-op spinning on (its default)
and off, interleaved in one run so a loaded host affects both alike.

    nice -n 10 python benchmarks/ort_spin.py BUNDLE [--threads 2] [--rounds 3] [--artifact model.onnx]

Prints the p50 of each setting per round and the median ratio off/on. Spinning idle pool threads
busy-wait on the cores the image decoder needs, which shows when threads == usable CPUs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from edgetransfer.artifacts import read_manifest
from edgetransfer.bench.e2e import encoded_payloads, measure_end_to_end
from edgetransfer.bundle import Bundle
from edgetransfer.data import PreprocessSpec
from edgetransfer.host import usable_cpus
from edgetransfer.runtime.ort import OnnxRuntimeRunner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--artifact", default="model.onnx")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (default: the usable CPUs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=40)
    a = ap.parse_args()
    threads = a.threads or usable_cpus()
    path = a.bundle / a.artifact
    m = read_manifest(path)
    spec = PreprocessSpec.from_dict(m.preprocessing)
    payloads = encoded_payloads(Bundle(a.bundle).folder("val").samples, 16, policy=spec.image)
    ratios = []
    for r in range(a.rounds):
        p50 = {}
        for label, spin in (("on", None), ("off", False)):
            with OnnxRuntimeRunner(path, m, threads=threads, options={"spinning": spin} if spin is not None else {}) as runner:
                st = measure_end_to_end(runner, spec, m.class_names, payloads, warmup=5, min_iterations=a.iterations, min_seconds=0.0)
            p50[label] = st.latency.p50_ms
        ratios.append(p50["off"] / p50["on"])
        print(f"round {r + 1}: e2e p50 spinning on {p50['on']:.1f} ms, off {p50['off']:.1f} ms ({threads} threads, {usable_cpus()} usable CPUs)")
    print(f"median ratio off/on: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
