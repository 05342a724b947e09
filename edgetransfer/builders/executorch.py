"""``PteFromTorch``: an edgetransfer checkpoint -> ExecuTorch ``.pte`` program (fp32, INT8).

fp32: ``torch.export`` at batch 1 -> ``to_edge_transform_and_lower`` with the
``XnnpackPartitioner`` -> ``to_executorch()`` (the lowering the ExecuTorch docs give for CPU on
Android and iOS).

INT8: PT2E post-training quantization with the ``XNNPACKQuantizer`` (symmetric int8, weights per
output channel, activations per tensor) — ``prepare_pt2e``, one forward pass per calibration image
of the project's calibration recipe, ``convert_pt2e`` — then the same lowering, so the
quantize/dequantize pairs are fused into XNNPACK's int8 kernels. A small ladder picks the
candidate (``PteFromTorch._ladder``, every rung in the manifest's ``details.ladder``): rung a,
the recipe's activation observer (``minmax`` -> ``MinMaxObserver``, absolute min/max as the ONNX
INT8 recipe; ``entropy``/``percentile`` have no PT2E observer and map to the ``HistogramObserver``
the XNNPACK quantizer uses by default); rung c, empirical bias correction of the model
(:mod:`edgetransfer.builders.bias_correction`) with each observer. Measured on hymenoptera
(EfficientNet-Lite0, 128 calibration images, 2026-12-03, ``/tmp/mb/exp.py``-style run): minmax
alone flipped 2 of 76 val and 2 of 77 test images (mean KL 3.4e-4 / 2.9e-4); bias-corrected with
the HistogramObserver it flipped none of either (KL 1.2e-4 / 1.6e-4).

ReLU6 (``aten.hardtanh``) after a convolution or linear layer is annotated as one fused unit, the
way the quantizer annotates ReLU (:func:`clamp_fusing_quantizer`): the activation observer sits
after the clamp, so it sees [0, 6], not the pre-activation range. ExecuTorch 1.5's quantizer fuses
only ``aten.relu`` (``is_relu_node``) and gives ``hardtanh`` the observer of the convolution's output
(``propagate_annotation``, ``SharedQuantizationSpec``): on EfficientNet-Lite0 / hymenoptera the
stem convolution's output spans [-81, 69], so ReLU6's [0, 6] was quantized with a 0.59 step (about
ten levels), the 33 ReLU6 layers each with their convolution's range, and the .pte INT8 logits were
up to 0.56 off on 76 val images (78 % of mean |fp32 logit| 0.71; mean |diff| 0.15); with the
fused annotation 0.12 (16 %; mean 0.028), the .tflite INT8's level (0.12). XNNPACK fuses the
clamp into the convolution either way (``FuseActivationPass``; its ``ConvolutionConfig`` lists
``hardtanh`` among the fused activations). Measured 2026-12-02; held by tests/builders.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import FORMAT_FILES
from ..errors import require
from ..progress import log, task
from ..types import Format, Precision
from .base import Builder, register_builder, static_batch_logits

# the ops XNNPACK fuses a following clamp into (FuseActivationPass.FUSEABLE_OPS, before edge lowering)
_CLAMP_PRODUCERS = ("aten.conv2d.default", "aten.conv1d.default", "aten.linear.default")
_CLAMPS = ("aten.hardtanh.default", "aten.hardtanh_.default")


def fuse_clamp_annotations(gm) -> int:
    """Re-annotate ``producer -> hardtanh`` pairs of an annotated PT2E graph as one quantized unit.

    ``gm``: a ``torch.fx.GraphModule`` after ``XNNPACKQuantizer``'s pattern annotation, before its
    ``propagate_annotation``. For every ``aten.hardtanh(_)`` whose input is a conv/linear node with no
    other user and an output quantization spec, the spec moves from the producer's output to the
    clamp's output (the producer keeps its input and weight specs), exactly what the quantizer's own
    ``_do_annotate_conv_relu`` does for ReLU. Returns the number of pairs re-annotated."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    key = "quantization_annotation"
    fused = 0
    for n in gm.graph.nodes:
        if n.op != "call_function" or str(n.target) not in _CLAMPS or key in n.meta:
            continue
        prod = n.args[0]
        if getattr(prod, "op", None) != "call_function" or str(prod.target) not in _CLAMP_PRODUCERS or len(prod.users) != 1:
            continue
        ann = prod.meta.get(key)
        if ann is None or ann.output_qspec is None:
            continue
        n.meta[key] = QuantizationAnnotation(output_qspec=ann.output_qspec, _annotated=True)
        ann.output_qspec = None
        fused += 1
    return fused


