"""TensorRT-ready Q/DQ: explicit-quantization placement for the ``tensorrt`` placement of a preset.

ONNX Runtime's ``quantize_static`` puts a Q/DQ pair on every input and output of every op it
knows, which suits ONNX Runtime's fused CPU kernels. TensorRT fuses differently: a convolution
with its BatchNormalization, activation, bias and residual Add runs as ONE kernel, so Q/DQ inside
that group only forces a reformat or blocks the fusion. This module places Q/DQ the way NVIDIA's
TensorRT Model Optimizer (ModelOpt, ``modelopt/onnx/quantization/partitioning.py`` and
``graph_utils.py``) does, following the TensorRT Developer Guide ("Explicit Quantization",
"Q/DQ Layer-Placement Recommendations"):

* **Partitions.** From every Conv / ConvTranspose / Gemm / MatMul (topological order), the
  consumers that TensorRT fuses into its epilogue join its partition: pointwise ops whose variable
  inputs all come from the partition (BatchNormalization, Relu, Clip, Sigmoid and the SiLU ``Mul``,
  bias ``Add``/``Mul`` with a constant, ...), MaxPool after conv-act, and a residual ``Add`` reached
  through its non-residual input (the partition ends there). No Q/DQ inside a partition.
* **Quantized inputs** (the TensorRT INT8 op list :data:`TRT_INT8_OPS`): the activation inputs of
  every weighted op (per-tensor, signed symmetric INT8, zero point 0) and its weight (per output
  channel); the *skip* input of a residual Add (the other input is fused into the conv); pooling
  ops outside partitions when a quantized op consumes their output (through copy ops such as
  Flatten) or a partition produces their input; Concat: when its output is quantized, all its
  inputs are too, with ONE scale shared by the inputs and the output (ModelOpt's
  "concat_elimination": TensorRT then drops the concat and writes each producer straight into it).
  Every consumer gets its own Q/DQ pair (TensorRT fuses a pair into one consumer).
* **Weights** are INT8 initializers behind DequantizeLinear (a quarter of the float size), or
  float weights behind Q->DQ with ``qdq_pair_on_weights`` (TensorRT 8.x quantizes them itself).
  Biases stay float (TensorRT's parser dequantizes INT8 only).
* **fp16 remainder** (``high_precision_dtype: fp16``, ModelOpt's option of that name): for
  strongly typed builds (TensorRT 11 removed the precision flags, so an fp32 tensor runs in fp32)
  every float tensor and initializer outside the INT8 paths becomes fp16, with fp32 graph inputs
  and outputs (a Cast after the input and before each output). Q/DQ on fp16 tensors needs opset
  19, which the file then imports.

Ranges: the calibration cache of :func:`edgetransfer.quantize.calibration.cached_ranges` (ORT's
JSON format). Scale = max(|lo|, |hi|) / 127 (symmetric INT8, ORT's and TensorRT's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, require

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOL_OPS = ("AveragePool", "GlobalAveragePool", "MaxPool")
# ops whose inputs take Q/DQ in TensorRT INT8 (ModelOpt's default quantizable types for TensorRT,
# less BatchNormalization / Clip / Mul, which only ever run fused into a partition here)
TRT_INT8_OPS = LINEAR_OPS + POOL_OPS + ("Add", "Concat")
# pointwise ops TensorRT fuses into a conv/gemm epilogue when every variable input is from the partition
EPILOGUE_OPS = ("BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
                "Selu", "Softplus", "Mul", "Add", "Sub", "Div", "Neg", "Abs", "PRelu", "Erf", "MaxPool")
COPY_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")
QMAX = 127.0


class _G:
    """Producer / consumer / constant maps of an ONNX graph (node names are unique)."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.nodes = list(g.node)
        self.init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in self.nodes:
            if n.op_type == "Constant" and n.output:
                self.init.setdefault(n.output[0], None)  # constant, value not needed
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i, t in enumerate(n.input):
                if t:
                    self.consumers.setdefault(t, []).append((n, i))
        self.outputs = {o.name for o in g.output}

    def var_inputs(self, n) -> list[tuple[int, str]]:
        return [(i, t) for i, t in enumerate(n.input) if t and t not in self.init]

    def parent(self, t: str):
        return self.producer.get(t)


def _backbone(g: _G, t: str, depth: int = 0):
    """The Conv/ConvTranspose whose output reaches tensor ``t`` through fusible single-input
    epilogue ops (BN, activation, bias, SiLU), or None (ModelOpt's ``get_fusible_backbone``)."""
    n = g.parent(t)
    if n is None or depth > 8:
        return None
    if n.op_type in ("Conv", "ConvTranspose"):
        return n
    if n.op_type in EPILOGUE_OPS and n.op_type != "MaxPool":
        vi = g.var_inputs(n)
        srcs = {_name(_backbone(g, x, depth + 1)) for _, x in vi}
        if len(srcs) == 1 and None not in srcs:
            return _backbone(g, vi[0][1], depth + 1)
    return None


