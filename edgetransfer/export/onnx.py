"""``OnnxFromTorch``: an edgetransfer checkpoint -> one self-contained fp32 ONNX file.

The model is exported in eval mode (whatever mode it is handed over in) from a batch of 2 (a
batch-1 trace can specialise the batch axis), dynamo exporter first and the TorchScript exporter as
a recorded fallback, at the opset the target allows, with a dynamic batch axis, input ``input`` and
output ``logits``. The graph is refused if it carries training behaviour, shape-inferred (strict;
the inferred value_info stays in the file), saved as ONE file, checked with ``onnx.checker``
(full check), verified to run at batch sizes 1, 3 and 8, optionally simplified with onnxslim
(itself parity-checked against the unsimplified graph), and parity-checked against PyTorch on
real validation images (max and mean |logit diff|, top-1 agreement; tolerances in
:mod:`edgetransfer.parity`). Class names and preprocessing are written into the ONNX
``metadata_props`` as JSON so a runtime holding only the .onnx knows how to feed it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Manifest, atomic_path, read_manifest, tool_versions, write_manifest
from ..errors import ConfigError, DataError, EdgeTransferError, require
from ..progress import log, task
from ..types import Format, Precision
from ..parity import Tolerance, judge, tolerance

from ..onnx_inspect import graph_opset  # noqa: E402
from ..runtime.ort import onnx_logits  # noqa: E402,F401 (re-exported)
from ..runtime.pytorch import torch_logits  # noqa: E402,F401 (re-exported)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportConfig:
    """How a checkpoint becomes an ONNX file.

    ``opset``: None = min(18, the target's ``opset_max``) (18 is the dynamo exporter's native
    opset); an explicit opset above the target's ceiling is a :class:`ConfigError`.
    ``dynamo``: try ``torch.onnx.export(dynamo=True)`` first and fall back to the TorchScript
    exporter (the fallback and the first error are recorded in the manifest).
    ``trace_batch``: batch size of the example input (>= 2: a batch-1 trace can freeze the axis).
    ``simplify``: run onnxslim on the exported graph; the simplified graph must match the
    unsimplified one within the fp32 tolerances, else :class:`ParityError`.
    ``max_abs`` / ``mean_abs`` / ``min_agreement``: fp32 parity tolerances vs PyTorch (logit units,
    fraction); None = :data:`~edgetransfer.parity.TOLERANCES` ``["fp32"]``.
    ``exporter``: ``auto`` (Optimum for a Hugging Face model when the ``hf`` extra is installed,
    else torch), ``optimum`` or ``torch`` (:func:`edgetransfer.export.hf.choose_exporter`).
    """

    opset: int | None = None
    dynamo: bool = True
    trace_batch: int = 2
    simplify: bool = False
    max_abs: float | None = None
    mean_abs: float | None = None
    min_agreement: float | None = None
    exporter: str = "auto"

    def __post_init__(self) -> None:
        if self.exporter not in ("auto", "optimum", "torch"):
            raise ConfigError(f"exporter must be auto, optimum or torch (got {self.exporter!r})")
        if self.trace_batch < 2:
            raise ConfigError("trace_batch must be >= 2: a batch-1 trace can freeze the batch size")
        if self.opset is not None and not 13 <= self.opset <= 23:
            raise ConfigError(f"opset {self.opset} is outside the supported range 13..23")
        for name in ("max_abs", "mean_abs"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be a positive number of logit units (got {v})")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement must be a fraction in [0, 1] (got {self.min_agreement})")

    @property
    def tolerance(self) -> dict[str, float]:
        return tolerance("fp32", max_abs=self.max_abs, mean_abs=self.mean_abs, min_agreement=self.min_agreement)


def choose_opset(requested: int | None, opset_max: int) -> int:
    """The opset to export at: ``requested`` (must be <= ``opset_max``) or min(18, ``opset_max``).
    Raises :class:`ConfigError` when ``requested`` exceeds the target's ceiling."""
    if requested is not None and requested > opset_max:
        raise ConfigError(f"opset {requested} exceeds the target's ceiling {opset_max}; pass --opset {opset_max} or lower")
    return requested or min(DEFAULT_OPSET, opset_max)