def clamp_fusing_quantizer():
    """``XNNPACKQuantizer`` that annotates conv/linear + ReLU6 as one unit (:func:`fuse_clamp_annotations`);
    otherwise the stock quantizer (``set_global`` etc.). Built lazily: executorch is an optional extra."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import (
        propagate_annotation,
    )

    class ClampFusingXNNPACKQuantizer(XNNPACKQuantizer):
        fused_clamps = 0

        def annotate(self, model):
            model = self._annotate_for_quantization_config(model)
            self.fused_clamps = fuse_clamp_annotations(model)
            propagate_annotation(model)
            return model

    return ClampFusingXNNPACKQuantizer()


@register_builder(Format.PTE)
class PteFromTorch(Builder):
    extra = "executorch"
    backend_modules = ("executorch.exir", "executorch.runtime", "torchao")
    precisions = (Precision.FP32, Precision.INT8)
    file_names = {Precision(k): v for k, v in FORMAT_FILES["pte"].items()}
    producer = "edgetransfer.builders.executorch"
    version_modules = ("torch", "executorch", "torchao")

    def _observers(self) -> list[str]:
        """Activation observers the ladder tries: the recipe's (``minmax`` -> ``MinMaxObserver``; a
        method PT2E has no observer for -> ``HistogramObserver``), then the other one."""
        method = self.inputs.recipe.method if self.inputs.recipe else "minmax"
        if method not in ("minmax",):
            log(f"[yellow]PT2E has no {method} observer: ExecuTorch INT8 calibrates activations with the HistogramObserver first")
        first = "MinMaxObserver" if method == "minmax" else "HistogramObserver"
        return [first, *(o for o in ("MinMaxObserver", "HistogramObserver") if o != first)]

    @staticmethod
    def _quantization_config(observer: str):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            get_symmetric_quantization_config,
        )
        from torchao.quantization import pt2e

        cfg = get_symmetric_quantization_config(is_per_channel=True)
        obs = getattr(pt2e, observer)
        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=obs.with_args(eps=2**-12))
        return dataclasses.replace(cfg, input_activation=act, output_activation=act)

    def _pt2e(self, model, observer: str, x: np.ndarray, example):
        """PT2E INT8 of ``model`` (prepare, one forward per calibration image of ``x``, convert):
        (converted module, number of ReLU6 clamps fused)."""
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = torch.export.export(model, example).module()
        quantizer = clamp_fusing_quantizer().set_global(self._quantization_config(observer))
        prepared = prepare_pt2e(graph, quantizer)
        with task(f"Calibrating ExecuTorch INT8 ({len(x)} images, {observer})", len(x)) as advance:
            for i in range(len(x)):
                prepared(torch.from_numpy(x[i : i + 1]))
                advance(1)
        return convert_pt2e(prepared), quantizer.fused_clamps

    def _ladder(self, model, example) -> tuple[Any, dict[str, Any]]:
        """The mobile INT8 ladder for PT2E (rungs a and c of :mod:`edgetransfer.quantize.ladder`):
        a: the recipe's observer; c: empirical bias correction of the model
        (:func:`~edgetransfer.builders.bias_correction.correct_biases_torch`) with each
        observer. Every candidate is judged on the parity images (``Builder.rung``: its converted
        PT2E module in PyTorch, the program XNNPACK lowers) and :meth:`Builder.choose` picks one.
        ``options["bias_correction"] = False`` leaves rung c out. Returns (converted module, details)."""
        import torch

        from .bias_correction import correct_biases_torch

        x = self.calibration_arrays()
        observers = self._observers()
        variants = [("a:observer:" + observers[0], model, observers[0], {})]
        if self.inputs.options.get("bias_correction", True):
            corrected = copy.deepcopy(model)
            with task(f"Bias correction ({len(x)} calibration images)", None):
                bc = correct_biases_torch(corrected, x)  # its own "seconds"
            variants += [("c:bias_correction:" + o, corrected, o, {"bias_correction": bc}) for o in observers]
        rungs, modules = [], []
        for name, m, observer, info in variants:
            t0 = time.perf_counter()
            q, fused = self._pt2e(m, observer, x, example)
            cand = static_batch_logits(lambda a: q(torch.from_numpy(a)).detach().numpy(), self.inputs.parity_x)
            rungs.append(self.rung(name, cand, time.perf_counter() - t0, activation_observer=observer, fused_clamps=fused,
                                   **({"bias_correction": info["bias_correction"]} if info else {})))
            modules.append(q)
        chosen = self.choose(rungs)
        log(f"{self.format} INT8: rung {chosen['rung']} chosen of {len(rungs)} (lowest mean KL vs fp32 among those that hold)")
        return modules[rungs.index(chosen)], {"ladder": rungs, "chosen_rung": chosen["rung"],
                                              "activation_observer": chosen["activation_observer"],
                                              "fused_clamps": chosen["fused_clamps"],
                                              "bias_corrected": "bias_correction" in chosen}

    def convert(self, precision: Precision, out: Path) -> dict[str, Any]:
        torch = require("torch", "train")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower

        from ..checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.source)
        model.eval()
        s = self.spec.input_size
        example = (torch.zeros(1, 3, s, s),)
        details: dict[str, Any] = {"exporter": "torch.export", "backend": "XNNPACK (XnnpackPartitioner)", "batch": 1}
        with torch.no_grad():
            if precision == Precision.INT8:
                model, lad = self._ladder(model, example)
                details.update({"quantizer": "PT2E XNNPACKQuantizer (symmetric, per-channel weights)",
                                "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor affine",
                                **lad, **self.calibration_details()})
            program = torch.export.export(model, example)
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            et = lowered.to_executorch()
        out.write_bytes(et.buffer)
        details["delegated_nodes"] = _delegation_summary(lowered)
        return details

    def candidate_logits(self, path: Path, x: np.ndarray) -> np.ndarray:
        from ..runtime.executorch import ExecuTorchRunner

        with ExecuTorchRunner(path, threads=int(self.inputs.options.get("threads", 0))) as r:
            return static_batch_logits(r, x)


def _delegation_summary(lowered) -> dict[str, int]:
    """Counts of call_delegate nodes and of ops left outside XNNPACK (0 = fully delegated)."""
    gm = lowered.exported_program().graph_module
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    delegate = sum(1 for n in calls if "executorch_call_delegate" in str(n.target))
    getitem = sum(1 for n in calls if "getitem" in str(n.target))
    return {"delegate_calls": delegate, "non_delegated_ops": len(calls) - delegate - getitem}