def _name(n) -> str | None:
    return n.name if n is not None else None


def _ancestors(g: _G, t: str, limit: int = 400) -> dict[str, int]:
    """Producer node name -> shortest distance (in nodes) walking back from tensor ``t``."""
    out: dict[str, int] = {}
    frontier = [(t, 0)]
    while frontier and len(out) < limit:
        nxt = []
        for x, d in frontier:
            n = g.parent(x)
            if n is None or n.name in out:
                continue
            out[n.name] = d
            nxt += [(y, d + 1) for _, y in g.var_inputs(n)]
        frontier = nxt
    return out


def residual_adds(g: _G) -> dict[str, int]:
    """Residual Adds: Add node name -> index of its NON-residual input (the one TensorRT fuses into
    the producing conv); the other input is the skip. ModelOpt's ``build_non_residual_input_map``:
    with a conv backbone on one input only, that input (unless the backbone is the common ancestor,
    ConvNeXt's pattern); on both, the input on the longer path from the lowest common ancestor."""
    out: dict[str, int] = {}
    for n in g.nodes:
        vi = g.var_inputs(n)
        if n.op_type != "Add" or len(vi) != 2 or len(n.input) != 2:
            continue
        (ia, a), (ib, b) = vi
        if g.parent(a) is None or g.parent(b) is None:
            continue
        ba, bb = _backbone(g, a), _backbone(g, b)
        if ba is None and bb is None or (ba is not None and bb is not None and ba.name == bb.name):
            continue
        anc_a, anc_b = _ancestors(g, a), _ancestors(g, b)
        common = set(anc_a) & set(anc_b)
        lca = min(common, key=lambda k: (anc_a[k] + anc_b[k], k)) if common else None
        if ba is not None and bb is not None:
            out[n.name] = ia if (anc_a.get(lca, 0) > anc_b.get(lca, 0)) else ib
        elif ba is not None:
            if lca != ba.name:
                out[n.name] = ia
        elif lca != bb.name:
            out[n.name] = ib
    return out


def partitions(g: _G, residual: dict[str, int]) -> list[list[str]]:
    """Fusible partitions (node names, head first): a weighted op and its fused epilogue."""
    done: set[str] = set()
    parts: list[list[str]] = []
    for head in g.nodes:
        if head.op_type not in LINEAR_OPS or head.name in done:
            continue
        part, outs, stack = [head.name], set(head.output), [head]
        done.add(head.name)
        while stack:
            cur = stack.pop()
            if cur.op_type == "Add" and cur.name in residual:
                continue  # the partition ends at its residual Add
            for t in cur.output:
                for c, idx in g.consumers.get(t, []):
                    if c.name in done:
                        continue
                    fused_add = c.op_type == "Add" and residual.get(c.name) == idx
                    pointwise = c.op_type in EPILOGUE_OPS and c.name not in residual and all(x in outs for _, x in g.var_inputs(c))
                    if fused_add or pointwise:
                        part.append(c.name)
                        done.add(c.name)
                        outs.update(c.output)
                        stack.append(c)
        parts.append(part)
    return parts


@dataclass
class Placement:
    """Where the Q/DQ pairs go. ``inputs``: (consumer node, input index, tensor) activation inputs
    quantized per tensor; ``weights``: (node, input index, per-channel axis); ``groups``: tensor ->
    shared-scale group id (Concat); ``residual``: residual Add -> its quantized skip tensor;
    ``partitions``: the fusible partitions; ``no_range``: tensors left in float for want of a
    calibration range."""

    inputs: list[tuple[str, int, str]] = field(default_factory=list)
    weights: list[tuple[str, int, int]] = field(default_factory=list)
    groups: dict[str, int] = field(default_factory=dict)
    residual: dict[str, str] = field(default_factory=dict)
    partitions: list[list[str]] = field(default_factory=list)
    no_range: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"num_quantized_inputs": len(self.inputs), "num_int8_weights": len(self.weights),
                "num_partitions": len(self.partitions), "residual_adds": self.residual,
                "concat_groups": _group_lists(self.groups), "no_range": self.no_range}


def _group_lists(groups: dict[str, int]) -> list[list[str]]:
    out: dict[int, list[str]] = {}
    for t, k in groups.items():
        out.setdefault(k, []).append(t)
    return list(out.values())


def _weight_axis(g: _G, n) -> int:
    if n.op_type == "ConvTranspose":
        return 1
    if n.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in n.attribute) else 1
    if n.op_type == "MatMul":
        return 1
    return 0


