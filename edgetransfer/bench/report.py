"""report.json (versioned schema), report.md (one table), report.png and the console table.

Schema history (``schema_version``):

1. issue 2: rows with name, format, precision, runtime, path, sha256, size_mib, status, error,
   accuracy, latency list, execution_provider, rss_mib.
2. adds per row: ``latency_e2e`` (JPEG bytes in -> top-k, with phase medians), ``memory`` (peak
   resident set and its growth, MiB), ``threads``/``threads_requested``, ``providers``/
   ``requested_providers``, ``pareto``; drops ``rss_mib`` (now ``memory.growth_mib``); adds
   ``plot`` (the PNG's file name or null) at the top level.
3. the data roles: ``accuracy`` is on the headline role (``accuracy.split``: ``test``, else
   ``val`` / ``data``) with ``top1_interval95`` (Wilson); ``accuracy_by_split`` per role;
   ``judgement`` / ``judgement_by_split`` (paired, vs the fp32 parent), ``not_faster`` (a flag
   beside status ``ok``, never a status), ``speed_vs_fp32``, ``host_latency_note`` per row;
   ``dataset.split`` / ``dataset.splits``, ``budget`` and ``recommended`` at the top level; status
   ``gate_failed`` (an agreement gate failed: :mod:`edgetransfer.gates`). Within version 3 (no field
   removed): ``speed_paired`` per INT8 row (:mod:`edgetransfer.bench.paired`: the row and its fp32
   parent timed in interleaved rounds), and ``speed_vs_fp32.method`` / ``ratio_iqr`` saying which
   figure ``not_faster`` was decided on.

:data:`REPORT_SCHEMA` is a JSON Schema (draft 2020-12) of the required part; :func:`validate_report`
checks a report against it without extra dependencies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, atomic_write_text
from ..bundle import REPORT_JSON, REPORT_MD, REPORT_PNG
from ..errors import ArtifactError
from .plot import PLOT_EXTRA, matplotlib_available, pareto_front, plot_points, write_plot
from .gates_report import gate_lines
from .report_sections import data_lines, judgement_lines, recommended_lines, top1_cell

SCHEMA_VERSION = 3

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_LATENCY = {
    "type": "object",
    "required": ["batch_size", "warmup", "iterations", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms",
                 "throughput_ips"],
    "properties": {k: _NUM for k in ("batch_size", "warmup", "iterations", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms",
                                     "std_ms", "min_ms", "throughput_ips")},
}
_ROW = {
    "type": "object",
    "required": ["name", "format", "precision", "runtime", "path", "sha256", "size_mib", "status", "error", "accuracy",
                 "latency", "latency_e2e", "memory", "execution_provider", "threads"],
    "properties": {
        "name": {"type": "string"}, "format": {"type": "string"}, "precision": {"type": "string"},
        "runtime": {"type": "string"}, "path": {"type": "string"}, "sha256": {"type": "string"}, "size_mib": _NUM,
        "status": {"enum": ["ok", "failed", "unavailable", "not_runnable", "budget_exceeded", "gate_failed"]},
        "not_faster": {"type": "boolean"},
        "error": {"type": ["string", "null"]},
        "accuracy": {"type": ["object", "null"], "required": ["top1", "agreement_with_fp32", "num_samples"],
                     "properties": {"top1": _NUM, "top5": _NUM_OR_NULL, "agreement_with_fp32": _NUM_OR_NULL,
                                    "num_samples": {"type": "integer"}, "per_class": {"type": "object"},
                                    "confusion": {"type": "array"}}},
        "latency": {"type": "array", "items": _LATENCY},
        "latency_e2e": {"type": ["object", "null"],
                        "required": ["p50_ms", "decode_p50_ms", "preprocess_p50_ms", "infer_p50_ms", "postprocess_p50_ms"]},
        "memory": {"type": ["object", "null"], "required": ["peak_rss_mib", "growth_mib", "method"]},
        "execution_provider": {"type": ["string", "null"]},
        "threads": {"type": ["integer", "null"]},
    },
}
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edgetransfer benchmark report",
    "type": "object",
    "required": ["schema_version", "target", "created_at", "environment", "settings", "dataset", "results", "notes"],
    "properties": {
        "schema_version": {"enum": [SCHEMA_VERSION]},
        "target": {"type": "string"},
        "environment": {"type": "object", "required": ["cpu", "arch", "python", "versions"]},
        "settings": {"type": "object", "required": ["batch_sizes", "warmup", "min_iterations", "min_seconds", "threads"]},
        "dataset": {"type": "object", "required": ["class_names", "num_images", "counts"]},
        "results": {"type": "array", "items": _ROW},
        "notes": {"type": "array", "items": {"type": "string"}},
        "plot": {"type": ["string", "null"]},
        "gates": {"type": "array", "items": {"type": "object", "required": ["artifact", "gate", "decision", "passed", "images"],
                                             "properties": {"decision": {"enum": ["passed", "failed", "not_applicable",
                                                                                  "held", "exceeded"]},
                                                            "passed": {"type": ["boolean", "null"]},
                                                            "images": {"type": ["integer", "null"]}}}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool,
          "null": type(None)}


def _check(value: Any, schema: dict[str, Any], where: str, errors: list[str]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        ok = any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool)) for t in types)
        if not ok:
            errors.append(f"{where}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if isinstance(value, dict):
        errors.extend(f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value)
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                _check(value[k], sub, f"{where}.{k}", errors)
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _check(v, schema["items"], f"{where}[{i}]", errors)


def validate_report(report: dict[str, Any]) -> list[str]:
    """Problems of ``report`` against :data:`REPORT_SCHEMA` (type, required, enum, items); empty
    when it conforms."""
    errors: list[str] = []
    _check(report, REPORT_SCHEMA, "report", errors)
    return errors


def load_report(path: Path) -> dict[str, Any]:
    """Read a report.json; :class:`ArtifactError` when it is not one or has another schema major."""
    p = Path(path)
    try:
        rep = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read report {p}: {exc}; pass a report.json written by 'edgetransfer benchmark'") from exc
    if not isinstance(rep, dict) or "results" not in rep:
        raise ArtifactError(f"{p} is not an edgetransfer report (no 'results'); pass a report.json written by 'edgetransfer benchmark'")
    return rep


# -- Pareto ----------------------------------------------------------------------------------
def annotate_pareto(report: dict[str, Any]) -> None:
    """Set ``pareto`` on every row: True for the measured rows on the accuracy/p50 Pareto front."""
    pts = plot_points(report)
    front = {(pts[i]["name"], pts[i]["runtime"]) for i in pareto_front([(p["p50_ms"], p["top1"]) for p in pts])}
    for r in report.get("results", []):
        r["pareto"] = (r["name"], r["runtime"]) in front


# -- tables ----------------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


_SHORT_EP = {"CPUExecutionProvider": "CPU EP", "CUDAExecutionProvider": "CUDA EP", "TensorrtExecutionProvider": "TensorRT EP"}


def _provider_cell(r: dict[str, Any]) -> str:
    """Execution provider (short) and intra-op threads, e.g. ``CPU EP, 1 thr``."""
    ep = r.get("execution_provider")
    parts = [_SHORT_EP.get(ep, ep)] if ep else []
    if r.get("threads"):
        parts.append(f"{r['threads']} thr")
    return ", ".join(parts) or "—"


HEADER = ["artifact", "precision", "runtime", "status", "MiB", "top-1", "top-1 val", "agree fp32", "batch", "p50 ms", "p90 ms", "p99 ms",
          "img/s", "e2e p50 ms", "mem MiB", "provider", "Pareto"]
_TEXT_COLUMNS = ("artifact", "precision", "runtime", "status", "provider", "Pareto")
_COMPACT = ("artifact", "runtime", "status", "top-1", "batch", "p50 ms", "img/s", "Pareto")  # names carry the precision


def _pct_cell(lat: dict | None, p: int) -> str:
    """The p-th percentile latency; marked ``†`` when the loop made fewer calls than the percentile
    needs to rest on at least one call above it (1 / (1 - p/100): 10 for p90, 100 for p99)."""
    if not lat:
        return _fmt(None)
    cell = _fmt(lat[f"p{p}_ms"])
    need = round(1 / (1 - p / 100))
    return cell + "†" if lat.get("iterations") is not None and lat["iterations"] < need else cell


def table_rows(report: dict[str, Any], with_errors: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: one row per artifact x runtime x batch size
    (``with_errors``: a failed/unavailable row's status carries the start of its error).
    ``e2e p50 ms``: JPEG bytes -> top-k, batch 1; ``mem MiB``: resident-set growth while loaded and
    running; ``provider``: execution provider and threads; ``Pareto``: ``*`` on the
    accuracy/latency Pareto front."""
    rows = []
    for r in report["results"]:
        acc = r.get("accuracy") or {}
        lats = r.get("latency") or [None]
        e2e = r.get("latency_e2e") or {}
        mem = r.get("memory") or {}
        status = r["status"] if not (r.get("error") and with_errors) else f"{r['status']}: {r['error'][:70]}"
        val = (r.get("accuracy_by_split") or {}).get("val") if acc.get("split") not in (None, "val") else None
        for k, lat in enumerate(lats):
            first = k == 0
            rows.append([
                r["name"], r["precision"], r["runtime"], status,
                _fmt(r.get("size_mib")), top1_cell(acc), top1_cell(val) if val else _fmt(None), _fmt(acc.get("agreement_with_fp32"), 4),
                _fmt(lat and lat["batch_size"]), _fmt(lat and lat["p50_ms"]), _pct_cell(lat, 90), _pct_cell(lat, 99),
                _fmt(lat and lat["throughput_ips"], 1),
                _fmt(e2e.get("p50_ms")) if first and (not lat or lat["batch_size"] == 1) else "",
                _fmt(mem.get("growth_mib"), 1) if first else "",
                _provider_cell(r), "*" if r.get("pareto") else "",
            ])
    return list(HEADER), rows


