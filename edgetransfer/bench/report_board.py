"""The report's power section (report.md and the per-board sections of the device report):
the sensor, the rails summed, idle power, and one line per artifact x batch with
``mean_power_w``, ``mj_per_inference`` and ``mj_per_inference_above_idle``
(computed in :mod:`.power`). A board without a sensor says "no power sensor", never a number."""

from __future__ import annotations

from typing import Any

POWER_HEADER = ["artifact", "runtime", "batch", "mean W", "mJ/inference", "mJ/inference above idle", "samples"]


def _f(v: Any, nd: int = 2) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def power_lines(report: dict[str, Any]) -> list[str]:
    """Markdown lines (empty for a report written before power sampling existed)."""
    info = report.get("power")
    if not info:
        return []
    if not info.get("sensor"):
        return ["", f"Power: {info.get('reason') or 'no power sensor'}; no energy figure is reported."]
    lines = ["", f"Power: sensor `{info['sensor']}`, rails {', '.join(info.get('rails') or [])}; summed: "
             f"{' + '.join(info.get('summed') or [])}; idle {_f(info.get('idle_w'))} W over {info.get('idle_seconds')} s "
             f"before the run, sampled every {info.get('interval_s')} s during each timed loop."]
    if info.get("note"):
        lines.append(f"Power note: {info['note']}.")
    rows = []
    for r in report.get("results", []):
        for lat in r.get("latency") or []:
            p = lat.get("power")
            if p:
                rows.append([r["name"], r["runtime"], str(lat["batch_size"]), _f(p.get("mean_power_w")), _f(p.get("mj_per_inference")),
                             _f(p.get("mj_per_inference_above_idle")), str(p.get("samples"))])
    if rows:
        lines += ["", "| " + " | ".join(POWER_HEADER) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(POWER_HEADER))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def early_stopping_lines(report: dict[str, Any]) -> list[str]:
    """LoadGen-style early-stopping p90/p99 per row and batch, with the samples each rests on."""
    cells = []
    for r in report.get("results", []):
        for lat in r.get("latency") or []:
            es = lat.get("early_stopping") or {}
            if not es:
                continue
            part = []
            for k in ("p90", "p99"):
                e = es.get(k) or {}
                part.append(f"{k} {_f(e.get('estimate_ms'))} ms (discards {e['discarded']} of {e['samples']})" if e.get("estimate_ms") is not None
                            else f"{k} — ({e.get('samples')} samples, needs {e.get('min_samples')})")
            cells.append(f"{r['name']} [{r['runtime']}] b{lat['batch_size']}: " + ", ".join(part))
    if not cells:
        return []
    return ["", "Early-stopping percentiles (MLPerf LoadGen single-stream rule, 99 % confidence: the estimate holds for the true "
            "percentile; needs 64 samples for p90, 662 for p99): " + "; ".join(cells) + "."]


def sustained_lines(report: dict[str, Any]) -> list[str]:
    """The ``--sustained`` section: first/last-window p50, drift, throttle events and their rules."""
    s = report.get("sustained")
    if not s:
        return []
    if s.get("error"):
        return ["", f"Sustained run: not measured ({s['error']})."]
    lines = ["", f"Sustained run ({s.get('name')} [{s.get('runtime')}], batch 1, {s['seconds']:.0f} s, {s['calls']} calls): "
             f"p50 {_f(s.get('first_p50_ms'))} ms in the first {s['window_s']:.0f} s, {_f(s.get('last_p50_ms'))} ms in the last "
             f"{s['window_s']:.0f} s, drift {_f(s.get('drift_pct'), 1)} %; "
             + (f"{len(s['events'])} throttle event(s):" if s.get("events") else "no throttle event.")]
    for e in s.get("events") or []:
        lines.append(f"- {e['start_s']:.0f}-{e['end_s']:.0f} s, {e['rule']}: {e['reason']}")
    temps = [x["temp_c"] for x in s.get("samples") or [] if x.get("temp_c") is not None]
    if temps:
        lines.append(f"Temperature {temps[0]:.1f} -> {temps[-1]:.1f} °C (max {max(temps):.1f} °C).")
    lines.append("Throttle rules: " + "; ".join(s.get("rules") or []) + ".")
    if s.get("plot"):
        lines += ["", f"![latency and temperature over time]({s['plot']})"]
    return lines


def write_sustained_plot(s: dict[str, Any], path) -> Any:
    """PNG of the sustained run: per-second p50 latency and max temperature over time (None
    without matplotlib or samples)."""
    from .plot import matplotlib_available

    pts = [x for x in s.get("samples") or [] if x.get("p50_ms") is not None]
    if not matplotlib_available() or not pts:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ..artifacts import atomic_path

    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    try:
        ax.plot([x["t"] for x in pts], [x["p50_ms"] for x in pts], color="tab:blue", lw=1)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("p50 latency per second (ms)", color="tab:blue")
        temps = [x for x in pts if x.get("temp_c") is not None]
        if temps:
            ax2 = ax.twinx()
            ax2.plot([x["t"] for x in temps], [x["temp_c"] for x in temps], color="tab:red", lw=1)
            ax2.set_ylabel("max temperature (°C)", color="tab:red")
        for e in s.get("events") or []:
            ax.axvspan(e["start_s"], e["end_s"] or e["start_s"] + 1, color="tab:orange", alpha=0.2)
        ax.set_title(f"sustained: {s.get('name')} [{s.get('runtime')}], drift {_f(s.get('drift_pct'), 1)} %")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
