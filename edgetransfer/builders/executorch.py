"""``PteFromTorch``: an edgetransfer checkpoint -> ExecuTorch ``.pte`` program (fp32, INT8).

fp32: ``torch.export`` at batch 1 -> ``to_edge_transform_and_lower`` with the
``XnnpackPartitioner`` -> ``to_executorch()`` (the lowering the ExecuTorch docs give for CPU on
Android and iOS).

INT8: PT2E post-training quantization with the ``XNNPACKQuantizer`` (symmetric int8, weights per
output channel, activations per tensor) — ``prepare_pt2e``, one forward pass per calibration image
of the project's calibration recipe, ``convert_pt2e`` — then the same lowering, so the
quantize/dequantize pairs are fused into XNNPACK's int8 kernels. The activation observer follows
the recipe's method: ``minmax`` -> ``MinMaxObserver`` (absolute min/max, as the ONNX INT8 recipe);
``entropy``/``percentile`` have no PT2E observer and map to the ``HistogramObserver`` the XNNPACK
quantizer uses by default (recorded in the manifest as ``activation_observer``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import FORMAT_FILES
from ..errors import require
from ..progress import log, task
from ..types import Format, Precision
from .base import Builder, register_builder, static_batch_logits


@register_builder(Format.PTE)
class PteFromTorch(Builder):
    extra = "executorch"
    backend_modules = ("executorch.exir", "executorch.runtime", "torchao")
    precisions = (Precision.FP32, Precision.INT8)
    file_names = {Precision(k): v for k, v in FORMAT_FILES["pte"].items()}
    producer = "edgetransfer.builders.executorch"
    version_modules = ("torch", "executorch", "torchao")

    def _quantization_config(self):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
        from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver

        cfg = get_symmetric_quantization_config(is_per_channel=True)
        method = self.inputs.recipe.method if self.inputs.recipe else "minmax"
        observer = MinMaxObserver if method == "minmax" else HistogramObserver
        if method not in ("minmax",):
            log(f"[yellow]PT2E has no {method} observer: ExecuTorch INT8 calibrates activations with the HistogramObserver")
        act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
        return cfg, observer.__name__

    def convert(self, precision: Precision, out: Path) -> dict[str, Any]:
        torch = require("torch", "train")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        from ..checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.source)
        model.eval()
        s = self.spec.input_size
        example = (torch.zeros(1, 3, s, s),)
        details: dict[str, Any] = {"exporter": "torch.export", "backend": "XNNPACK (XnnpackPartitioner)", "batch": 1}
        with torch.no_grad():
            if precision == Precision.INT8:
                from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                x = self.calibration_arrays()
                cfg, observer = self._quantization_config()
                graph = torch.export.export(model, example).module()
                prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(cfg))
                with task(f"Calibrating ExecuTorch INT8 ({len(x)} images)", len(x)) as advance:
                    for i in range(len(x)):
                        prepared(torch.from_numpy(x[i : i + 1]))
                        advance(1)
                model = convert_pt2e(prepared)
                details.update({"quantizer": "PT2E XNNPACKQuantizer (symmetric, per-channel weights)",
                                "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor affine",
                                "activation_observer": observer, **self.calibration_details()})
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
