"""Which quantized nodes cost accuracy: one-at-a-time sensitivity of the logits.

For every quantization *unit* of a QDQ model — an activation tensor (all Q/DQ pairs on one float
tensor) or a weight (one DequantizeLinear feeding a node's weight input) — the float model is run
with ONLY that unit quantized (the activation behind a Q/DQ pair with the QDQ model's own scale
and zero point; the weight replaced by its dequantized values) on a few calibration images, and
the unit's score is the mean squared error it adds to the logits against the float model. This
is the one-layer-at-a-time sensitivity analysis of NVIDIA's TensorRT quantization toolkit and
Qualcomm AIMET, measured on the output that matters (the logits) rather than on the layer's own
output.

Cost: every unit is wired into ONE gated copy of the float model (:func:`gated_model`), so the
ranking is one session plus one forward pass per unit. Measured on EfficientNet-Lite0 (110 units,
8 calibration images; benchmarks/quant_quality.py): 18-24 s on the shared 2-core host at a load
average of 2-4, up to 201 s at a load average of 8 (a first version with one session per unit and
16 images took 565 s there). Only the INT8 ladder runs it (:mod:`edgetransfer.quantize.ladder`: rung d's
layer choice, rung e's ranking and set scores), when no rung a-c candidate holds the budget (rung d also with
``--adaround on``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import require

_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class Unit:
    """One quantization unit. ``kind``: ``activation`` or ``weight``; ``tensor``: the float
    tensor's name in the float model; ``nodes``: the node names to pass to ``nodes_to_exclude``
    to keep it in floating point (its quantized consumers, and for an activation its producer and
    the node whose output carries its Q/DQ pair); ``mse``: mean squared logit error it adds alone
    (logit units squared); ``flips``: images whose top-1 it changes alone."""

    kind: str
    tensor: str
    nodes: list[str] = field(default_factory=list)
    mse: float = 0.0
    flips: int = 0

    def to_dict(self):
        return asdict(self)


def _array(name: str, inits: dict) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name])


def _fake_quant(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear -> DequantizeLinear on a float array (round half to even, saturate)."""
    if scale.size > 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = np.clip(np.rint(w / scale) + zp, qmin, qmax)
    return ((q - zp) * scale).astype(np.float32)


def _dequant(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q.astype(np.float32) - zp.astype(np.float32)) * scale).astype(np.float32)