def _export(model, x, path: Path, opset: int, dynamo: bool) -> str:
    torch = require("torch", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, verbose=False)
            exporter = "torch.onnx.export(dynamo=True)"
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                              do_constant_folding=True)
            exporter = "torch.onnx.export(dynamo=False, TorchScript)"
    onnx = require("onnx", "export")
    got = graph_opset(onnx.load(str(path), load_external_data=False))
    if got != opset:  # an exporter that silently used another opset would break the target's ceiling
        raise EdgeTransferError(f"{exporter} wrote opset {got}, not the requested {opset}")
    return exporter


# Ops whose presence means the graph carries training behaviour (sampling, batch statistics).
_RANDOM_OPS = {"Bernoulli", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}


def assert_inference_graph(model) -> None:
    """Raise :class:`EdgeTransferError` if an ONNX ModelProto has training behaviour: a random op,
    a ``Dropout`` in training mode (``training_mode`` input not a constant false), or a
    ``BatchNormalization`` with ``training_mode=1`` or its running-statistics outputs."""
    onnx = require("onnx", "export")
    from onnx import numpy_helper

    consts = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = n.attribute[0].t
    bad = []
    for n in model.graph.node:
        if n.op_type in _RANDOM_OPS:
            bad.append(f"{n.op_type} {n.name!r}")
        elif n.op_type == "Dropout" and len(n.input) >= 3 and n.input[2]:
            t = consts.get(n.input[2])
            if t is None or bool(numpy_helper.to_array(t)):
                bad.append(f"Dropout {n.name!r} in training mode")
        elif n.op_type == "BatchNormalization":
            train = any(a.name == "training_mode" and onnx.helper.get_attribute_value(a) for a in n.attribute)
            if train or len([o for o in n.output if o]) > 1:
                bad.append(f"BatchNormalization {n.name!r} in training mode")
    if bad:
        raise EdgeTransferError(f"the exported graph has training behaviour ({'; '.join(bad[:5])}); the model must be "
                                "exported in eval mode — call model.eval() or report the model")