def place(model, ranges: dict[str, tuple[float, float]], exclude: Sequence[str] = ()) -> Placement:
    """The TensorRT placement of ``model`` (float ONNX, BatchNormalization folded or not)."""
    g = _G(model)
    ex = set(exclude)
    res = residual_adds(g)
    parts = partitions(g, res)
    p = Placement(partitions=parts)
    part_of = {n: i for i, part in enumerate(parts) for n in part}
    heads = {part[0] for part in parts}
    want: list[tuple[Any, int, str]] = []
    for n in g.nodes:
        if n.name in ex:
            continue
        if n.name in heads:
            want += [(n, i, t) for i, t in g.var_inputs(n) if i < 2]
            if len(n.input) > 1 and g.init.get(n.input[1]) is not None:
                p.weights.append((n.name, 1, _weight_axis(g, n)))
        elif n.op_type == "Add" and n.name in res and n.name in part_of and parts[part_of[n.name]][0] not in ex:
            skip = 1 - res[n.name]
            want.append((n, skip, n.input[skip]))
            p.residual[n.name] = n.input[skip]
    quantized_nodes = {n.name for n, _, _ in want}

    def feeds_quantized(t: str, seen: int = 0) -> bool:
        for c, _ in g.consumers.get(t, []):
            if c.name in quantized_nodes and c.op_type in LINEAR_OPS:
                return True
            if c.op_type in COPY_OPS and seen < 6 and any(feeds_quantized(o, seen + 1) for o in c.output):
                return True
        return False

    for n in g.nodes:  # pooling outside partitions (ModelOpt: a quantizable consumer or producer)
        if n.op_type in POOL_OPS and n.name not in part_of and n.name not in ex:
            src = g.parent(n.input[0])
            if feeds_quantized(n.output[0]) or (src is not None and src.name in part_of):
                want.append((n, 0, n.input[0]))
    wanted = {t for _, _, t in want}
    k = 0
    for n in g.nodes:  # Concat whose output is quantized: every input too, one shared scale
        if n.op_type == "Concat" and n.output[0] in wanted and n.name not in ex:
            vi = g.var_inputs(n)
            want += [(n, i, t) for i, t in vi]
            for t in [n.output[0]] + [t for _, t in vi]:
                p.groups.setdefault(t, k)
            k += 1
    seen: set[tuple[str, int]] = set()
    for n, i, t in want:
        if (n.name, i) in seen:
            continue
        seen.add((n.name, i))
        if t not in ranges:
            if t not in p.no_range:
                p.no_range.append(t)
            continue
        p.inputs.append((n.name, i, t))
    return p


def _absmax(r: tuple[float, float]) -> float:
    return max(abs(float(r[0])), abs(float(r[1])))


