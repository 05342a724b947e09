"""Every gate's decision and sample size, for report.json's ``gates`` and report.md's "Gates"
table: read from the artifacts' manifests, where the jobs that made them recorded their gates.

Sources (manifest ``details``):

- ``optimizations_on_off`` (INT8 ONNX, :mod:`edgetransfer.quantize.int8`): the sample-sized flip
  gate of :func:`edgetransfer.gates.flip_gate` on ONNX Runtime graph optimisations on vs off, or
  ``applies: false`` with the reason (TensorRT-preset files);
- ``gate`` (mobile INT8 conversions, :mod:`edgetransfer.builders.base`): the same flip gate on the
  .tflite / .pte / .ort INT8 file vs its fp32 parent;
- ``budget.judgement`` (INT8 ONNX): the accuracy-budget decision of
  :func:`edgetransfer.stats.budget_judge` on the split that decided INT8 (val).

Each row: ``artifact``, ``gate``, ``decision`` (``passed`` | ``failed`` | ``not_applicable`` for
flip gates; ``held`` | ``exceeded`` for the budget), ``passed`` (bool, None when not applicable),
``images`` (the sample size: int, None when not applicable), ``decisive_images`` / ``flips`` /
``decisive_flips`` / ``allowed_flips`` / ``rel_logit_diff`` (flip gates), ``decided_by`` /
``lost`` / ``gained`` / ``chosen_rung`` (budget: the INT8 ladder candidate the file is, named in the reason too),
``reason`` (the job's own sentence). No I/O, never raises on a
manifest without gates (it contributes no row).
"""

from __future__ import annotations

from typing import Any

FLIP_KEYS = ("decisive_images", "flips", "decisive_flips", "allowed_flips", "rel_logit_diff")


def _flip_row(artifact: str, g: dict[str, Any]) -> dict[str, Any]:
    return {"artifact": artifact, "gate": g.get("gate"), "decision": "passed" if g.get("passed") else "failed",
            "passed": bool(g.get("passed")), "images": g.get("images"), **{k: g.get(k) for k in FLIP_KEYS},
            "reason": g.get("reason")}


def _with_rung(reason: str | None, d: dict[str, Any]) -> str | None:
    """The budget row's reason + which INT8 ladder candidate the file is (``chosen_rung``), the
    calibration recipe's method when the chosen candidate's ranges are another estimator's, and the
    float share: the file a user gets need not be the recipe they asked for."""
    rung = d.get("chosen_rung")
    if not rung:
        return reason
    method = (d.get("calibration") or {}).get("method")
    # the ladder records each rung-a..c candidate's range estimator (later rungs keep their base's: none recorded)
    est = next((r.get("estimator") for r in d.get("ladder") or [] if isinstance(r, dict) and r.get("rung") == rung), None)
    other = f", ranges {est} where the recipe asked for {method}" if method and est and est != method else ""
    share = d.get("float_compute_share")
    floats = f", {share:.0%} of compute nodes in float" if isinstance(share, (int, float)) else ""
    return f"{reason or ''}; the file is ladder candidate {rung}{other}{floats}"


def collect_gates(manifests: dict[str, Any]) -> list[dict[str, Any]]:
    """Gate rows (module docstring) of ``manifests`` ({artifact file name: Manifest}, in order)."""
    rows: list[dict[str, Any]] = []
    for name, m in manifests.items():
        d = getattr(m, "details", None) or {}
        oo = d.get("optimizations_on_off")
        if isinstance(oo, dict) and oo.get("applies") is False:
            rows.append({"artifact": name, "gate": "ONNX Runtime graph optimisations on vs off", "decision": "not_applicable",
                         "passed": None, "images": None, "reason": oo.get("reason")})
        elif isinstance(oo, dict) and "passed" in oo:
            rows.append(_flip_row(name, oo))
        if isinstance(d.get("gate"), dict):
            rows.append(_flip_row(name, d["gate"]))
        j = (d.get("budget") or {}).get("judgement")
        if isinstance(j, dict) and "holds" in j:
            rows.append({"artifact": name, "gate": f"INT8 accuracy budget ({(d['budget'].get('max_top1_drop') or 0) * 100:.2f} pt, val)",
                         "decision": "held" if j["holds"] else "exceeded", "passed": bool(j["holds"]), "images": j.get("n"),
                         "decided_by": j.get("decided_by"), "lost": j.get("lost"), "gained": j.get("gained"),
                         "chosen_rung": d.get("chosen_rung"), "reason": _with_rung(j.get("reason"), d)})
    return rows


def gate_lines(report: dict[str, Any]) -> list[str]:
    """report.md's "Gates" table: one line per gate row of ``report["gates"]``; [] when none."""
    rows = report.get("gates") or []
    if not rows:
        return []
    out = ["", "Gates (every check that decides an artifact's status; sample = images it was judged on):", "",
           "| artifact | gate | decision | images | decisive | flips (decisive / allowed) | reason |",
           "|---|---|---|---:|---:|---:|---|"]
    for g in rows:
        flips = "—" if g.get("flips") is None else f"{g['flips']} ({g.get('decisive_flips')} / {g.get('allowed_flips')})"
        if g.get("lost") is not None:
            flips = f"-{g['lost']} / +{g.get('gained')} (paired)"
        dec = g["decision"] if g.get("passed") is not False else f"**{g['decision']}**"
        out.append(f"| {g['artifact']} | {g.get('gate')} | {dec} | {'—' if g.get('images') is None else g['images']} | "
                   f"{'—' if g.get('decisive_images') is None else g['decisive_images']} | {flips} | "
                   f"{(g.get('reason') or '').replace('|', '/')} |")
    return out
