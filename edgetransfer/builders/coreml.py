"""``MlpackageFromTorch``: an edgetransfer checkpoint -> Core ML ``.mlpackage`` classifier (iOS).

Route: ``torch.export`` (batch 1) -> ``coremltools.convert`` to an ML program (the
``torch.jit.trace`` route fails on timm's TF-style "same" padding of EfficientNet-Lite). The model is
built so that an iOS app can hand it a camera frame directly:

* input ``image``: an RGB ``ImageType`` of the model's input size, with the preprocessing folded
  in. Core ML computes ``scale * pixel + bias[c]`` with ONE scale for all channels; when the std is
  the same for the three channels (EfficientNet-Lite: mean = std = 0.5) the whole normalisation is
  that affine map (``scale = 1 / (255 std)``, ``bias = -mean / std``); otherwise Core ML scales to
  [0, 1] and a per-channel ``(x - mean) / std`` is the model's first layer. Resizing and cropping
  stay with the app (Vision: ``VNImageCropAndScaleOption.centerCrop``).
* outputs ``classLabel`` (string) and ``classLabel_probs`` (class -> probability, softmax of the
  logits), the class labels embedded in the model.

Precisions: ``fp16`` (``compute_precision=FLOAT16``, what the Neural Engine executes) and ``int8``
weights (``coremltools.optimize.coreml.linear_quantize_weights``, symmetric per-channel int8 weights
dequantized on load; activations stay fp16 — the manifest says so, the precision is not INT8
compute). No fp32 variant: the Neural Engine runs fp16 only.

Parity: Core ML predictions need macOS, so the converted model's outputs cannot be measured on
Linux and the manifest says ``parity: not measured`` with the reason. What is measured here is the
preprocessing fold: the exported PyTorch graph (folded affine + model + softmax) fed 8-bit RGB pixels
exactly as Core ML applies ``scale``/``bias``, against the fp32 model on the normally preprocessed
validation images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import FORMAT_FILES
from ..errors import ConfigError, require
from ..parity import judge
from ..progress import log
from ..types import Format, Precision
from .base import Builder, register_builder

INPUT_NAME = "image"
DEFAULT_DEPLOYMENT_TARGET = "iOS17"  # ML programs with per-channel int8 weights (constexpr ops): iOS 16+


def folded_preprocessing(mean, std) -> tuple[float, list[float], np.ndarray | None, np.ndarray | None]:
    """Core ML ``ImageType`` ``(scale, bias)`` for ``(pixel / 255 - mean) / std`` and, when std
    differs per channel, the per-channel ``(mul, add)`` the model must apply after them.

    Returns ``(scale, bias[3], mul[3] | None, add[3] | None)``; the model input is then
    ``(scale * pixel + bias) * mul + add`` (mul/add omitted when None).
    """
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    if np.allclose(std, std[0], rtol=0, atol=1e-12):
        return float(1.0 / (255.0 * std[0])), [float(v) for v in -mean / std], None, None
    return 1.0 / 255.0, [0.0, 0.0, 0.0], (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)


def _wrapper(model, mul, add):
    torch = require("torch", "train")

    class ImageClassifier(torch.nn.Module):
        """(folded per-channel affine) -> model -> softmax over classes."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.affine = mul is not None
            if self.affine:
                self.register_buffer("mul", torch.from_numpy(mul).reshape(1, 3, 1, 1))
                self.register_buffer("add", torch.from_numpy(add).reshape(1, 3, 1, 1))

        def forward(self, x):
            if self.affine:
                x = x * self.mul + self.add
            return torch.softmax(self.model(x), dim=1)

    return ImageClassifier().eval()