def load_ranges(path: Path) -> dict[str, tuple[float, float]]:
    """Tensor -> (lowest, highest) from an ORT calibration cache JSON."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    out = {}
    for k, v in load_tensors_data(path).data.items():
        lo, hi = v.range_value
        out[k] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return out


def write_qdq(model, p: Placement, ranges: dict[str, tuple[float, float]], qdq_pair_on_weights: bool = False):
    """Insert the Q/DQ pairs of ``p`` into ``model`` (modified in place and returned)."""
    from onnx import helper, numpy_helper

    g = model.graph
    nodes = {n.name: n for n in g.node}
    inits = {i.name: i for i in g.initializer}
    new_inits, new_nodes_before = [], {}  # node name -> [Q/DQ nodes to insert before it]
    scale_of: dict[str, str] = {}
    group_abs: dict[int, float] = {}
    for t, k in p.groups.items():
        if t in ranges:
            group_abs[k] = max(group_abs.get(k, 0.0), _absmax(ranges[t]))
    zp = "trt_qdq_zero_point_int8"
    new_inits.append(numpy_helper.from_array(np.zeros((), np.int8), zp))

    def scale_name(t: str) -> str:
        key = f"group{p.groups[t]}" if t in p.groups else t
        if key not in scale_of:
            a = group_abs[p.groups[t]] if t in p.groups else _absmax(ranges[t])
            s = np.float32(a / QMAX if a > 0 else 1.0 / QMAX)
            scale_of[key] = f"{key}_trt_scale"
            new_inits.append(numpy_helper.from_array(np.asarray(s, np.float32), scale_of[key]))
        return scale_of[key]

    for node_name, idx, t in p.inputs:
        n = nodes[node_name]
        s = scale_name(t)
        q, dq = f"{t}_q_{node_name}_{idx}", f"{t}_dq_{node_name}_{idx}"
        new_nodes_before.setdefault(node_name, []).extend([
            helper.make_node("QuantizeLinear", [t, s, zp], [q], name=f"QuantizeLinear_{node_name}_{idx}"),
            helper.make_node("DequantizeLinear", [q, s, zp], [dq], name=f"DequantizeLinear_{node_name}_{idx}")])
        n.input[idx] = dq
    drop = set()
    for node_name, idx, axis in p.weights:
        n = nodes[node_name]
        w_name = n.input[idx]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        red = tuple(d for d in range(w.ndim) if d != axis)
        amax = np.abs(w).max(axis=red) if w.ndim > 1 else np.abs(w)
        scale = np.where(amax > 0, amax / QMAX, 1.0 / QMAX).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        wq = np.clip(np.rint(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
        base = f"{w_name}_{node_name}"
        zpw = numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")
        sc = numpy_helper.from_array(scale, f"{base}_scale")
        new_inits += [zpw, sc]
        out = f"{base}_dequantized"
        if qdq_pair_on_weights:
            new_nodes_before.setdefault(node_name, []).extend([
                helper.make_node("QuantizeLinear", [w_name, sc.name, zpw.name], [f"{base}_quantized"], name=f"QuantizeLinear_{base}", axis=axis),
                helper.make_node("DequantizeLinear", [f"{base}_quantized", sc.name, zpw.name], [out], name=f"DequantizeLinear_{base}", axis=axis)])
        else:
            new_inits.append(numpy_helper.from_array(wq, f"{base}_int8"))
            new_nodes_before.setdefault(node_name, []).append(
                helper.make_node("DequantizeLinear", [f"{base}_int8", sc.name, zpw.name], [out], name=f"DequantizeLinear_{base}", axis=axis))
            drop.add(w_name)
        n.input[idx] = out
    ordered = []
    for n in g.node:
        ordered += new_nodes_before.get(n.name, [])
        ordered.append(n)
    del g.node[:]
    g.node.extend(ordered)
    still_used = {t for n in g.node for t in n.input}
    keep = [i for i in g.initializer if i.name not in drop or i.name in still_used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    return model


def fp16_remainder(model, opset_max: int):
    """Every float32 tensor and initializer of the Q/DQ ``model`` -> float16, graph inputs and
    outputs kept float32 (a Cast after each input, before each output), opset >= 19 (Q/DQ on
    float16 tensors). Resize ``scales`` stay float32 (the operator takes only float there).
    Raises :class:`ConfigError` when ``opset_max`` < 19."""
    onnx = require("onnx", "export")
    from onnx import TensorProto, helper, numpy_helper

    if opset_max < 19:
        raise ConfigError(f"an fp16 remainder needs opset 19 (Q/DQ on float16 tensors); the target's ceiling is {opset_max}: "
                          "set quantization.high_precision_dtype: fp32 for it")
    g = model.graph
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < 19:
            o.version = 19
    keep32 = {n.input[2] for n in g.node if n.op_type == "Resize" and len(n.input) > 2 and n.input[2]}
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    casts_in, casts_out = [], []
    for vi in g.input:
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        new = f"{vi.name}_fp16"
        for n in g.node:
            for j, t in enumerate(n.input):
                if t == vi.name:
                    n.input[j] = new
        casts_in.append(helper.make_node("Cast", [vi.name], [new], to=TensorProto.FLOAT16, name=f"Cast_{vi.name}_to_fp16"))
    for vo in g.output:
        if vo.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        new = f"{vo.name}_fp16"
        for n in g.node:
            for j, t in enumerate(n.output):
                if t == vo.name:
                    n.output[j] = new
            for j, t in enumerate(n.input):
                if t == vo.name:
                    n.input[j] = new
        casts_out.append(helper.make_node("Cast", [new], [vo.name], to=TensorProto.FLOAT, name=f"Cast_{vo.name}_to_fp32"))
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def quantize_tensorrt(pre: Path, out: Path, ranges_path: Path, preset, nodes_to_exclude: Sequence[str] = (),
                      opset_max: int = 20) -> dict[str, Any]:
    """Write ``out``: the float ONNX ``pre`` with TensorRT's Q/DQ placement, weights per
    ``preset.qdq_pair_on_weights``, the remainder in ``preset.high_precision_dtype``. Returns
    the placement summary (:meth:`Placement.to_dict`)."""
    onnx = require("onnx", "export")
    model = onnx.load(str(pre))
    ranges = load_ranges(Path(ranges_path))
    p = place(model, ranges, nodes_to_exclude)
    write_qdq(model, p, ranges, qdq_pair_on_weights=preset.qdq_pair_on_weights)
    hp = getattr(preset, "high_precision_dtype", "fp32")
    if hp == "fp16":
        model = fp16_remainder(model, opset_max)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(out), save_as_external_data=False)
    return {**p.to_dict(), "placement": "tensorrt (ModelOpt-style)", "high_precision_dtype": hp,
            "weights": "float behind Q->DQ" if preset.qdq_pair_on_weights else "int8 initializers behind DequantizeLinear"}
