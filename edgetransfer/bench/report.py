"""report.json (versioned schema), report.md (one table) and the console table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: one row per artifact x runtime x batch size."""
    header = ["artifact", "precision", "runtime", "status", "MiB", "top-1", "agree fp32", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s"]
    rows = []
    for r in report["results"]:
        acc = r.get("accuracy") or {}
        lats = r.get("latency") or [None]
        for lat in lats:
            rows.append([
                r["name"], r["precision"], r["runtime"], r["status"] if not r.get("error") else f"{r['status']}: {r['error'][:60]}",
                _fmt(r.get("size_mib")), _fmt(acc.get("top1"), 4), _fmt(acc.get("agreement_with_fp32"), 4),
                _fmt(lat and lat["batch_size"]), _fmt(lat and lat["p50_ms"]), _fmt(lat and lat["p90_ms"]),
                _fmt(lat and lat["p99_ms"]), _fmt(lat and lat["throughput_ips"], 1),
            ])
    return header, rows


def to_markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    env = report.get("environment", {})
    ds = report.get("dataset", {})
    lines = [
        f"# edgetransfer report — target `{report.get('target')}`",
        "",
        f"Host: {env.get('cpu', '?')} ({env.get('threads', '?')} threads); measured on this host"
        + ("" if report.get("host_is_target", True) else " (a host measurement, not the target device)") + ".",
        f"Validation set: {ds.get('num_images', '?')} images, classes {ds.get('class_names')}; skipped files: {len(ds.get('skipped', []))}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    notes = report.get("notes") or []
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    report = {"schema_version": SCHEMA_VERSION, **report}
    jp, mp = out_dir / "report.json", out_dir / "report.md"
    atomic_write_json(jp, report)
    atomic_write_text(mp, to_markdown(report))
    return jp, mp


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(report)
    t = Table(title=f"edgetransfer report — target {report.get('target')}")
    for h in header:
        t.add_column(h, justify="right" if h not in ("artifact", "precision", "runtime", "status") else "left")
    for row in rows:
        t.add_row(*row)
    import sys

    Console(width=None if sys.stdout.isatty() else 160).print(t)


def load_report(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
