"""The bundle's ONNX model in ONNX Runtime (pip install onnxruntime numpy pillow): see edgeapp.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edgeapp  # noqa: E402


def make_infer(model, cfg):
    import onnxruntime as ort

    so = ort.SessionOptions()
    threads = cfg.get("threads") or 0
    if threads and hasattr(os, "sched_getaffinity"):  # the target's count, never more than this process may use
        threads = min(threads, len(os.sched_getaffinity(0)))
    if threads:
        so.intra_op_num_threads = threads
    providers = [p for p in cfg.get("providers") or [] if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(model, so, providers=providers)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


if __name__ == "__main__":
    edgeapp.main(make_infer, "onnxruntime")
