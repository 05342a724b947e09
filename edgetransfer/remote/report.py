"""The combined report of ``edgetransfer benchmark BUNDLE --device A --device B``: one section per
board (its state before and after, the transfer, its own report), written as
``<bundle>/devices/report.json`` and ``report.md``, and the console table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, atomic_write_text
from ..bench.report import SCHEMA_VERSION, _fmt, md_table, table_rows
from ..bench.report_board import power_lines, sustained_lines
from ..bundle import REPORT_JSON, REPORT_MD
from ..runtime import probe_modules
from .boardstate import BoardState, state_summary

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


def devices_to_markdown(combined: dict[str, Any]) -> str:
    runtime_modules = set(probe_modules().values())
    lines = [f"# edgetransfer device report — bundle `{combined.get('bundle')}`", "",
             f"edgetransfer {combined.get('edgetransfer_version')} on the workstation; {len(combined['devices'])} device(s); {combined.get('created_at')}.",
             "Each board measured itself with the torch-free device benchmark; accuracy is on the bundle's validation images, sent along.",
             ""]
    lines += md_table(*device_table_rows(combined))
    for sec in combined["devices"]:
        lines += ["", f"## {sec['device']} — {sec['status']}", "",
                  f"- Host {sec.get('host')}, target `{sec.get('target')}`, runs in `{sec.get('runs_in')}`."]
        rem = sec.get("remote") or {}
        if rem:
            mods = rem.get("modules") or {}
            rts = ", ".join(f"{m} {v}" for m, v in mods.items() if v and m in runtime_modules) or "no runtime"
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
            lines += md_table(*table_rows(rep))
            lines += power_lines(rep) + sustained_lines(rep)
            errs = [f"- `{r['name']}` [{r['runtime']}] {r['status']}: {r['error']}" for r in rep.get("results", []) if r.get("error")]
            notes = [f"- {n}" for n in rep.get("notes") or []]
            if errs or notes:
                lines += [""] + errs + notes
    return "\n".join(lines) + "\n"


def write_devices_report(combined: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``out_dir/report.json`` (sections per device) and ``out_dir/report.md``, atomically."""
    out_dir = Path(out_dir)
    combined = {"schema_version": SCHEMA_VERSION, **combined}
    for sec in combined["devices"]:  # --sustained: each board's plot, drawn here from its samples
        sus = (sec.get("report") or {}).get("sustained")
        if sus and sus.get("samples"):
            from ..bench.report_board import write_sustained_plot
            from ..bundle import SUSTAINED_PNG

            name = f"{sec['device']}-{SUSTAINED_PNG}"
            sus["plot"] = name if write_sustained_plot(sus, out_dir / name) else None
    jp, mp = out_dir / REPORT_JSON, out_dir / REPORT_MD
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
