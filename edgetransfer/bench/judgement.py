"""The report's judgement of every measured artifact: top-1 with Wilson intervals per data role,
the paired comparison with its fp32 parent (:func:`edgetransfer.stats.budget_judge`), ``not_faster``,
the TensorRT-on-host caveat and the recommended artifact.

Rows arrive from :func:`edgetransfer.bench.benchmark.benchmark_bundle` with their private
``_logits`` (float32 (N, C) over all evaluated images, the roles' slices in ``splits``); this
module adds JSON-ready fields and leaves the private ones for the caller to drop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..artifacts import Manifest, float_nodes_text
from ..gates import is_tensorrt_preset
from ..stats import budget_judge, wilson_interval
from ..types import Format, Precision, Runtime, Status

NOT_FASTER_RATIO = 0.95  # an INT8 row whose b1 p50 is >= 0.95x its fp32 parent's is flagged not_faster
TENSORRT_HOST_NOTE = ("a TensorRT-preset file measured under ONNX Runtime on this host: its latency is not TensorRT's "
                      "(ONNX Runtime runs its Q/DQ pairs as separate float ops; TensorRT fuses them on the device)")


def split_accuracy(logits: np.ndarray, y: np.ndarray, ref_pred: np.ndarray | None) -> dict[str, Any]:
    """Top-1 (fraction) with its Wilson 95 % interval, sample count and fp32 agreement of one role."""
    k = int((logits.argmax(1) == y).sum())
    n = int(len(y))
    return {"top1": k / n if n else None, "top1_interval95": list(wilson_interval(k, n)), "num_samples": n,
            "agreement_with_fp32": float((logits.argmax(1) == ref_pred).mean()) if ref_pred is not None and n else None}


def _p50(row: dict[str, Any], batch: int | None = None) -> tuple[int, float] | None:
    lats = row.get("latency") or []
    if not lats:
        return None
    lat = min(lats, key=lambda s: s["batch_size"]) if batch is None else next((s for s in lats if s["batch_size"] == batch), None)
    return (int(lat["batch_size"]), float(lat["p50_ms"])) if lat else None


def fp32_parent(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fp32 row a reduced-precision row is judged against: the fp32 artifact of the same
    format on the same runtime (model.tflite for model.int8.tflite), else the fp32 ONNX model on
    the same runtime, else the reference row (the fp32 ONNX on the target's first runtime)."""
    ok = [r for r in rows if r is not row and r.get("_logits") is not None and r["precision"] == str(Precision.FP32)]
    for pick in (lambda r: r["format"] == row["format"] and r["runtime"] == row["runtime"],
                 lambda r: r["format"] == str(Format.ONNX) and r["runtime"] == row["runtime"],
                 lambda r: bool(r.get("reference"))):
        found = [r for r in ok if pick(r)]
        if found:
            return found[0]
    return None