def _image_text(ds: dict) -> str:
    """The image policy and its per-case counts, for the report's dataset line ('' when not recorded)."""
    pol, cases, ign = ds.get("image_policy"), ds.get("image_cases") or {}, ds.get("ignored") or []
    if not pol:
        return ""
    text = (f"; images decoded with EXIF orientation {'applied' if pol.get('exif_orientation') else 'ignored'}, "
            f"16-bit scaled, alpha over RGB{tuple(pol.get('background', ()))}")
    text += (" (" + ", ".join(f"{k}: {v}" for k, v in cases.items()) + ")") if cases else ""
    return text + (f"; non-image files ignored: {len(ign)}" if ign else "")


def _load_text(env: dict[str, Any]) -> str:
    la = env.get("load_average") or {}
    if not la.get("start") or not la.get("end"):
        return ""
    return f"; 1-min load average {la['start'][0]:.1f} at the start, {la['end'][0]:.1f} at the end"


def to_markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    env = report.get("environment", {})
    ds = report.get("dataset", {})
    st = report.get("settings", {})
    lines = [
        f"# edgetransfer report — target `{report.get('target')}`",
        "",
        f"Host: {env.get('cpu', '?')} ({env.get('arch', '?')}, {env.get('cpu_count', '?')} logical CPUs"
        + (f", {env['usable_cpus']} usable by this process" if env.get("usable_cpus") not in (None, env.get("cpu_count")) else "") + ", "
        f"threads {st.get('threads') or 'runtime default'}); measured on this host"
        + ("" if report.get("host_is_target", True) else " (a host measurement, not the target device)")
        + _load_text(env) + ".",
        f"Evaluation set ({ds.get('split', 'val')}): {ds.get('num_images', '?')} images, classes {ds.get('class_names')}; "
        f"skipped files: {len(ds.get('skipped') or [])}" + _image_text(ds) + ".",
        *data_lines(report),
        f"Latency: {st.get('warmup')} warm-up calls, then at least {st.get('min_iterations')} calls and {st.get('min_seconds')} s "
        "per figure; `e2e` = JPEG bytes in, decode + preprocess + inference + softmax/top-k, batch 1; "
        "`mem` = resident-set growth while loaded and running (in this process: the first row of a runtime also pays for "
        "loading that runtime's libraries, so compare rows of one runtime); `†` = fewer timed calls than the percentile "
        "needs (p90: 10, p99: 100), an interpolation between the slowest calls; `Pareto` `*` = on the accuracy/latency Pareto front (no other row both faster and more accurate).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if h in _TEXT_COLUMNS else "---:" for h in header) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    lines += judgement_lines(report) + gate_lines(report) + recommended_lines(report)
    e2e_rows = [r for r in report["results"] if r.get("latency_e2e")]
    if e2e_rows:
        lines += ["", "End-to-end p50 breakdown (ms): " + "; ".join(
            f"{r['name']} [{r['runtime']}] decode {r['latency_e2e']['decode_p50_ms']:.2f}, preprocess "
            f"{r['latency_e2e']['preprocess_p50_ms']:.2f}, infer {r['latency_e2e']['infer_p50_ms']:.2f}, "
            f"top-k {r['latency_e2e']['postprocess_p50_ms']:.3f}" for r in e2e_rows) + "."]
    from .report_board import early_stopping_lines, power_lines, sustained_lines  # additive sections (issue 14)

    lines += early_stopping_lines(report) + power_lines(report) + sustained_lines(report)
    if report.get("plot"):
        lines += ["", f"![accuracy vs latency]({report['plot']})"]
    notes = report.get("notes") or []
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path, *, plot: bool = True) -> tuple[Path, Path]:
    """Write report.json, report.md and (when matplotlib is installed) report.png into ``out_dir``.
    Sets ``schema_version``, the rows' ``pareto`` flags and ``plot`` on ``report`` (in place)."""
    out_dir = Path(out_dir)
    report.pop("schema_version", None)
    rest = dict(report)
    report.clear()
    report.update({"schema_version": SCHEMA_VERSION, **rest})
    annotate_pareto(report)
    notes = [n for n in report.get("notes", []) if not n.startswith(REPORT_PNG)]
    png = None
    if plot:
        if not matplotlib_available():
            notes.append(f"report.png skipped: matplotlib is not installed (pip install 'edgetransfer[{PLOT_EXTRA}]')")
        else:
            png = write_plot(report, out_dir / REPORT_PNG)
            if png is None:
                notes.append("report.png skipped: no artifact has both an accuracy and a latency")
    if png is None and (out_dir / REPORT_PNG).exists():
        (out_dir / REPORT_PNG).unlink()  # a plot of an earlier run would contradict this report
    report["notes"] = notes
    report["plot"] = png.name if png else None
    jp, mp = out_dir / REPORT_JSON, out_dir / REPORT_MD
    atomic_write_json(jp, report)
    atomic_write_text(mp, to_markdown(report))
    return jp, mp


