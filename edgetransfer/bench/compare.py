"""Compare two benchmark reports: what changed, and whether NEW breaks the budgets (a CI gate).

Rows are matched by (artifact file name, runtime). Budgets:

* ``max_top1_drop`` (fraction): NEW's top-1 may be at most this much below OLD's for the same row
  (default: the target's ``accuracy_budget.max_top1_drop``);
* ``max_p50_ratio`` (optional): NEW's compute-only p50 may be at most this multiple of OLD's, per
  batch size;
* ``max_p50_ms`` (optional): NEW's p50 at its smallest batch size may not exceed this.

A row that was ``ok`` in OLD and is missing or not ``ok`` in NEW also breaks the budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

_EPS = 1e-12


@dataclass
class Change:
    """One compared figure. ``verdict``: ``ok`` | ``info`` | ``regression`` (breaks a budget)."""

    artifact: str
    runtime: str
    metric: str
    old: Any
    new: Any
    delta: str
    verdict: str = "ok"
    reason: str = ""


@dataclass
class Comparison:
    budgets: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "budgets": self.budgets, "regressions": len(self.regressions),
                "changes": [asdict(c) for c in self.changes], "notes": self.notes}


def _rows(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["name"], r["runtime"]): r for r in report.get("results", [])}


def _lat(row: dict[str, Any]) -> dict[int, float]:
    return {int(s["batch_size"]): float(s["p50_ms"]) for s in row.get("latency") or []}


def compare_reports(old: dict[str, Any], new: dict[str, Any], *, max_top1_drop: float, max_p50_ratio: float | None = None,
                    max_p50_ms: float | None = None, allow_different_data: bool = False) -> Comparison:
    """Differences OLD -> NEW and the budget verdicts (see the module docstring).

    Reports of different validation data (class names, image count or per-class counts) are
    refused with a :class:`~edgetransfer.errors.DataError` (exit 2) unless
    ``allow_different_data``: then a note says the accuracy deltas compare different data."""
    cmp = Comparison({"max_top1_drop": max_top1_drop, "max_p50_ratio": max_p50_ratio, "max_p50_ms": max_p50_ms})
    if old.get("target") != new.get("target"):
        cmp.notes.append(f"the reports are for different targets ({old.get('target')} vs {new.get('target')})")
    od, nd = old.get("dataset", {}), new.get("dataset", {})
    if (od.get("class_names"), od.get("num_images"), od.get("counts")) != (nd.get("class_names"), nd.get("num_images"), nd.get("counts")):
        if not allow_different_data:
            from ..errors import DataError

            raise DataError(f"the reports are of different validation data ({od.get('num_images')} vs {nd.get('num_images')} images, "
                            f"classes {od.get('class_names')} vs {nd.get('class_names')}, counts {od.get('counts')} vs {nd.get('counts')}); "
                            "their accuracy is not comparable. Pass --allow-different-data to compare them anyway")
        cmp.notes.append(f"the validation sets differ ({od.get('num_images')} vs {nd.get('num_images')} images, classes "
                         f"{od.get('class_names')} vs {nd.get('class_names')}): accuracy deltas compare different data")
    oe, ne = old.get("environment", {}), new.get("environment", {})
    if oe.get("cpu") != ne.get("cpu"):
        cmp.notes.append(f"measured on different hosts ({oe.get('cpu')} vs {ne.get('cpu')}): latency deltas compare machines")
    orows, nrows = _rows(old), _rows(new)
    for key in list(orows) + [k for k in nrows if k not in orows]:
        name, rt = key
        o, n = orows.get(key), nrows.get(key)
        if n is None:
            bad = o["status"] == "ok"
            cmp.changes.append(Change(name, rt, "row", o["status"], "missing", "", "regression" if bad else "info",
                                      "measured in OLD, absent from NEW" if bad else ""))
            continue
        if o is None:
            cmp.changes.append(Change(name, rt, "row", "missing", n["status"], "", "info", "new in NEW"))
            continue
        if o["status"] != n["status"]:
            bad = o["status"] == "ok"
            cmp.changes.append(Change(name, rt, "status", o["status"], n["status"], "", "regression" if bad else "info",
                                      (n.get("error") or "")[:120] if bad else ""))
        oa, na = (o.get("accuracy") or {}).get("top1"), (n.get("accuracy") or {}).get("top1")
        if oa is not None and na is not None:
            drop = oa - na
            bad = drop > max_top1_drop + _EPS
            cmp.changes.append(Change(name, rt, "top-1", round(oa, 6), round(na, 6), f"{(na - oa) * 100:+.2f} pt",
                                      "regression" if bad else "ok",
                                      f"drop {drop * 100:.2f} pt > budget {max_top1_drop * 100:.2f} pt" if bad else ""))
        ol, nl = _lat(o), _lat(n)
        for b in sorted(set(ol) & set(nl)):
            ratio = nl[b] / ol[b] if ol[b] > 0 else float("inf")
            bad = max_p50_ratio is not None and ratio > max_p50_ratio + _EPS
            cmp.changes.append(Change(name, rt, f"p50 ms b{b}", round(ol[b], 4), round(nl[b], 4), f"x{ratio:.3f}",
                                      "regression" if bad else "ok", f"ratio {ratio:.3f} > {max_p50_ratio}" if bad else ""))
        if max_p50_ms is not None and nl and n["status"] == "ok":
            b = min(nl)
            if nl[b] > max_p50_ms + _EPS:
                cmp.changes.append(Change(name, rt, f"p50 ms b{b} budget", max_p50_ms, round(nl[b], 4), "", "regression",
                                          f"p50 {nl[b]:.3f} ms > budget {max_p50_ms} ms"))
        oe2, ne2 = (o.get("latency_e2e") or {}).get("p50_ms"), (n.get("latency_e2e") or {}).get("p50_ms")
        if oe2 and ne2:
            cmp.changes.append(Change(name, rt, "e2e p50 ms", round(oe2, 4), round(ne2, 4), f"x{ne2 / oe2:.3f}", "info"))
        if o.get("size_mib") != n.get("size_mib"):
            cmp.changes.append(Change(name, rt, "size MiB", o.get("size_mib"), n.get("size_mib"), "", "info"))
    return cmp