def judge_rows(results: list[dict[str, Any]], manifests: dict[str, Manifest], y: np.ndarray, splits: dict[str, slice],
               budget: float, class_names: list[str], *, host_is_target: bool) -> list[str]:
    """Add per row: ``judgement`` (headline role, vs its fp32 parent: holds, reason, drop with
    its interval, McNemar p, fidelity, per-class paired counts) and ``judgement_by_split`` (a
    summary per role); ``not_faster`` / ``speed_vs_fp32`` for INT8 rows; ``host_latency_note``
    for TensorRT-preset rows under ONNX Runtime off the device. Returns notes for the report."""
    notes: list[str] = []
    head = next(iter(splits))
    for r in results:
        lg = r.get("_logits")
        if lg is None or r["precision"] == str(Precision.FP32):
            continue
        parent = fp32_parent(r, results)
        if parent is None:
            continue
        by = {}
        for role, sl in splits.items():
            j = budget_judge(parent["_logits"][sl], lg[sl], y[sl], budget, class_names=class_names)
            by[role] = j
        j = by[head]
        r["judgement"] = {"vs": f"{parent['name']} [{parent['runtime']}]", "split": head, **j.to_dict()}
        r["judgement_by_split"] = {role: {"holds": v.holds, "decided_by": v.decided_by, "drop": v.figures["drop"],
                                          "drop_interval95": v.figures["drop_interval95"], "n": v.figures["n"],
                                          "lost": v.figures["lost"], "gained": v.figures["gained"]} for role, v in by.items()}
        if r["precision"] == str(Precision.INT8):
            mine, theirs, sp = _p50(r), None, r.get("speed_paired") or {}
            if mine is not None:
                theirs = _p50(parent, mine[0])
            if "ratio" in sp and sp.get("vs") == parent["name"]:  # interleaved with its parent: the host's drift cancels
                mine, ratio, how = (sp["batch_size"], sp["p50_ms"]), sp["ratio"], f"paired, {sp['rounds']} interleaved rounds"
            elif mine and theirs and theirs[1] > 0:
                ratio, how = mine[1] / theirs[1], "sequential rows"
            else:
                ratio = None
            if ratio is not None:
                r["speed_vs_fp32"] = {"batch_size": mine[0], "ratio": ratio, "vs": parent["name"], "method": how,
                                      **({"ratio_iqr": sp["ratio_iqr"]} if "ratio" in sp else {})}
                r["not_faster"] = ratio >= NOT_FASTER_RATIO
                if r["not_faster"]:
                    d = manifests[r["name"]].details if r["name"] in manifests else {}
                    why = [f"b{mine[0]} p50 {mine[1]:.3f} ms = {ratio:.2f}x its fp32 parent {parent['name']} on {r['runtime']} ({how})"]
                    if d.get("num_excluded_nodes"):
                        why.append(float_nodes_text(d))
                    if r.get("host_latency_note"):
                        why.append("TensorRT-preset file under ONNX Runtime")
                    r["not_faster_reason"] = "; ".join(why)
        m = manifests.get(r["name"])
        if (m is not None and r["runtime"] == str(Runtime.ONNXRUNTIME) and not host_is_target
                and is_tensorrt_preset((m.details or {}).get("preset"))):
            r["host_latency_note"] = TENSORRT_HOST_NOTE
            if r.get("not_faster"):
                r["not_faster_reason"] += "; TensorRT-preset file under ONNX Runtime"
    for r in results:
        if r.get("host_latency_note"):
            notes.append(f"{r['name']} [{r['runtime']}]: {r['host_latency_note']}")
        if r.get("not_faster"):
            notes.append(f"{r['name']} [{r['runtime']}] is not faster than fp32: {r['not_faster_reason']}")
        j = r.get("judgement")
        if j and not j["holds"]:
            notes.append(f"{r['name']} [{r['runtime']}] does not hold the {budget * 100:.2f} pt budget on {j['split']} "
                         f"against {j['vs']}: {j['reason']}")
    return notes


def recommend(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The recommended artifact: the fastest measured row (p50 at its smallest batch) that is
    ``ok``, not ``not_faster``, and within budget against its fp32 parent (fp32 rows are their own
    reference). On the accuracy/latency Pareto front of the rows within budget by construction."""
    cands = []
    for r in results:
        if r.get("status") != str(Status.OK) or (r.get("accuracy") or {}).get("top1") is None:
            continue
        p = _p50(r)
        if p is None or r.get("not_faster"):
            continue
        j = r.get("judgement")
        if r["precision"] != str(Precision.FP32) and not (j and j["holds"]):
            continue
        cands.append((p[1], -r["accuracy"]["top1"], r, p))
    if not cands:
        return None
    _, _, r, p = min(cands, key=lambda c: (c[0], c[1]))
    why = "the fastest artifact within the accuracy budget"
    if r.get("judgement"):
        why += f" ({r['judgement']['reason']})"
    if r.get("host_latency_note"):
        why += "; ranked by host latency, which is not the device's"
    return {"name": r["name"], "runtime": r["runtime"], "precision": r["precision"], "batch_size": p[0], "p50_ms": p[1],
            "top1": r["accuracy"]["top1"], "split": r["accuracy"].get("split"), "why": why}

