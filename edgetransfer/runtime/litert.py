"""LiteRT (TensorFlow Lite) runner for ``.tflite`` files, fp32 and full-integer INT8.

Uses ``ai_edge_litert.interpreter.Interpreter`` (its default op resolver applies the XNNPACK
delegate on CPU). A full-integer model takes and returns int8 tensors; the runner quantizes the
float32 input with the input tensor's own scale and zero point
(``q = clip(round(x / scale) + zero_point)``) and dequantizes the output
(``x = (q - zero_point) * scale``), so callers always exchange float32, like with every other runner.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, require
from ..types import Format, Runtime
from .base import Runner, register_runner


def quantize_tensor(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """float32 -> integer tensor of ``dtype`` with the affine parameters of a TFLite tensor."""
    info = np.iinfo(dtype)
    q = np.round(x / np.float32(scale)) + int(zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_tensor(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor -> float32 with the affine parameters of a TFLite tensor."""
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


@register_runner(Format.TFLITE, Runtime.LITERT)
class LiteRtRunner(Runner):
    """``threads``: XNNPACK/interpreter threads (0 = LiteRT's default)."""

    backend_module = "ai_edge_litert"
    distributions = ("ai-edge-litert",)
    extra = "device-litert"  # the runtime alone; edgetransfer[litert] (converters) includes it

    def activate(self) -> None:
        interp = require("ai_edge_litert.interpreter", self.extra, "the LiteRT runner")
        self.interpreter = interp.Interpreter(model_path=str(self.path), num_threads=self.threads or None)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self.active = True

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        """What this runner is fed: float32 of the file's input shape (an int8 input is quantised
        here with the file's scale and zero point; the manifest records the file's own dtype)."""
        if self.manifest and self.manifest.inputs:
            return [{**i, "dtype": "float32"} for i in self.manifest.inputs]
        if getattr(self, "_in", None) is not None:
            return [{"name": "input", "shape": [int(d) for d in self._in["shape"]], "dtype": "float32"}]
        return super().input_specs

    @property
    def execution_provider(self) -> str:
        if not getattr(self, "_in", None):
            return "litert"
        kind = "int8 in/out" if self._in["dtype"] != np.float32 else "float32 in/out"
        return f"litert-cpu (XNNPACK, {self.threads or 'default'} threads, {kind})"

    @property
    def io_quantization(self) -> dict[str, Any]:
        """Scale/zero point/dtype of the input and output tensors (empty scale = float tensor)."""
        return {k: {"dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}
                for k, d in (("input", self._in), ("output", self._out))}

    def _ensure_batch(self, shape: tuple[int, ...]) -> None:
        if tuple(self._in["shape"]) == tuple(shape):
            return
        try:
            self.interpreter.resize_tensor_input(self._in["index"], list(shape), strict=False)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ConfigError(f"{self.path.name} has a static input shape {list(self._in['shape'])} and cannot take "
                              f"{list(shape)} ({exc}); feed batch {self._in['shape'][0]}") from exc
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32)
        self._ensure_batch(x.shape)
        dt = self._in["dtype"]
        if dt != np.float32:
            scale, zp = self._in["quantization"]
            if not scale:
                raise ConfigError(f"{self.path.name}: integer input without a scale; cannot quantize float32 images for it")
            x = quantize_tensor(x, scale, zp, np.dtype(dt))
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        if self._out["dtype"] != np.float32:
            scale, zp = self._out["quantization"]
            y = dequantize_tensor(y, scale, zp)
        return {"logits": np.array(y, dtype=np.float32, copy=True)}

    def deactivate(self) -> None:
        self.interpreter = None
        self._in = self._out = None
        super().deactivate()
