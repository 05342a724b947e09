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


def table_rows(report: dict[str, Any], with_errors: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: one row per artifact x runtime x batch size
    (``with_errors``: a failed/unavailable row's status carries the start of its error)."""
    header = ["artifact", "precision", "runtime", "status", "MiB", "top-1", "agree fp32", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s"]
    rows = []
    for r in report["results"]:
        acc = r.get("accuracy") or {}
        lats = r.get("latency") or [None]
        for lat in lats:
            rows.append([
                r["name"], r["precision"], r["runtime"], r["status"] if not (r.get("error") and with_errors) else f"{r['status']}: {r['error'][:60]}",
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


# -- combined report of `edgetransfer benchmark BUNDLE --device A --device B` -------------------
DEVICE_HEADER = ["device", "artifact", "precision", "runtime", "status", "top-1", "agree fp32", "batch", "p50 ms", "p99 ms", "img/s", "max °C before→after"]
_PICK = ["artifact", "precision", "runtime", "status", "top-1", "agree fp32", "batch", "p50 ms", "p99 ms", "img/s"]


def _temps(sec: dict[str, Any]) -> str:
    b = ((sec.get("board") or {}).get("before") or {}).get("max_temp_c")
    a = ((sec.get("board") or {}).get("after") or {}).get("max_temp_c")
    return f"{_fmt(b, 1)}→{_fmt(a, 1)}" if (a is not None or b is not None) else "—"


def device_table_rows(combined: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table across boards: one row per device x artifact x runtime x batch size; a failed
    board is one row with the step that failed and its error."""
    rows = []
    for sec in combined["devices"]:
        if sec["status"] != "ok" or not sec.get("report"):
            err = (sec.get("error") or "").replace("\n", " ")
            err = err if len(err) <= 110 else err[:109] + "…"
            rows.append([sec["device"], "—", "—", "—", f"failed ({sec.get('stage')}): {err}"] + ["—"] * 6 + [_temps(sec)])
            continue
        header, trows = table_rows(sec["report"], with_errors=False)
        idx = [header.index(h) for h in _PICK]
        for r in trows:
            rows.append([sec["device"]] + [r[i] for i in idx] + [_temps(sec)])
    return DEVICE_HEADER, rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]


def devices_to_markdown(combined: dict[str, Any]) -> str:
    from ..remote.boardstate import BoardState, state_summary

    lines = [f"# edgetransfer device report — bundle `{combined.get('bundle')}`", "",
             f"edgetransfer {combined.get('edgetransfer_version')} on the workstation; {len(combined['devices'])} device(s); {combined.get('created_at')}.",
             "Each board measured itself with the torch-free device benchmark; accuracy is on the bundle's validation images, sent along.",
             ""]
    lines += _md_table(*device_table_rows(combined))
    for sec in combined["devices"]:
        lines += ["", f"## {sec['device']} — {sec['status']}", "",
                  f"- Host {sec.get('host')}, target `{sec.get('target')}`, runs in `{sec.get('runs_in')}`."]
        rem = sec.get("remote") or {}
        if rem:
            mods = rem.get("modules") or {}
            rts = ", ".join(f"{m} {v}" for m, v in mods.items() if v and m in ("onnxruntime", "tensorrt", "openvino", "torch")) or "no runtime"
            prov = rem.get("onnxruntime_providers")
            lines.append(f"- Board Python {rem.get('python_version')} ({rem.get('python')}), {rem.get('machine')}; edgetransfer "
                         f"{rem.get('edgetransfer') or 'missing'}; {rts}" + (f" [{', '.join(prov)}]" if prov else "") + ".")
        ver = sec.get("version") or {}
        if ver.get("note"):
            lines.append(f"- Version: {ver['note']}.")
        board = sec.get("board") or {}
        for when in ("before", "after"):
            if board.get(when):
                lines.append(f"- Board {when} the run: {state_summary(BoardState.from_dict(board[when]))}.")
        tr = sec.get("transfer")
        if tr:
            lines.append(f"- Transfer: {tr['files_sent']} file(s) sent ({tr['bytes_sent'] / 2**20:.2f} MiB), {tr['files_unchanged']} unchanged"
                         + (f", {tr['files_resumed']} resumed ({tr['bytes_resumed'] / 2**20:.2f} MiB already there)" if tr.get("files_resumed") else "")
                         + f", {tr['seconds']:.1f} s.")
        if sec.get("error"):
            lines.append(f"- **Failed during {sec.get('stage')}**: {sec['error']}")
        for w in sec.get("warnings") or []:
            lines.append(f"- **Warning**: {w}")
        rep = sec.get("report")
        if rep:
            env = rep.get("environment", {})
            ds = rep.get("dataset", {})
            lines += ["", f"CPU {env.get('cpu', '?')} ({env.get('threads', '?')} threads); {ds.get('num_images', '?')} validation images.", ""]
            lines += _md_table(*table_rows(rep))
            errs = [f"- `{r['name']}` [{r['runtime']}] {r['status']}: {r['error']}" for r in rep.get("results", []) if r.get("error")]
            notes = [f"- {n}" for n in rep.get("notes") or []]
            if errs or notes:
                lines += [""] + errs + notes
    return "\n".join(lines) + "\n"


def write_devices_report(combined: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``out_dir/report.json`` (sections per device) and ``out_dir/report.md``, atomically."""
    out_dir = Path(out_dir)
    combined = {"schema_version": SCHEMA_VERSION, **combined}
    jp, mp = out_dir / "report.json", out_dir / "report.md"
    atomic_write_json(jp, combined)
    atomic_write_text(mp, devices_to_markdown(combined))
    return jp, mp


def print_devices_table(combined: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    header, rows = device_table_rows(combined)
    t = Table(title=f"edgetransfer device report — {combined.get('bundle')}")
    for h in header:
        t.add_column(h, justify="left" if h in ("device", "artifact", "precision", "runtime", "status") else "right")
    for row in rows:
        t.add_row(*row)
    con = Console(width=None if sys.stdout.isatty() else 180)
    con.print(t)
    from rich.markup import escape

    for sec in combined["devices"]:
        for w in sec.get("warnings") or []:
            con.print(f"[yellow]{escape(sec['device'] + ': ' + w)}")
