"""Everything the command line prints, in one place.

Streams: what a command produces — listings (``targets list/show``, ``devices list``), result
tables (report, selftest, compare, device check) and ``--json`` documents — goes to **stdout**,
so ``edgetransfer targets list | grep jetson`` works and ``--json`` output parses; progress bars,
log lines, per-stage summaries, notes and errors go to **stderr** (:data:`err`, the console the
stages log to). Text from files or errors is printed verbatim (no Rich markup: an extra such as
``edgetransfer[device]`` stays as it is).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..artifacts import float_nodes_text
from ..bundle import REPORT_JSON, REPORT_MD
from ..progress import console as err


def out() -> Console:
    """A console on stdout (wide enough when stdout is not a terminal, so tables are not cut).
    Built per call: ``sys.stdout`` may have been swapped (tests, redirection)."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def note(msg: str) -> None:
    err.print(f"[yellow]note:[/] {escape(msg)}")


def info(msg: str) -> None:
    """A summary line on stderr (plain text, no markup)."""
    err.print(Text(msg))


# -- stages ---------------------------------------------------------------------------------------

def report(rep: dict[str, Any], as_json: bool) -> None:
    """The benchmark report: a table (or JSON) on stdout, failures counted on stderr."""
    from ..bench.report import print_table

    if as_json:
        print_json(rep)
    else:
        print_table(rep)
    failed = [r for r in rep["results"] if r["status"] == "failed"]
    if failed:
        err.print(f"[yellow]{len(failed)} artifact(s) failed; see their error in the report")


def devices_report(combined: dict[str, Any], out_dir: Path, as_json: bool) -> None:
    from ..remote.report import print_devices_table

    if as_json:
        print_json(combined)
    else:
        print_devices_table(combined)
        info(f"report: {out_dir / REPORT_MD} (and {REPORT_JSON})")


def trained(res) -> None:
    info(f"checkpoint: {res.checkpoint} (val top-1 {res.best_val_top1:.4f}, {res.best_phase} phase, epoch {res.best_epoch})")


def exported(bundle: Path, m, simplify: bool) -> None:
    p = m.details["parity"]
    info(f"{bundle / m.file}: opset {m.details['opset']}, {m.details['exporter']}"
         + (f", onnxslim {m.details['simplified']['nodes_before']} -> {m.details['simplified']['nodes_after']} nodes" if simplify else "")
         + f", parity max |diff| {p['max_abs']:.2e}, mean {p['mean_abs']:.2e}, agreement {p['agreement']:.4f}")


def quantized(bundle: Path, m, precision: str) -> None:
    p = m.details.get("parity", {})
    if precision == "fp16":
        info(f"{bundle / m.file}: max |diff| {p['max_abs']:.2e}, mean {p['mean_abs']:.2e}, agreement {p['agreement']:.4f}")
        if m.details.get("target_note"):
            note(m.details["target_note"])
        return
    d = m.details
    nan = float("nan")
    info(f"{bundle / m.file}: preset {d['preset']['name']}, {d['calibration']['method']}, "
         f"{'per-channel' if d['preset']['per_channel'] else 'per-tensor'}; agreement with fp32 {p.get('agreement', nan):.4f}, "
         f"top-1 {d.get('val_top1_int8', nan):.4f} (fp32 {d.get('val_top1_fp32', nan):.4f}, "
         f"budget {d['budget']['max_top1_drop']:.4f}); {float_nodes_text(d)}")
    reason = ((d.get("budget") or {}).get("judgement") or {}).get("reason")
    if reason:  # why the budget holds or not (e.g. decided on logit fidelity when one image is worth more than the budget)
        info(f"budget: {reason}")


def built_mobile(bundle: Path, made: list, target_name: str) -> None:
    for m in made:
        p = m.details.get("parity") or {}
        figure = (f"agreement with fp32 {p['agreement']:.4f}, max |diff| {p['max_abs']:.2e}" if p
                  else m.details.get("parity_status", "parity not measured"))
        info(f"{bundle / m.file}: {m.format} {m.precision}, {m.size_bytes / 2**20:.2f} MiB, {figure}")
    if not made:
        err.print(f"[yellow]nothing to build: target {escape(target_name)} lists no mobile format (pass --format tflite|pte|mlpackage|ort)")


def built_engine(bundle: Path, m, precision: str, reused: bool) -> None:
    t = m.details["tensorrt"]
    info(f"{bundle / m.file}: {'reused (current)' if reused else 'built'}; {m.precision} (asked {precision}), TensorRT {t['version']}, "
         f"compute capability {t['compute_capability']} ({t['device_name']}), profile batch {t['profile']['min'][0]}..{t['profile']['max'][0]}")


# -- checks ---------------------------------------------------------------------------------------

def _tolerance(tol: dict[str, Any] | None) -> str:
    """The selftest row's logit tolerance; an INT8 row has none (judged by the sample-sized flip gate)."""
    if not tol:
        return "—"
    m = tol.get("max_abs")
    return "flip gate" if m is None or m == float("inf") else f"{m:.0e}"