@register_builder(Format.MLPACKAGE)
class MlpackageFromTorch(Builder):
    extra = "coreml"
    backend_modules = ("coremltools",)
    precisions = (Precision.FP16, Precision.INT8)
    file_names = {Precision(k): v for k, v in FORMAT_FILES["mlpackage"].items()}
    producer = "edgetransfer.builders.coreml"
    version_modules = ("torch", "coremltools")
    parity_reference_name = "pytorch fp32 checkpoint"

    def _affine(self):
        return folded_preprocessing(self.spec.mean, self.spec.std)

    _program = None
    _fp16 = None  # the fp16 ML program, reused by the int8-weight variant
    _fold = None  # the preprocessing-fold figures (the same for both precisions)

    def _exported(self):
        """The ExportedProgram (folded affine + model + softmax) given to coremltools; built once."""
        if self._program is None:
            torch = require("torch", "train")
            from ..checkpoint import load_checkpoint

            model, _ = load_checkpoint(self.source)
            _, _, mul, add = self._affine()
            s = self.spec.input_size
            with torch.no_grad():
                self._program = torch.export.export(_wrapper(model.eval(), mul, add), (torch.zeros(1, 3, s, s),)).run_decompositions({})
        return self._program

    def convert(self, precision: Precision, out: Path) -> dict[str, Any]:
        ct = require("coremltools", self.extra, "Core ML conversion")
        scale, bias, mul, _ = self._affine()
        target_name = str(self.inputs.options.get("coreml_minimum_deployment_target", DEFAULT_DEPLOYMENT_TARGET))
        if not hasattr(ct.target, target_name):
            raise ConfigError(f"unknown Core ML deployment target {target_name!r}; use e.g. iOS16, iOS17, iOS18")
        s = self.spec.input_size
        if self._fp16 is None:
            self._fp16 = ct.convert(
                self._exported(),
                inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, 3, s, s), scale=scale, bias=bias, color_layout=ct.colorlayout.RGB)],
                classifier_config=ct.ClassifierConfig(list(self.class_names)),
                convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                minimum_deployment_target=getattr(ct.target, target_name),
            )
        mlmodel = self._fp16
        details: dict[str, Any] = {
            "converter": "coremltools.convert(torch.export)", "minimum_deployment_target": target_name,
            "compute_precision": "float16", "batch": 1,
            "image_input": {"name": INPUT_NAME, "color_layout": "RGB", "scale": scale, "bias": bias,
                            "per_channel_affine_in_model": mul is not None,
                            "app_does": f"resize + center-crop to {s}x{s} (Vision: .centerCrop)"},
            "outputs": {"classLabel": "predicted class name", "classLabel_probs": "softmax probability per class"},
        }
        if precision == Precision.INT8:
            import coremltools.optimize.coreml as cto

            cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel"))
            mlmodel = cto.linear_quantize_weights(mlmodel, cfg)
            details.update({"weights": "int8 per-channel symmetric (linear_quantize_weights)", "activations": "float16",
                            "weight_only": True})
        else:
            details.update({"weights": "float16", "activations": "float16"})
        mlmodel.short_description = f"edgetransfer image classifier ({len(self.class_names)} classes)"
        mlmodel.user_defined_metadata["class_names"] = json.dumps(self.class_names)
        mlmodel.save(str(out))
        return details

    def candidate_logits(self, path: Path, x: np.ndarray) -> None:
        return None  # Core ML predictions need macOS

    def parity(self, path: Path, precision: Precision) -> dict[str, Any]:
        """Not measurable off macOS; the preprocessing fold is measured instead (see module doc)."""
        if self._fold is None:
            self._fold = self._fold_parity()
        stats = self._fold
        log(f"Core ML {precision}: preprocessing fold checked in PyTorch on {stats.num_samples} images "
            f"(max |prob diff| {stats.max_abs:.2e}, agreement {stats.agreement:.4f}); predictions not measured (need macOS)")
        out: dict[str, Any] = {
            "parity": None,
            "parity_status": "not measured: Core ML predictions need macOS",
            "parity_vs": self.parity_reference_name,
            "preprocessing_fold_parity": {**stats.to_dict(), "quantity": "softmax probabilities",
                                          "what": "PyTorch graph exported to Core ML, fed 8-bit RGB pixels through the folded scale/bias"},
        }
        if self.inputs.parity_y is not None:
            out["val_top1_fp32"] = float((self.reference.argmax(1) == self.inputs.parity_y).mean())
        return out

    def _fold_parity(self):
        torch = require("torch", "train")
        x = self.inputs.parity_x
        scale, bias, _, _ = self._affine()
        mean = np.asarray(self.spec.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.spec.std, np.float32).reshape(1, 3, 1, 1)
        pixels = np.clip(np.round((x * std + mean) * 255.0), 0, 255)  # the 8-bit RGB image the app would feed
        core_in = (pixels * np.float32(scale) + np.asarray(bias, np.float32).reshape(1, 3, 1, 1)).astype(np.float32)
        graph = self._exported().module()
        with torch.no_grad():
            probs = np.concatenate([graph(torch.from_numpy(core_in[i : i + 1])).numpy() for i in range(len(x))])
        ref = self.reference
        ref_probs = np.exp(ref - ref.max(1, keepdims=True))
        ref_probs /= ref_probs.sum(1, keepdims=True)
        stats = judge(ref_probs, probs, "fp32", output="classLabel_probs",
                      what=f"Core ML image input (scale {scale:.6g}, bias {bias}) vs the model's preprocessing").raise_for().stats
        return stats

    def io_specs(self, precision: Precision):
        s = self.spec.input_size
        return ([{"name": INPUT_NAME, "shape": [1, 3, s, s], "dtype": "image (RGB, 8-bit)"}],
                [{"name": "classLabel", "shape": [1], "dtype": "string"},
                 {"name": "classLabel_probs", "shape": [len(self.class_names)], "dtype": "dict[string, float64]"}])