def _finalise(path: Path, class_names: list[str], preprocessing: dict[str, Any], extra_meta: dict[str, str]) -> dict[str, Any]:
    """Name the batch axis, embed metadata, refuse training behaviour, run strict shape inference
    (its value_info is kept in the file), save as ONE file and run the full checker.
    Returns ``{"value_info": N, "nodes": N}``."""
    onnx = require("onnx", "export")
    m = onnx.load(str(path))
    for vi in list(m.graph.input) + list(m.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "batch"
    meta = {"class_names": json.dumps(class_names), "preprocessing": json.dumps(preprocessing), "producer": "edgetransfer", **extra_meta}
    keep = [p for p in m.metadata_props if p.key not in meta]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    assert_inference_graph(m)
    try:
        m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise EdgeTransferError(f"ONNX shape inference failed on the exported graph: {exc}; try another opset or --no-dynamo") from exc
    out_dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 2 or out_dims[1] != len(class_names):
        raise EdgeTransferError(f"shape inference gives output {OUTPUT_NAME!r} the shape {out_dims}, expected [batch, {len(class_names)}]")
    for f in Path(path).parent.glob(Path(path).name + ".data"):
        f.unlink()  # the dynamo exporter may have written external data; the final file holds everything
    onnx.save_model(m, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return {"value_info": len(m.graph.value_info), "nodes": len(m.graph.node)}


def _simplify(src: Path, dst: Path) -> None:
    onnx = require("onnx", "export")
    onnxslim = require("onnxslim", "export", "ONNX simplification")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = onnxslim.slim(onnx.load(str(src)))
    if m is None:
        raise EdgeTransferError("onnxslim could not simplify the graph; export without --simplify")
    onnx.save_model(m, str(dst), save_as_external_data=False)


def verify_dynamic_batch(path: Path, num_classes: int, input_size: int, batches=(1, 3, 8)) -> None:
    from ..runtime.ort import make_session

    sess = make_session(path)
    for b in batches:
        out = sess.run(None, {INPUT_NAME: np.zeros((b, 3, input_size, input_size), np.float32)})[0]
        if out.shape != (b, num_classes):
            raise EdgeTransferError(f"{path.name}: batch {b} gave output shape {out.shape}, expected {(b, num_classes)}: the batch axis is not dynamic")


def export_module(model, path: Path, *, input_size: int, class_names: list[str], preprocessing: dict[str, Any],
                  parity_x: np.ndarray, opset: int, cfg: ExportConfig = ExportConfig(), export_fn=None) -> dict[str, Any]:
    """``OnnxFromTorch`` on an ``nn.Module``: write the checked fp32 ONNX file ``path``.

    ``model`` takes float32 (B, 3, S, S) with S = ``input_size`` and returns logits (B, C), C =
    ``len(class_names)``. It is exported in eval mode whatever mode it is handed over in (its mode
    is restored afterwards), from a batch of ``cfg.trace_batch`` seeded random images.
    ``parity_x``: float32 (N, 3, S, S), N >= 1, preprocessed real validation images.
    ``export_fn``: another exporter, ``fn(model, x, path, opset, dynamo) -> description`` (the
    Optimum one: :func:`edgetransfer.export.hf.optimum_export_fn`); the same gates follow.

    Returns the manifest details (exporter, fallback errors, opset, parity figures, node counts).
    Raises :class:`ParityError` beyond tolerance, :class:`EdgeTransferError` when every exporter
    fails or the graph fails a check; ``path`` may then hold a partial file (callers write
    through :func:`~edgetransfer.artifacts.atomic_path`).
    """
    torch = require("torch", "train")
    if len(parity_x) == 0:
        raise DataError("the parity check needs at least one validation image; the validation split is empty")
    tol = cfg.tolerance
    was_training = model.training
    model.eval()  # always: a model handed over in train mode must not export training behaviour
    try:
        x = torch.randn(cfg.trace_batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        exporter, errors = None, []
        for dynamo in ([True, False] if cfg.dynamo and export_fn is None else [False]):
            try:
                with task(f"Exporting ONNX (opset {opset}, {'dynamo' if dynamo else 'TorchScript'})", None):
                    exporter = (export_fn or _export)(model, x, path, opset, dynamo)
                break
            except Exception as exc:  # the dynamo exporter fails on some models: fall back, recorded
                errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:500]}")
                log(f"[yellow]ONNX export with {'dynamo' if dynamo else 'TorchScript'} failed: {type(exc).__name__}; "
                    + ("falling back to the TorchScript exporter" if dynamo else "no exporter left"))
        if exporter is None:
            raise EdgeTransferError("ONNX export failed with every exporter:\n" + "\n".join(errors))
        meta = {"exporter": exporter}
        graph = _finalise(path, class_names, preprocessing, meta)
        verify_dynamic_batch(path, len(class_names), input_size)
        with task(f"PyTorch reference logits ({len(parity_x)} images)", None):
            ref = torch_logits(model, parity_x)
        details: dict[str, Any] = {"exporter": exporter, "exporter_errors": errors, "opset": opset,
                                   "shape_inference": "onnx strict (value_info kept)", "graph": graph}
        if cfg.simplify:
            slim = path.with_name(path.stem + ".slim.onnx")
            try:
                with task("Simplifying with onnxslim", None):
                    _simplify(path, slim)
                slim_graph = _finalise(slim, class_names, preprocessing, {**meta, "simplifier": "onnxslim"})
                verify_dynamic_batch(slim, len(class_names), input_size)
                s_stats = judge(onnx_logits(path, parity_x), onnx_logits(slim, parity_x), Tolerance(**tol),
                                what="onnxslim simplification", output=OUTPUT_NAME).raise_for(
                    "onnxslim changed the model's outputs: export without --simplify, or report the model to onnxslim").stats
                os.replace(slim, path)
            finally:
                slim.unlink(missing_ok=True)
            details["simplified"] = {"tool": "onnxslim", "version": getattr(require("onnxslim", "export"), "__version__", "?"),
                                     "nodes_before": graph["nodes"], "nodes_after": slim_graph["nodes"],
                                     "parity_vs_unsimplified": s_stats.to_dict()}
            details["graph"] = slim_graph
        with task(f"ONNX parity vs PyTorch ({len(parity_x)} images)", None):
            result = judge(ref, onnx_logits(path, parity_x), Tolerance(**tol), what="ONNX export", output=OUTPUT_NAME)
        stats = result.raise_for().stats
    finally:
        model.train(was_training)
    log(f"ONNX parity vs PyTorch on {stats.num_samples} images: max |diff| {stats.max_abs:.2e}, "
        f"mean {stats.mean_abs:.2e}, top-1 agreement {stats.agreement:.4f}")
    details.update({"parity_vs": "pytorch", "parity": stats.to_dict(), "tolerance": tol,
                    "dynamic_batch_verified": [1, 3, 8], "trace_batch": cfg.trace_batch})
    return details


def onnx_from_torch(checkpoint: Path, out: Path, parity_x: np.ndarray, *, opset_max: int = 21, target: str | None = None,
                    cfg: ExportConfig = ExportConfig()) -> Manifest:
    """Export ``checkpoint`` to ``out`` (.onnx) with :func:`export_module` and write its manifest.

    ``parity_x``: float32 (N, 3, S, S) preprocessed validation images for the parity check.
    ``opset_max``: the target's opset ceiling (see :func:`choose_opset`).
    Raises :class:`ParityError` beyond tolerance, :class:`ConfigError` for an opset above the
    ceiling; ``out`` is only created (atomically) when every check passed.
    """
    from ..checkpoint import load_checkpoint

    parent = read_manifest(checkpoint)
    opset = choose_opset(cfg.opset, opset_max)
    model, ckpt = load_checkpoint(checkpoint)
    size = int(ckpt["preprocessing"]["input_size"])
    class_names = list(ckpt["class_names"])
    from . import hf

    which, why = hf.choose_exporter(cfg.exporter, hf.is_hf(ckpt))
    extra: dict[str, Any] = {"exporter_choice": {"exporter": which, "reason": why, **({"versions": hf.versions()} if which == "optimum" else {})}}
    export_fn = None
    if hf.is_hf(ckpt):
        from ..bundle import HF_DIR

        extra["hf_folder"] = hf.write_hf_folder(model, ckpt["model"]["arch"], out.parent / HF_DIR, parity_x)
        if which == "optimum":
            export_fn = hf.optimum_export_fn(out.parent / HF_DIR, INPUT_NAME, size)
    with atomic_path(out, suffix=".onnx") as tmp:
        details = export_module(model, tmp, input_size=size, class_names=class_names, preprocessing=ckpt["preprocessing"],
                                parity_x=parity_x, opset=opset, cfg=cfg, export_fn=export_fn)
    details.update(extra)
    onnx = require("onnx", "export")
    details["opset_choice"] = (f"--opset {cfg.opset}" if cfg.opset else
                               f"min({DEFAULT_OPSET}, target opset_max {opset_max})")
    details["onnx_ir_version"] = onnx.load(str(out), load_external_data=False).ir_version
    return write_manifest(out, Manifest(
        format=str(Format.ONNX), precision=str(Precision.FP32), file=out.name, parent_sha256=parent.sha256,
        parent_file=parent.file, target=target, preprocessing=ckpt["preprocessing"], class_names=class_names,
        inputs=[{"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32"}],
        outputs=[{"name": OUTPUT_NAME, "shape": ["batch", len(class_names)], "dtype": "float32"}],
        producer="edgetransfer.export.onnx",
        tool_versions=tool_versions("torch", "onnx", "onnxruntime", "onnxscript", *(["onnxslim"] if cfg.simplify else []),
                                    *(["transformers"] if hf.is_hf(ckpt) else [])),
        details=details,
    ))
