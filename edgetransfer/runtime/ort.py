"""ONNX Runtime runner for .onnx (fp32, fp16, INT8 QDQ) files."""

from __future__ import annotations

import numpy as np

from ..errors import require
from ..types import Format, Runtime
from .base import Runner, register_runner


def make_session(path, threads: int = 0, providers: list[str] | None = None, optimize: bool = True):
    """An ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads (0 = default) and
    graph optimisations ALL (or none with ``optimize=False``)."""
    ort = require("onnxruntime", "device", "ONNX Runtime inference")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    avail = ort.get_available_providers()
    prov = [p for p in (providers or ["CPUExecutionProvider"]) if _provider_name(p) in avail] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=so, providers=prov)


def _provider_name(p) -> str:
    return p[0] if isinstance(p, (tuple, list)) else p


def execution_providers(names, *, precision: str | None = None, cache_dir=None) -> list:
    """ONNX Runtime providers for a target's ``ort_providers`` (names in priority order), with
    options for the TensorRT execution provider.

    TensorRT EP: engine and timing caches under ``cache_dir`` (the caller keys it by the model's
    sha256, so a new ONNX never meets a stale engine); ``trt_int8_enable`` for an INT8 Q/DQ model
    (TensorRT before 11 builds explicit quantization only with its INT8 flag). Never
    ``trt_fp16_enable``: an fp32 model would then run in fp16 under an fp32 name. Providers that
    are not installed are dropped by :func:`make_session` (the report shows the provider used).
    """
    out: list = []
    for name in names:
        if name == "TensorrtExecutionProvider":
            opts: dict = {"trt_int8_enable": precision == "int8"}
            if cache_dir is not None:
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir),
                            trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
            out.append((name, opts))
        else:
            out.append(name)
    return out


@register_runner(Format.ONNX, Runtime.ONNXRUNTIME)
class OnnxRuntimeRunner(Runner):
    backend_module = "onnxruntime"
    extra = "device"

    def activate(self) -> None:
        self.session = make_session(self.path, self.threads, self.options.get("providers"), self.options.get("optimize", True))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.active = True

    @property
    def input_specs(self):
        if getattr(self, "session", None) is not None:
            return [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape],
                     "dtype": {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(i.type, i.type)}
                    for i in self.session.get_inputs()]
        return super().input_specs

    @property
    def execution_provider(self) -> str:
        return self.session.get_providers()[0] if getattr(self, "session", None) else "CPUExecutionProvider"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()


@register_runner(Format.ORT, Runtime.ONNXRUNTIME)
class OrtFormatRunner(OnnxRuntimeRunner):
    """ONNX Runtime on an ORT-format (``.ort``) flatbuffer, as a mobile/minimal build loads it.

    The full ONNX Runtime package reads ``.ort`` files too (the format is recognised by its
    extension), so the file is measured here with the same session options as a ``.onnx`` file.
    """
