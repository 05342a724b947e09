"""Core ML runner for ``.mlpackage`` classifiers (macOS only).

Core ML predictions need Apple's Core ML framework: on any other host this runner reports
``not runnable on this host`` and the benchmark writes that row without a number. On macOS it feeds
the model's image input: the float32 NCHW batch is turned back into the RGB pixels it was made from
(``pixel = (x * std + mean) * 255``, exact up to rounding since the preprocessing started from 8-bit
pixels), the model applies its folded scale/bias itself, and the class probabilities come back in
class-index order. This path is not exercised by this repository's tests (no macOS host in CI).
"""

from __future__ import annotations

import sys

import numpy as np

from ..errors import require
from ..types import Format, Runtime, Status
from .base import Runner, register_runner


@register_runner(Format.MLPACKAGE, Runtime.COREML)
class CoreMlRunner(Runner):
    backend_module = "coremltools"
    extra = "coreml"

    unavailable_status = Status.NOT_RUNNABLE  # off macOS no install can make it run

    @classmethod
    def is_available(cls) -> bool:
        return sys.platform == "darwin" and super().is_available()

    @classmethod
    def unavailable_reason(cls) -> str:
        if sys.platform != "darwin":
            return f"not runnable on this host: Core ML predictions need macOS (this host is {sys.platform})"
        return super().unavailable_reason()

    def activate(self) -> None:
        ct = require("coremltools", self.extra, "the Core ML runner")
        self.model = ct.models.MLModel(str(self.path))
        pre = (self.manifest.preprocessing if self.manifest else {}) or {}
        self._mean = np.asarray(pre.get("mean", (0.485, 0.456, 0.406)), np.float32).reshape(3, 1, 1)
        self._std = np.asarray(pre.get("std", (0.229, 0.224, 0.225)), np.float32).reshape(3, 1, 1)
        self._input = self.manifest.inputs[0]["name"] if self.manifest and self.manifest.inputs else "image"  # the model's ImageType
        self._classes = list(self.manifest.class_names) if self.manifest else []
        self.active = True

    @property
    def input_specs(self):
        """Takes the preprocessed float32 batch like every runner (turned back into pixels in infer)."""
        s = int(self.manifest.preprocessing.get("input_size", 224)) if self.manifest else 224
        return [{"name": "input", "shape": [1, 3, s, s], "dtype": "float32"}]

    @property
    def execution_provider(self) -> str:
        return "coreml (compute units: all)"

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        x = np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32)
        rows = []
        for img in x:
            pix = np.clip(np.round((img * self._std + self._mean) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
            probs = self.model.predict({self._input: Image.fromarray(pix, "RGB")})["classLabel_probs"]
            rows.append([float(probs[c]) for c in self._classes])
        return {"probabilities": np.asarray(rows, np.float32)}

    def deactivate(self) -> None:
        self.model = None
        super().deactivate()
