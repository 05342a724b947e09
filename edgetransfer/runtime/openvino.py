"""OpenVINO runner: the same .onnx files (fp32, fp16, INT8 QDQ) through OpenVINO Runtime.

OpenVINO reads ONNX directly (``Core.read_model``), turns QDQ pairs into its own low-precision
graph (FakeQuantize) and runs INT8 kernels on x86 (VNNI/AMX where present).

Precision is held to the artifact's: for fp32 and INT8 artifacts ``INFERENCE_PRECISION_HINT`` is
``f32`` (OpenVINO's CPU default on bf16-capable CPUs is bf16, which would silently change an fp32
model's numbers); an fp16 artifact keeps the device's default. The precision used is recorded.
``PERFORMANCE_HINT`` is ``LATENCY`` (one stream: per-request latency, what the benchmark measures).
Option names: OpenVINO Runtime documentation, "Inference Devices and Modes" / "CPU Device".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import require
from ..types import Format, Precision, Runtime
from .base import Runner, register_runner

_OV_TYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8", "i64": "int64", "i32": "int32"}


def compile_config(precision: Precision) -> dict[str, Any]:
    """The ``compile_model`` properties the runner starts from: ``PERFORMANCE_HINT`` ``LATENCY``, and
    ``INFERENCE_PRECISION_HINT`` ``f32`` for fp32 and INT8 artifacts (see the module docstring)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if precision in (Precision.FP32, Precision.INT8):
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


@register_runner(Format.ONNX, Runtime.OPENVINO)
class OpenVinoRunner(Runner):
    """``options``: ``device`` (OpenVINO device name, default ``CPU``), ``config`` (extra
    ``compile_model`` properties, e.g. ``{"NUM_STREAMS": 1}``)."""

    backend_module = "openvino"
    extra = "openvino"

    @classmethod
    def options_for(cls, target, manifest=None, cache_dir=None) -> dict[str, Any]:
        device = (getattr(target, "extra", None) or {}).get("openvino_device", "CPU")
        return {"device": device}

    def activate(self) -> None:
        ov = require("openvino", "openvino", "the OpenVINO runner")
        self._core = ov.Core()
        self.device = self.options.get("device", "CPU")
        config = compile_config(self.manifest.precision if self.manifest else Precision.FP32)
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        config.update(self.options.get("config", {}))
        model = self._core.read_model(str(self.path))
        self.compiled = self._core.compile_model(model, self.device, config)
        self.request = self.compiled.create_infer_request()
        self._outputs = [(o.get_any_name(), o) for o in self.compiled.outputs]
        self.active = True

    def _prop(self, name: str):
        try:
            return self.compiled.get_property(name)
        except Exception:
            return None

    @property
    def input_specs(self):
        if getattr(self, "compiled", None) is not None:
            specs = []
            for i in self.compiled.inputs:
                ps = i.get_partial_shape()
                shape = [d.get_length() if d.is_static else ("batch" if k == 0 else f"d{k}") for k, d in enumerate(ps)]
                et = str(i.get_element_type().get_type_name())
                specs.append({"name": i.get_any_name(), "shape": shape, "dtype": _OV_TYPES.get(et, et)})
            return specs
        return super().input_specs

    @property
    def execution_provider(self) -> str:
        if getattr(self, "compiled", None) is None:
            return f"OpenVINO {self.options.get('device', 'CPU')}"
        prec = self._prop("INFERENCE_PRECISION_HINT")
        prec = getattr(prec, "get_type_name", lambda: str(prec))()
        if self.manifest is not None and self.manifest.precision == Precision.INT8:
            prec = f"int8 QDQ, {prec} elsewhere"
        return f"OpenVINO {self.device} ({prec})"

    @property
    def threads_used(self) -> int | None:
        n = self._prop("INFERENCE_NUM_THREADS") if getattr(self, "compiled", None) is not None else None
        return int(n) if n else (self.threads or None)

    def runtime_info(self) -> dict[str, Any]:
        info = super().runtime_info()
        if getattr(self, "compiled", None) is not None:
            info["device_name"] = self._core.get_property(self.device, "FULL_DEVICE_NAME")
            info["num_streams"] = int(self._prop("NUM_STREAMS") or 0) or None
        return info

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: no copy of the input (it is only read during this synchronous call)
        res = self.request.infer(feeds, share_inputs=True)
        return {name: np.asarray(res[port]) for name, port in self._outputs}

    def deactivate(self) -> None:
        self.request = None
        self.compiled = None
        super().deactivate()
