"""report.md sections beyond the main table: the data roles every figure is on, the paired
judgement of every reduced-precision artifact against its fp32 parent (with per-class paired
counts), and the recommended artifact. Pure formatting of what :mod:`.judgement` computed."""

from __future__ import annotations

from typing import Any


def _pt(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:+.2f}"


def _iv(iv: list[float] | None, scale: float = 100.0, nd: int = 1) -> str:
    return "—" if not iv else f"[{iv[0] * scale:+.{nd}f}, {iv[1] * scale:+.{nd}f}]"


def top1_cell(acc: dict[str, Any] | None) -> str:
    """``0.9351 [0.885, 0.964]``: top-1 with its Wilson 95 % interval (fractions)."""
    if not acc or acc.get("top1") is None:
        return "—"
    iv = acc.get("top1_interval95")
    return f"{acc['top1']:.4f}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")


def data_lines(report: dict[str, Any]) -> list[str]:
    """Which images every figure is on (headline role first) and how many."""
    ds = report.get("dataset", {})
    splits = ds.get("splits") or {}
    head = ds.get("split", "val")
    carved = {x.get("role"): x["note"].split(";")[0] for x in ds.get("roles") or []
              if str(x.get("note", "")).startswith("carved")}  # a carved split shares its folder with another

    def where(r: str, v: dict) -> str:
        root = v.get("root") or "-"
        return f"{carved[r]} of {root}" if r in carved else root

    parts = [f"{r} {v['num_images']} images ({where(r, v)})" for r, v in splits.items()]
    lines = [f"Figures: `top-1` and the judgement are on **{head}**"
             + (f"; {', '.join(parts)}" if parts else "") + "."]
    if head == "test":
        lines.append("The test split was seen by no decision (training picked its best epoch on val, INT8 was decided on "
                     "val, calibration used train); `top-1 val` is beside it for comparison. Intervals: Wilson 95 %.")
    elif head == "val":
        lines.append("**No test split: these figures are on val, which chose the best epoch and the INT8 model (an "
                     "optimistic estimate).** Intervals: Wilson 95 %.")
    return lines


def judgement_lines(report: dict[str, Any]) -> list[str]:
    """The paired judgement table and per-class paired counts of every judged row."""
    rows = [r for r in report.get("results", []) if r.get("judgement")]
    if not rows:
        return []
    b = report.get("budget") or {}
    out = ["", f"Paired judgement against each artifact's fp32 parent (same images; budget "
               f"{(b.get('max_top1_drop') or 0) * 100:.2f} pt of top-1, rule `edgetransfer.stats.budget_judge`: the drop's "
               "Newcombe 95 % interval; logit fidelity decides when one image is worth more than the budget):", "",
           "| artifact | runtime | vs | split | images | lost | gained | drop pt [95 %] | McNemar p | decided by | within budget | "
           "val drop pt [95 %] | b1 p50 vs fp32 |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        j = r["judgement"]
        v = (r.get("judgement_by_split") or {}).get("val") if j["split"] != "val" else None
        sp = r.get("speed_vs_fp32")
        iqr = (sp or {}).get("ratio_iqr")
        speed = "—" if not sp else (f"{sp['ratio']:.2f}x" + (f" ({iqr[0]:.2f}-{iqr[1]:.2f})" if iqr else " (sequential)")
                                    + (" (not faster)" if r.get("not_faster") else ""))
        out.append(f"| {r['name']} | {r['runtime']} | {j['vs']} | {j['split']} | {j['n']} | {j['lost']} | {j['gained']} | "
                   f"{_pt(j['drop'])} {_iv(j['drop_interval95'])} | {j['mcnemar_p']:.3g} | {j['decided_by']} | "
                   f"{'yes' if j['holds'] else '**no**'} | {(_pt(v['drop']) + ' ' + _iv(v['drop_interval95'])) if v else '—'} | "
                   f"{speed} |")
    paired = next(((r.get("speed_paired") or {}) for r in rows if "ratio" in (r.get("speed_paired") or {})), None)
    if paired:
        out += ["", f"`b1 p50 vs fp32`: the artifact and its fp32 parent timed in {paired['rounds']} interleaved rounds of "
                    f"{paired['calls_per_round']} calls each, the median of the per-round p50 ratios (quartiles in "
                    "parentheses; `edgetransfer.bench.paired`), so a slow spell of the host cancels; the main table's rows "
                    "were timed one after another. `(sequential)`: no paired figure, the ratio of the main table's rows."]
    for r in rows:
        if "error" in (r.get("speed_paired") or {}):
            out.append(f"- {r['name']} [{r['runtime']}]: no paired timing ({r['speed_paired']['error']})")
    small = [r for r in rows if r["judgement"].get("resolvable") is False]
    if small:
        j = small[0]["judgement"]
        t = j.get("fidelity_thresholds") or {}
        out += ["", f"**Too few images to resolve the budget:** one image is {100 / j['n']:.2f} pt of {j['split']} here, more "
                    f"than the {j['budget'] * 100:.2f} pt budget, so 'within budget' rests on logit fidelity against fp32 "
                    f"(decisive agreement >= {t.get('min_decisive_agreement')}, mean KL <= {t.get('max_mean_kl')}, mean "
                    f"cosine >= {t.get('min_mean_cosine')}): " + "; ".join(
                        f"{r['name']} [{r['runtime']}]: decisive agreement {f['decisive_agreement']:.3f} of "
                        f"{f['decisive_images']}, KL {f['mean_kl']:.2g}, cosine {f['mean_cosine']:.4f}"
                        for r in small for f in [r["judgement"].get("fidelity") or {}] if "mean_kl" in f)
                + ". Measure on more images before trusting a small difference."]
    out += ["", "Per-class paired counts (headline split): " + "; ".join(
        f"{r['name']} [{r['runtime']}]: " + ", ".join(
            f"{c['class']} {c['n']} img, -{c['lost']}/+{c['gained']}" for c in r["judgement"].get("per_class") or [])
        for r in rows) + "."]
    return out


def recommended_lines(report: dict[str, Any]) -> list[str]:
    rec = report.get("recommended")
    if not rec:
        return ["", "Recommended: none (no measured artifact is within the accuracy budget)."]
    return ["", f"Recommended: **{rec['name']}** on {rec['runtime']} (b{rec['batch_size']} p50 {rec['p50_ms']:.3f} ms, "
                f"top-1 {rec['top1']:.4f} on {rec.get('split') or 'val'}): {rec['why']}."]