def print_table(report: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    header, rows = table_rows(report)
    con = Console(width=None if sys.stdout.isatty() else 200)
    keep = list(range(len(header)))
    # a console narrower than the full table (each column as wide as its widest cell, 3 characters of rule and
    # padding per column): only the columns that decide, the rest is in report.md
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    if con.width < sum(w + 3 for w in widths) + 1:
        keep = [i for i, h in enumerate(header) if h in _COMPACT]
    compact = len(keep) < len(header)
    if compact:  # point estimates only (intervals in report.md), no vertical rules: fits 80 columns
        rows = [[c.split(" [")[0] if header[i] == "top-1" else c for i, c in enumerate(r)] for r in rows]
    t = Table(title=f"edgetransfer report — target {report.get('target')}"
              + (" (compact: intervals and every column in report.md)" if compact else ""),
              **({"box": None, "pad_edge": False, "show_edge": False} if compact else {}))
    for i in keep:
        # fold, never cut with "…": a name the user cannot read whole is no use; figures never wrap
        text = header[i] in _TEXT_COLUMNS
        t.add_column(header[i], justify="left" if text else "right", overflow="fold", no_wrap=not text,
                     min_width=min(widths[i], 24) if header[i] in ("artifact", "runtime") else None)
    for row in rows:
        t.add_row(*(escape(row[i]) for i in keep))  # error texts hold [brackets] (pip extras): not markup
    con.print(t)
    for n in report.get("notes") or []:
        con.print(f"note: {escape(n)}")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (``|`` inside a cell becomes ``/``)."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
