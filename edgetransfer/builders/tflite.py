"""``TfliteFromTorch``: an edgetransfer checkpoint -> LiteRT ``.tflite`` (fp32, full-integer INT8).

fp32: ``litert_torch.convert(model, (x,))`` (torch.export -> StableHLO -> TFLite flatbuffer), batch
1, input NCHW float32 named like every other artifact's in the manifest, output logits.

INT8: ``ai-edge-quantizer``'s static recipe ``static_wi8_ai8`` (int8 weights per channel, int8
activations, min/max algorithm) on that float model: a full-integer model whose input and output
tensors are int8 as well (the LiteRT runner quantizes/dequantizes with their own scale and zero
point). Calibration: the images of the project's calibration recipe (training split,
class-stratified, seeded), one at a time, and the absolute min/max over all of them — the same
statistic as the ONNX INT8 recipe (ORT ``CalibMovingAverage: False``), not ai-edge-quantizer's default
0.95 moving average. A small ladder picks the file (``TfliteFromTorch._ladder``, every rung in
``details.ladder``): rung a, the fp32 model as converted; rung c, the model with its biases
corrected for the same int8 scheme (:mod:`edgetransfer.builders.bias_correction`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import FORMAT_FILES
from ..errors import ConfigError, require
from ..progress import task
from ..types import Format, Precision
from .base import Builder, register_builder, static_batch_logits

METADATA_NOTE = ("not written: the TFLite metadata writer (tflite-support) pins protobuf < 4 and would downgrade the "
                 "protobuf that onnx and ai-edge-litert need; labels.txt and the manifest's preprocessing carry the same facts")


def tflite_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of a .tflite file as the LiteRT interpreter reads them: tensor name, shape,
    dtype (``int8`` for a full-integer model), ``scale`` and ``zero_point`` (0.0 / 0 for a float
    tensor: real = scale * (q - zero_point))."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))

    def spec(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d.get("quantization", (0.0, 0))
        return {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero)}

    return [spec(d) for d in it.get_input_details()], [spec(d) for d in it.get_output_details()]


@register_builder(Format.TFLITE)
class TfliteFromTorch(Builder):
    extra = "litert"
    backend_modules = ("litert_torch", "ai_edge_litert.interpreter", "ai_edge_quantizer")
    precisions = (Precision.FP32, Precision.INT8)
    file_names = {Precision(k): v for k, v in FORMAT_FILES["tflite"].items()}
    producer = "edgetransfer.builders.tflite"
    version_modules = ("torch", "litert_torch", "ai_edge_litert", "ai_edge_quantizer")

    _float_bytes: bytes | None = None

    def float_model(self) -> bytes:
        """The fp32 flatbuffer of the checkpoint (converted once per converter, reused by the INT8 build)."""
        if self._float_bytes is None:
            from ..checkpoint import load_checkpoint

            model, _ = load_checkpoint(self.source)
            self._float_bytes = self.flatbuffer(model)
        return self._float_bytes

    def flatbuffer(self, model) -> bytes:
        """``litert_torch.convert`` of ``model`` (an ``nn.Module`` taking float32 (1, 3, S, S)) at batch 1."""
        torch = require("torch", "train")
        litert_torch = require("litert_torch", self.extra, "LiteRT conversion")
        s = self.spec.input_size
        with torch.no_grad():
            edge = litert_torch.convert(model.eval(), (torch.zeros(1, 3, s, s),))
        with tempfile.TemporaryDirectory(prefix="edgetransfer-tflite-") as td:
            p = Path(td) / "float.tflite"
            edge.export(str(p))
            return p.read_bytes()

    def convert(self, precision: Precision, out: Path) -> dict[str, Any]:
        buf = self.float_model()
        details: dict[str, Any] = {"converter": "litert_torch.convert", "batch": 1, "layout": "NCHW", "metadata": METADATA_NOTE}
        if precision == Precision.FP32:
            out.write_bytes(buf)
            self._io = tflite_io(out)
            return details
        if self.inputs.recipe is not None and self.inputs.recipe.method != "minmax":
            raise ConfigError(f"calibration method {self.inputs.recipe.method!r} is not implemented for LiteRT INT8 "
                              "(ai-edge-quantizer's static recipe calibrates min/max); use a recipe with method: minmax")
        details.update(self._ladder(buf, out))
        details.update(self.calibration_details())
        self._io = tflite_io(out)
        return details

    def _ladder(self, buf: bytes, out: Path) -> dict[str, Any]:
        """The mobile INT8 ladder for LiteRT (rungs a and c of :mod:`edgetransfer.quantize.ladder`):
        a: ai-edge-quantizer on the fp32 flatbuffer ``buf``; c: the same on the flatbuffer of the
        bias-corrected model (:func:`~edgetransfer.builders.bias_correction.correct_biases_torch`,
        the same int8 scheme: weights symmetric per channel, activations affine per tensor). Each
        candidate is the real .tflite, judged on the parity images (``Builder.rung``);
        :meth:`Builder.choose` picks the one written at ``out``. ``options["bias_correction"] = False``
        leaves rung c out. Returns the manifest details of the chosen file, with ``ladder``."""
        x = self.calibration_arrays()
        rungs, files = [], []
        with tempfile.TemporaryDirectory(prefix="edgetransfer-tflite-int8-") as td:
            variants = [("a:ranges:minmax", lambda: (buf, {}))]
            if self.inputs.options.get("bias_correction", True):
                variants.append(("c:bias_correction:minmax", lambda: self._corrected_float(x)))
            for name, make in variants:
                t0 = time.perf_counter()
                fbuf, info = make()
                path = Path(td) / f"rung{len(rungs)}.tflite"
                q = self._quantize(fbuf, x, path)
                rungs.append(self.rung(name, self.candidate_logits(path, self.inputs.parity_x), time.perf_counter() - t0, **info))
                files.append((path.read_bytes(), q))
        chosen = self.choose(rungs)
        data, q = files[rungs.index(chosen)]
        out.write_bytes(data)
        return {**q, "ladder": rungs, "chosen_rung": chosen["rung"], "bias_corrected": "bias_correction" in chosen}

    def _corrected_float(self, x: np.ndarray) -> tuple[bytes, dict[str, Any]]:
        """(fp32 flatbuffer of the bias-corrected checkpoint, {"bias_correction": summary})."""
        from ..checkpoint import load_checkpoint
        from .bias_correction import correct_biases_torch

        model, _ = load_checkpoint(self.source)
        model.eval()
        with task(f"Bias correction ({len(x)} calibration images)", None):
            bc = correct_biases_torch(model, x)  # its own "seconds"
        return self.flatbuffer(model), {"bias_correction": bc}

    def io_specs(self, precision: Precision) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The file's own tensors (read back by :func:`tflite_io` after conversion)."""
        return self._io if getattr(self, "_io", None) else super().io_specs(precision)

    def _quantize(self, buf: bytes, x: np.ndarray, out: Path) -> dict[str, Any]:
        require("ai_edge_quantizer", self.extra, "LiteRT INT8 quantization")
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
        from ai_edge_quantizer.utils import qsv_utils

        sigs = Interpreter(model_content=buf).get_signature_list()
        if len(sigs) != 1:
            raise ConfigError(f"expected one signature in the converted LiteRT model, found {sorted(sigs)}")
        sig, io = next(iter(sigs.items()))
        (input_name,) = io["inputs"]
        rcp = recipe.static_wi8_ai8()
        rm = recipe_manager.RecipeManager()
        rm.load_quantization_recipe(rcp)
        cal = calibrator.Calibrator(buf, num_threads=max(1, int(self.inputs.options.get("threads", 2))),
                                    qsv_update_func=qsv_utils.min_max_update)
        with task(f"Calibrating LiteRT INT8 ({len(x)} images)", None):
            cal.calibrate({sig: [{input_name: x[i : i + 1]} for i in range(len(x))]}, rm)
        q = quantizer.Quantizer(buf, rcp)
        res = q.quantize(cal.get_model_qsvs(), enable_progress_report=False)
        out.write_bytes(bytes(res.quantized_model))
        it = Interpreter(model_path=str(out))
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        if i["dtype"] == np.float32 or o["dtype"] == np.float32:
            raise ConfigError("ai-edge-quantizer left float32 model inputs/outputs: the INT8 LiteRT model is not full-integer")
        return {"quantizer": "ai-edge-quantizer static_wi8_ai8", "algorithm": "min_max_uniform_quant",
                "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor",
                "calibration_statistic": "absolute min/max (min_max_update)", "full_integer": True,
                "io_quantization": {"input": {"dtype": np.dtype(i["dtype"]).name, "scale": float(i["quantization"][0]), "zero_point": int(i["quantization"][1])},
                                    "output": {"dtype": np.dtype(o["dtype"]).name, "scale": float(o["quantization"][0]), "zero_point": int(o["quantization"][1])}}}

    def candidate_logits(self, path: Path, x: np.ndarray) -> np.ndarray:
        from ..runtime.litert import LiteRtRunner

        with LiteRtRunner(path, threads=int(self.inputs.options.get("threads", 0))) as r:
            return static_batch_logits(r, x)