def find_units(float_model, qdq_model) -> list[tuple[Unit, dict]]:
    """The quantization units of ``qdq_model`` (made by ORT from ``float_model``: same node names),
    each with what is needed to apply it alone to the float model: for an activation the
    ``scale``/``zero_point`` arrays, for a weight its fake-quantized ``value``."""
    onnx = require("onnx", "export")
    inits = {i.name: i for i in qdq_model.graph.initializer}
    f_nodes = {n.name: n for n in float_model.graph.node if n.name}
    f_inits = {i.name for i in float_model.graph.initializer}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    units: dict[tuple[str, str], tuple[Unit, dict]] = {}
    for node in qdq_model.graph.node:
        if node.op_type in _QDQ or node.name not in f_nodes:
            continue
        fnode = f_nodes[node.name]
        for idx, inp in enumerate(node.input):
            dq = producer.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear" or idx >= len(fnode.input):
                continue
            ftensor = fnode.input[idx]
            axis = next((onnx.helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
            scale = _array(dq.input[1], inits)
            zp = _array(dq.input[2], inits) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale, dtype=np.uint8)
            q = producer.get(dq.input[0])
            if dq.input[0] in inits:  # weight (or bias) stored quantized
                qarr = _array(dq.input[0], inits)
                if qarr.dtype == np.int32 or ftensor not in f_inits:
                    continue  # biases: int32, their error is below the weights'
                info = np.iinfo(qarr.dtype)
                key, payload = ("weight", ftensor), {"value": _dequant(qarr, scale, zp, axis), "stored": dq.input[0],
                                                     "scale": scale, "zero_point": zp, "axis": axis,
                                                     "qmin": info.min, "qmax": info.max}
            elif q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits:  # float weight behind Q/DQ
                if ftensor not in f_inits:
                    continue
                info = np.iinfo(zp.dtype)
                key = ("weight", ftensor)
                payload = {"value": _fake_quant(_array(q.input[0], inits).astype(np.float32), scale.astype(np.float32),
                                                zp.astype(np.float32), axis, info.min, info.max), "stored": q.input[0],
                           "scale": scale, "zero_point": zp, "axis": axis, "qmin": info.min, "qmax": info.max}
            elif q is not None and q.op_type == "QuantizeLinear":  # activation
                if ftensor in f_inits:
                    continue
                key, payload = ("activation", ftensor), {"scale": scale, "zero_point": zp}
                # the node whose output the QDQ model quantizes: ORT removes Relu/Clip after a
                # quantized node (asymmetric activations) and quantizes that node's output instead
                qp = producer.get(q.input[0])
                if qp is not None and qp.op_type not in _QDQ and qp.name in f_nodes:
                    payload = {**payload, "qdq_producer": qp.name}
            else:
                continue
            unit, _ = units.setdefault(key, (Unit(kind=key[0], tensor=key[1]), payload))
            if node.name not in unit.nodes:
                unit.nodes.append(node.name)
    # ORT's QDQ quantizer also quantizes the OUTPUT of a quantized node whatever its consumers are,
    # and folds a Relu/Clip that follows a quantized node into that node's output Q/DQ: an
    # activation stays in float only when its producer in the float model (maybe such a Clip) and
    # the node whose output carries the Q/DQ pair are excluded as well. (Excluding a node that is
    # not quantized anyway changes nothing.)
    f_producer = {o: n.name for n in float_model.graph.node for o in n.output}
    for (kind, tensor), (unit, payload) in units.items():
        if kind == "activation":
            for p in (f_producer.get(tensor), payload.get("qdq_producer")):
                if p and p in f_nodes and p not in unit.nodes:
                    unit.nodes.append(p)
    return list(units.values())


def gated_model(float_model, units: list[tuple[Unit, dict]], gate_input: str = "edgetransfer_gates",
                base_model=None):
    """A copy of ``float_model`` in which unit k is switched on by ``gates[k] = 1`` (float32 (U,)
    extra input): each unit's tensor ``t`` is replaced for all its consumers by
    ``t + gates[k] * (fakequant(t) - t)``, which is ``t`` exactly at gate 0 and the quantized
    value at gate 1. One session then scores every unit, one forward pass each.

    ``base_model``: the model ``float_model`` was bias-corrected from
    (:mod:`~edgetransfer.quantize.bias_correction`: same nodes and weights, other Conv / Gemm
    biases). Then the bias ``b`` of every node a weight unit k feeds becomes
    ``b_base + gates[k] * (b - b_base)`` (``b_base`` = 0 where the base node has none): a node
    whose weight is in float has the bias it had before the correction made for its rounding, as
    in the file rung e makes for that set, and all gates 0 give ``base_model`` itself."""
    import copy

    onnx = require("onnx", "export")
    from onnx import TensorProto, helper, numpy_helper

    m = copy.deepcopy(float_model)
    g = m.graph
    g.input.append(helper.make_tensor_value_info(gate_input, TensorProto.FLOAT, [len(units)]))
    new_nodes, new_inits = [], []
    for k, (unit, payload) in enumerate(units):
        t, p = unit.tensor, f"et{k}"
        new_inits.append(numpy_helper.from_array(np.array(k, np.int64), f"{p}_idx"))
        new_nodes.append(helper.make_node("Gather", [gate_input, f"{p}_idx"], [f"{p}_gate"], axis=0))
        if unit.kind == "activation":
            new_inits += [numpy_helper.from_array(payload["scale"], f"{p}_scale"),
                          numpy_helper.from_array(payload["zero_point"], f"{p}_zp")]
            new_nodes += [helper.make_node("QuantizeLinear", [t, f"{p}_scale", f"{p}_zp"], [f"{p}_q"]),
                          helper.make_node("DequantizeLinear", [f"{p}_q", f"{p}_scale", f"{p}_zp"], [f"{p}_fq"]),
                          helper.make_node("Sub", [f"{p}_fq", t], [f"{p}_err"])]
        else:
            new_inits.append(numpy_helper.from_array((payload["value"] - numpy_helper.to_array(
                next(i for i in g.initializer if i.name == t))).astype(np.float32), f"{p}_err"))
        new_nodes += [helper.make_node("Mul", [f"{p}_err", f"{p}_gate"], [f"{p}_delta"]),
                      helper.make_node("Add", [t, f"{p}_delta"], [f"{p}_out"])]
        for n in g.node:  # rewire every consumer of t (the new nodes are not in g.node yet)
            for i, v in enumerate(n.input):
                if v == t:
                    n.input[i] = f"{p}_out"
    if base_model is not None:
        _gate_biases(g, units, base_model, new_nodes, new_inits)
    g.node.extend(new_nodes)  # appended out of topological order: ONNX Runtime sorts the graph itself
    g.initializer.extend(new_inits)
    return m


def _gate_biases(g, units: list[tuple[Unit, dict]], base_model, new_nodes: list, new_inits: list) -> None:
    """:func:`gated_model`'s ``base_model`` rule on the copy's graph ``g`` (the nodes and
    initializers it adds are appended to ``new_nodes`` / ``new_inits``)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in g.initializer}
    b_inits = {i.name: i for i in base_model.graph.initializer}
    b_nodes = {n.name: n for n in base_model.graph.node if n.name}
    nodes = {n.name: n for n in g.node if n.name}
    for k, (unit, _) in enumerate(units):
        if unit.kind != "weight":
            continue
        for name in unit.nodes:
            node, base = nodes.get(name), b_nodes.get(name)
            if node is None or base is None or len(node.input) < 3 or node.input[2] not in inits:
                continue
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            has = len(base.input) > 2 and base.input[2] in b_inits
            b0 = numpy_helper.to_array(b_inits[base.input[2]]).astype(np.float32) if has else np.zeros_like(b)
            if b0.shape != b.shape or np.array_equal(b0, b):
                continue
            p = f"et{k}_{name}_bias"
            new_inits += [numpy_helper.from_array(b0, f"{p}_base"), numpy_helper.from_array(b - b0, f"{p}_corr")]
            new_nodes += [helper.make_node("Mul", [f"{p}_corr", f"et{k}_gate"], [f"{p}_delta"]),
                          helper.make_node("Add", [f"{p}_base", f"{p}_delta"], [p])]
            node.input[2] = p


class UnitScorer:
    """Logit error of the float model ``float_path`` on float32 images ``x`` (N, 3, S, S) with ANY
    subset of the quantization units of ``qdq_path`` (the model quantized from it, same node names)
    applied: one session of :func:`gated_model`, one forward pass per call. ``units``: the
    :class:`Unit` list in gate order; ``ref``: float64 (N, C) logits with every gate 0 (the float
    model itself).

    Rung e of the INT8 ladder (:meth:`edgetransfer.quantize.ladder.Ladder.rung_fallback`) scores a
    whole float-fallback SET with it (every unit quantized except those the set keeps in float),
    so two units that only help together, or a unit whose float consumer ONNX Runtime forces out
    with it, are scored as the file will be made, not as a sum of one-unit scores.

    ``base_path``: for a bias-corrected ``float_path``, the float model it was corrected from. The
    biases are then gated with the weights (:func:`gated_model`) and ``ref`` is the base model's
    logits: the error is against the fp32 model, and a node kept in float loses the correction made
    for its rounding. Without it, the reference is the corrected model, whose logits differ from
    fp32 by the corrections themselves, and a float node keeps a correction for rounding it no
    longer has. Measured on digits (EfficientNet-Lite0, 2026-12-08, 8 calibration images, the 11
    rung-e sets within the 2-node cap, each then made, bias-corrected and judged on val): without it,
    the stem + block 0's depthwise conv (val mean KL 0.0130; every other set 0.0487-0.0631, the
    base 0.0500) ranked 7th by error reduction (0.79 vs 1.83 for the first); with it, first
    (0.204; the stem alone next, 0.124, KL 0.0604; every other set < 0)."""

    def __init__(self, float_path: Path, qdq_path: Path, x: np.ndarray, input_name: str, batch: int = 16,
                 base_path: Path | None = None):
        onnx = require("onnx", "export")
        ort = require("onnxruntime", "export")

        fm = onnx.load(str(float_path))
        pairs = find_units(fm, onnx.load(str(qdq_path)))
        self.units = [u for u, _ in pairs]
        self.x, self.input_name, self.batch = x, input_name, batch
        self.sess = None
        if pairs:
            gm = gated_model(fm, pairs, base_model=onnx.load(str(base_path)) if base_path else None)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds constants; no QDQ fusion
            so.log_severity_level = 3
            self.sess = ort.InferenceSession(gm.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
            del gm
        self.ref = self.logits(np.zeros(len(self.units), np.float32)) if pairs else None

    def logits(self, gates: np.ndarray) -> np.ndarray:
        """float64 (N, C) logits with unit k quantized where ``gates[k] == 1`` (float32 (U,))."""
        return np.concatenate([self.sess.run(None, {self.input_name: self.x[i : i + self.batch],
                                                    "edgetransfer_gates": gates})[0]
                               for i in range(0, len(self.x), self.batch)]).astype(np.float64)

    def error(self, gates: np.ndarray) -> tuple[float, int]:
        """(mean squared logit error vs the float model, images whose top-1 it changes) of ``gates``;
        (0.0, 0) for a model with no unit (nothing quantized)."""
        if self.sess is None:
            return 0.0, 0
        out = self.logits(np.asarray(gates, np.float32))
        return float(np.mean((out - self.ref) ** 2)), int((out.argmax(1) != self.ref.argmax(1)).sum())

    def error_without(self, float_nodes: set[str] | frozenset[str]) -> float:
        """Mean squared logit error vs the float model with every unit quantized except those whose
        nodes are ALL in ``float_nodes`` (a unit is kept in float only when every node of
        :attr:`Unit.nodes` is excluded from quantization: :func:`find_units`)."""
        gates = np.array([0.0 if set(u.nodes) <= float_nodes else 1.0 for u in self.units], np.float32)
        return self.error(gates)[0]


def rank_units(float_path: Path, qdq_path: Path, x: np.ndarray, input_name: str, batch: int = 16,
               scorer: UnitScorer | None = None) -> list[Unit]:
    """Score every unit of ``qdq_path`` alone on float32 images ``x`` (N, 3, S, S) against the
    float model ``float_path`` (the model ``qdq_path`` was quantized from) and return the units
    sorted from the most to the least harmful (by ``mse``, then ``flips``). ``scorer``: a
    :class:`UnitScorer` of the same three to reuse (one is made otherwise)."""
    scorer = scorer or UnitScorer(float_path, qdq_path, x, input_name, batch)
    for k, unit in enumerate(scorer.units):
        gates = np.zeros(len(scorer.units), np.float32)
        gates[k] = 1.0
        unit.mse, unit.flips = scorer.error(gates)
    ranked = list(scorer.units)
    ranked.sort(key=lambda u: (-u.mse, -u.flips, u.tensor))
    return ranked
