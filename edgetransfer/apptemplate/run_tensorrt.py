"""The bundle's TensorRT engine through the TensorRT Python API (JetPack's python3-libnvinfer, or
pip install tensorrt) and cuda-python for device memory: see edgeapp.py. The engine must have been
built on this board's TensorRT (edgetransfer build BUNDLE --target T, or build_engine.sh).
Not run by edgetransfer's tests (no GPU there)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edgeapp  # noqa: E402


def make_infer(model, cfg):
    import tensorrt as trt
    from cuda import cudart  # pip install cuda-python

    def ok(res):
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    logger = trt.Logger(trt.Logger.WARNING)
    with open(model, "rb") as fh:
        engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    outn = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    stream = ok(cudart.cudaStreamCreate())
    bufs = {}

    def infer(x):
        ctx.set_input_shape(inp, x.shape)
        y = np.empty(tuple(ctx.get_tensor_shape(outn)), dtype=trt.nptype(engine.get_tensor_dtype(outn)))
        for n, a in ((inp, x), (outn, y)):
            if bufs.get(n, (0, None))[0] < a.nbytes:
                bufs[n] = (a.nbytes, ok(cudart.cudaMalloc(a.nbytes)))
            ctx.set_tensor_address(n, bufs[n][1])
        H2D, D2H = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        xh = np.ascontiguousarray(x.astype(trt.nptype(engine.get_tensor_dtype(inp))))  # alive until the stream syncs
        ok(cudart.cudaMemcpyAsync(bufs[inp][1], xh.ctypes.data, xh.nbytes, H2D, stream))
        ctx.execute_async_v3(stream)
        ok(cudart.cudaMemcpyAsync(y.ctypes.data, bufs[outn][1], y.nbytes, D2H, stream))
        ok(cudart.cudaStreamSynchronize(stream))
        return y.astype(np.float32)

    return infer


if __name__ == "__main__":
    edgeapp.main(make_infer, "tensorrt")
