"""ONNX Runtime runner for .onnx (fp32, fp16, INT8 QDQ) files.

Execution providers come from the target profile (``execution_providers``, priority order, e.g.
``[TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]``). Providers the
installed onnxruntime build lacks are skipped, and the row records both the requested and the
used chain, so a CPU fallback is never reported as a GPU figure.

Timing: ``InferenceSession.run`` with numpy inputs returns numpy outputs copied to host memory,
so it returns only after the device finished; no extra synchronisation is needed before reading
the clock (ONNX Runtime Python API, "Data on device" section: IO binding is the asynchronous path,
which this runner does not use).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..host import usable_cpus
from ..errors import require
from ..types import Format, Precision, Runtime
from .base import _DTYPES, Runner, register_runner

CPU_EP = "CPUExecutionProvider"


def tensorrt_ep_options(precision: str | None, cache_dir: Path | None) -> dict[str, Any]:
    """TensorRT EP options for an artifact of ``precision``: FP16 kernels for fp16 artifacts,
    INT8 for INT8 QDQ artifacts (explicit quantization, no calibration table), and an engine
    cache under ``cache_dir`` so the engine is built once per device, not on every run.
    Option names: ONNX Runtime TensorRT EP documentation (``trt_*`` provider options)."""
    opts: dict[str, Any] = {"trt_fp16_enable": precision == Precision.FP16, "trt_int8_enable": precision == Precision.INT8}
    if cache_dir is not None:
        opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir), trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(cache_dir))
    return opts


def resolve_providers(requested: list[Any] | None, available: list[str]) -> tuple[list[Any], list[str]]:
    """Keep the requested providers (names or ``(name, options)`` pairs) that ``available`` lists,
    in order, always ending with the CPU provider. Returns ``(providers, missing names)``."""
    chain, missing = [], []
    for p in requested or [CPU_EP]:
        name = p[0] if isinstance(p, (tuple, list)) else p
        (chain if name in available else missing).append(p)
    if not any((p[0] if isinstance(p, (tuple, list)) else p) == CPU_EP for p in chain):
        chain.append(CPU_EP)
    return chain, missing


def make_session(path, threads: int = 0, providers: list[Any] | None = None, optimize: bool = True, spinning: bool | None = None):
    """An ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads (0 = ONNX Runtime's
    default: one per physical core, whatever the affinity mask or cgroup quota), graph
    optimisations ALL (or none with ``optimize=False``) and the requested providers that this
    build has (see :func:`resolve_providers`). ``spinning=False`` sets
    ``session.intra_op.allow_spinning`` to 0 (idle pool threads sleep instead of busy-waiting, so
    they do not steal a core from the image decoder; None: ONNX Runtime's default, spinning on)."""
    ort = require("onnxruntime", "device", "ONNX Runtime inference")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    chain, _ = resolve_providers(providers, ort.get_available_providers())
    return ort.InferenceSession(str(path), sess_options=so, providers=chain)


def onnx_logits(path: Path, x: np.ndarray, batch: int = 32, **session_kw) -> np.ndarray:
    """Logits float32 (N, C) of the ONNX model at ``path`` on ``x`` float32 (N, 3, S, S), in batches
    of ``batch`` (``session_kw``: :func:`make_session`'s threads / providers / optimize)."""
    sess = make_session(path, **session_kw)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, 0))


@register_runner(Format.ONNX, Runtime.ONNXRUNTIME)
class OnnxRuntimeRunner(Runner):
    """``options``: ``providers`` (names or ``(name, options)`` pairs, priority order),
    ``optimize`` (graph optimisations, default True), ``spinning`` (intra-op thread spinning;
    default: ONNX Runtime's, on)."""

    backend_module = "onnxruntime"
    distributions = ("onnxruntime", "onnxruntime-gpu")
    extra = "device"

    @classmethod
    def options_for(cls, target, manifest=None, cache_dir=None) -> dict[str, Any]:
        names = list(getattr(target, "execution_providers", ()) or ()) or [CPU_EP]
        precision = manifest.precision if manifest else None
        providers: list[Any] = []
        for n in names:
            if n == "TensorrtExecutionProvider":
                providers.append((n, tensorrt_ep_options(precision, cache_dir)))
            else:
                providers.append(n)
        preset = ((manifest.details or {}).get("preset") or {}) if manifest else {}
        if preset.get("high_precision_dtype") == "fp16":
            # Q/DQ over fp16 tensors (TensorRT's fp16 remainder): ORT's WeightBiasQuantization graph
            # optimizer computes the int32 bias scale in fp16, which underflows (measured on
            # EfficientNet-Lite0: top-1 agreement 0.44 with it, 0.99 without); run reference semantics
            return {"providers": providers, "optimize": False}
        return {"providers": providers}

    def activate(self) -> None:
        ort = require("onnxruntime", "device", "ONNX Runtime inference")
        requested = self.options.get("providers")
        self._missing = resolve_providers(requested, ort.get_available_providers())[1]
        self._requested = [p[0] if isinstance(p, (tuple, list)) else p for p in (requested or [CPU_EP])]
        self.session = make_session(self.path, self.threads, requested, self.options.get("optimize", True), self.options.get("spinning"))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.active = True

    @property
    def input_specs(self):
        if getattr(self, "session", None) is not None:
            return [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape],
                     "dtype": _DTYPES.get(i.type, i.type)} for i in self.session.get_inputs()]
        return super().input_specs

    @property
    def execution_provider(self) -> str:
        return self.session.get_providers()[0] if getattr(self, "session", None) else CPU_EP

    @property
    def threads_used(self) -> int | None:
        if self.threads:
            return self.threads
        return None  # ONNX Runtime's default (physical cores); the session does not report it

    def runtime_info(self) -> dict[str, Any]:
        info = super().runtime_info()
        sess = getattr(self, "session", None)
        info["providers"] = sess.get_providers() if sess is not None else None
        info["requested_providers"] = getattr(self, "_requested", None)
        if self.threads_used is None:
            info["threads_note"] = (f"onnxruntime default (one per physical core of {os.cpu_count()} logical CPUs, "
                                    f"whatever the {usable_cpus()} usable: pass --threads)")
        spin = self.options.get("spinning")
        info["intra_op_spinning"] = "on (onnxruntime default)" if spin is None else ("on" if spin else "off")
        if self.options.get("optimize") is False:
            info["graph_optimizations"] = "off (reference Q/DQ semantics)"
        if getattr(self, "_missing", None):
            names = [p[0] if isinstance(p, (tuple, list)) else p for p in self._missing]
            info["fallback"] = (f"{', '.join(names)} requested by the target but not in this onnxruntime build; "
                                "install the onnxruntime-gpu / Jetson wheel with those providers")
        return info

    def end_to_end_variant(self) -> "OnnxRuntimeRunner | None":
        if self.options.get("spinning") is False:
            return None
        return type(self)(self.path, self.manifest, threads=self.threads, options={**self.options, "spinning": False})

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
