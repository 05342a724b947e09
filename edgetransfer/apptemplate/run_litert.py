"""The bundle's .tflite model in the LiteRT interpreter (pip install ai-edge-litert, or
tflite-runtime, plus numpy pillow): see edgeapp.py. An int8 input is quantised with the file's
own scale and zero point; an int8 output dequantised the same way."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edgeapp  # noqa: E402


def make_infer(model, cfg):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    threads = cfg.get("threads") or None
    if threads and hasattr(os, "sched_getaffinity"):  # the target's count, never more than this process may use
        threads = min(threads, len(os.sched_getaffinity(0)))
    it = Interpreter(model_path=model, num_threads=threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    nhwc = len(inp["shape"]) == 4 and inp["shape"][-1] == 3

    def infer(x):
        if nhwc and x.shape[-1] != 3:
            x = x.transpose(0, 2, 3, 1)
        if not nhwc and x.shape[1] != 3:
            x = x.transpose(0, 3, 1, 2)
        scale, zero = inp.get("quantization", (0.0, 0))
        if inp["dtype"] != np.float32 and scale:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], np.ascontiguousarray(x))
        it.invoke()
        y = it.get_tensor(out["index"])
        scale, zero = out.get("quantization", (0.0, 0))
        return (y.astype(np.float32) - zero) * scale if out["dtype"] != np.float32 and scale else y

    return infer


if __name__ == "__main__":
    edgeapp.main(make_infer, "litert")