def selftest(bundle: Path, res: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(res)
        return
    t = Table(title=f"selftest {bundle} — {res['golden_images']} golden images, reference {res['reference']['file']}")
    for c in ("artifact", "precision", "runtime", "status", "max |diff|", "tolerance", "agreement", "detail"):
        t.add_column(c)
    for r in res["rows"]:
        t.add_row(r["name"], r["precision"], r["runtime"], r["status"],
                  f"{r['max_abs']:.2e}" if r.get("max_abs") is not None else "—",
                  _tolerance(r.get("tolerance")),
                  f"{r['agreement']:.3f}" if r.get("agreement") is not None else "—", escape((r.get("error") or "")[:90]))
    con = out()
    con.print(t)
    con.print(f"preprocessed inputs match the reference host: {'yes' if res['input_ok'] else 'NO'} "
              f"(max diff {res['input_max_diff']:.2e})")
    for n in res["notes"]:
        con.print(f"[yellow]note:[/] {escape(n)}")
    con.print("[bold green]PASS" if res["passed"] else "[bold red]FAIL")


def comparison(old: Path, new: Path, res, as_json: bool) -> None:
    if as_json:
        print_json(res.to_dict())
        return
    t = Table(title=f"{old} -> {new}")
    for c in ("artifact", "runtime", "metric", "old", "new", "change", "verdict"):
        t.add_column(c)
    for c in res.changes:
        style = "bold red" if c.verdict == "regression" else None
        t.add_row(c.artifact, c.runtime, c.metric, str(c.old), str(c.new), c.delta,
                  escape(c.verdict + (f": {c.reason}" if c.reason else "")), style=style)
    con = out()
    con.print(t)
    for n in res.notes:
        con.print(f"[yellow]note:[/] {escape(n)}")


# -- targets and devices --------------------------------------------------------------------------

def targets_table(targets: list[tuple[str, Any]]) -> None:
    """``(name, Target)`` rows."""
    t = Table()
    for c in ("name", "arch", "runtimes", "precisions", "TensorRT / CC / DLA", "description"):
        t.add_column(c)
    for name, tg in targets:
        gpu = (f"{tg.tensorrt_version} / {tg.compute_capability or '>=' + str(tg.min_compute_capability)} / {tg.dla_cores}"
               if tg.tensorrt_version else "—")
        t.add_row(name, tg.arch, ", ".join(map(str, tg.runtimes)), ", ".join(map(str, tg.precisions)), gpu, escape(tg.description))
    out().print(t)


def devices_table(inv, holders: dict | None = None) -> None:
    if not inv.devices:
        err.print(f"no devices in {inv.path}; add one with 'edgetransfer devices add NAME --host USER@HOST --target TARGET'")
        return
    t = Table(title=str(inv.path))
    for c in ("name", "host", "target", "class", "workdir", "runs in") + (("lock",) if holders is not None else ()):
        t.add_column(c)
    for d in inv.devices.values():
        cells = [d.name, d.destination, d.target or "(bundle's)", d.device_class or "—", d.workdir, d.runs_in]
        if holders is not None:
            h = holders.get(d.name) or {}
            cells.append(escape(f"{h.get('state', '?')} {h.get('detail') or ''}".strip()))
        t.add_row(*cells)
    out().print(t)


def device_check(name: str, dev, res: dict[str, Any]) -> None:
    st, rem, ver = res["state"], res["remote"], res["version"]
    mods = rem.get("modules") or {}
    rows = [("architecture", f"{st.get('arch') or rem.get('machine')}"),
            ("OS", f"{st.get('os') or '?'}; kernel {st.get('kernel') or '?'}"),
            ("model", st.get("model") or "—"),
            ("L4T / JetPack", (f"L4T {st['l4t']}" + (f", JetPack {st['jetpack']}" if st.get("jetpack") else " (JetPack not in the table)"))
             if st.get("l4t") else "— (not a Jetson)"),
            ("Python", f"{rem.get('python_version')} ({rem.get('python')})"
             + ("; externally managed (PEP 668): install into a venv" if rem.get("externally_managed") else ""))]
    if ver:
        missing = ver.get("device_extra_missing") or []
        rows += [("edgetransfer", f"{ver['remote']} ({ver['relation']}; this workstation has {ver['local']})"),
                 ("edgetransfer[device]", "installed" if not missing else f"missing {', '.join(missing)}: " + (
                     "python3 -m venv ~/et && ~/et/bin/pip install 'edgetransfer[device]' (then python: ~/et/bin/python)"
                     if rem.get("externally_managed") else "pip install 'edgetransfer[device]'"))]
    else:
        rows.append(("edgetransfer", f"ERROR: {res['version_error']}"))
    from ..runtime import probe_modules  # the registry is the only runtime list

    rts = [f"{m} {v}" for m, v in mods.items() if m in set(probe_modules().values()) and v]
    rows.append(("runtimes", ", ".join(rts) or "none"))
    if rem.get("onnxruntime_providers"):
        rows.append(("ORT providers", ", ".join(rem["onnxruntime_providers"])))
    free = st.get("free_disk_mib")
    rows.append(("free disk", f"{free / 1024:.1f} GiB (at {dev.workdir})" if free is not None else "?"))
    rows.append(("state", res["summary"]))
    rows += [("warning", w) for w in res["warnings"]]
    t = Table(show_header=False, title=f"{name} ({res['host']})")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:  # Text: values are shown verbatim (no Rich markup: 'edgetransfer[device]' stays)
        t.add_row(Text(k), Text(str(v), style="yellow" if k == "warning" else ("red" if str(v).startswith("ERROR") else "")))
    out().print(t)


def error(exc: BaseException) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")  # escaped: "pip install 'edgetransfer[device]'" stays
