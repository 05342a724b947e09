"""report.png: top-1 accuracy vs p50 latency per artifact x runtime, the Pareto front marked.

Each point carries its top-1 Wilson 95 % interval as a vertical error bar; labels are placed
where they overlap no other label (:func:`place_labels`); the y axis never goes above 100 %; the
title says "host measurement" when the host is not the target device.

matplotlib is optional (``pip install 'edgetransfer[plot]'``); without it the plot is skipped and
the report says so. The Pareto computation itself needs nothing but Python.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

PLOT_EXTRA = "plot"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency_ms, accuracy) that no other point dominates: a point is
    dominated when another is at least as fast AND at least as accurate, and strictly better in
    one. Lower latency and higher accuracy are better. Returned sorted by latency."""
    front = []
    for i, (li, ai) in enumerate(points):
        dominated = any((lj <= li and aj >= ai) and (lj < li or aj > ai) for j, (lj, aj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def plot_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per measured row: its p50 at the smallest measured batch size and its top-1."""
    pts = []
    for r in report.get("results", []):
        acc, lats = r.get("accuracy") or {}, r.get("latency") or []
        if r.get("status") != "ok" or acc.get("top1") is None or not lats:
            continue
        lat = min(lats, key=lambda s: s["batch_size"])
        iv = acc.get("top1_interval95") or [acc["top1"], acc["top1"]]
        pts.append({"label": f"{r['name']} [{r['runtime']}]", "p50_ms": lat["p50_ms"], "batch_size": lat["batch_size"],
                    "top1": acc["top1"], "top1_lo": iv[0], "top1_hi": iv[1], "name": r["name"], "runtime": r["runtime"]})
    return pts


# label offsets tried in turn (points): right, above, below, left, then further out
_OFFSETS = [(6, 4), (6, -10), (6, 14), (6, -22), (-8, 4), (-8, -10), (6, 26), (6, -34), (-8, 16), (-8, -22),
            (6, 38), (6, -46), (-8, 28), (-8, -34), (6, 50), (6, -58)]


def place_labels(ax, fig, pts: list[dict[str, Any]], fontsize: int = 7) -> list[Any]:
    """Annotate every point with its label at the first offset (:data:`_OFFSETS`) whose text box
    overlaps no label placed before (points taken from the most accurate down); returns the
    placed text boxes (display coordinates, matplotlib ``Bbox``)."""
    renderer = fig.canvas.get_renderer()
    boxes: list[Any] = []
    order = sorted(range(len(pts)), key=lambda i: (-pts[i]["top1"], pts[i]["p50_ms"]))
    for i in order:
        p = pts[i]
        best = None
        for dx, dy in _OFFSETS:
            t = ax.annotate(p["label"], (p["p50_ms"], p["top1"] * 100), textcoords="offset points", xytext=(dx, dy),
                            fontsize=fontsize, ha="left" if dx >= 0 else "right")
            bb = t.get_window_extent(renderer).expanded(1.02, 1.1)
            if not any(bb.overlaps(b) for b in boxes):
                best = (t, bb)
                break
            t.remove()
        if best is None:  # every offset taken: the last one, with a leader line
            t = ax.annotate(p["label"], (p["p50_ms"], p["top1"] * 100), textcoords="offset points",
                            xytext=(10, -12 * (len(boxes) + 1)), fontsize=fontsize, arrowprops={"arrowstyle": "-", "lw": 0.5})
            best = (t, t.get_window_extent(renderer))
        boxes.append(best[1])
    return boxes


def plot_title(report: dict[str, Any]) -> str:
    """The title; it says "host measurement" when the host is not the target device."""
    host = "" if report.get("host_is_target", True) else " (host measurement, not the device)"
    return f"edgetransfer — {report.get('target')}: accuracy vs latency{host}"


def y_limits(pts: list[dict[str, Any]]) -> tuple[float, float]:
    """The y range (%) holding every point's interval with a margin, never below 0 nor above 100."""
    lo = min(p["top1_lo"] for p in pts) * 100
    hi = max(p["top1_hi"] for p in pts) * 100
    pad = max(1.0, (hi - lo) * 0.15)
    return max(0.0, lo - pad), min(100.0, hi + pad)


def matplotlib_available() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def write_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Write the scatter plot to ``path`` (PNG, atomically). Returns None (nothing written) when
    matplotlib is missing or no row has both an accuracy and a latency."""
    if not matplotlib_available():
        return None
    pts = plot_points(report)
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ..artifacts import atomic_path

    front = pareto_front([(p["p50_ms"], p["top1"]) for p in pts])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    try:
        runtimes = sorted({p["runtime"] for p in pts})
        markers = dict(zip(runtimes, "osD^v<>p*h"))
        for p_i, p in enumerate(pts):
            on = p_i in front
            ax.errorbar(p["p50_ms"], p["top1"] * 100, yerr=[[(p["top1"] - p["top1_lo"]) * 100], [(p["top1_hi"] - p["top1"]) * 100]],
                        fmt="none", ecolor="tab:red" if on else "tab:gray", elinewidth=0.8, capsize=3, zorder=2)
            ax.scatter(p["p50_ms"], p["top1"] * 100, marker=markers[p["runtime"]], s=70 if on else 40,
                       facecolors="tab:red" if on else "none", edgecolors="tab:red" if on else "tab:gray", zorder=3)
        if len(front) > 1:
            ax.step([pts[i]["p50_ms"] for i in front], [pts[i]["top1"] * 100 for i in front], where="post", color="tab:red",
                    lw=1, ls="--", zorder=2, label="Pareto front")
        for rt in runtimes:
            ax.scatter([], [], marker=markers[rt], facecolors="none", edgecolors="black", label=rt)
        ax.scatter([], [], marker="o", color="tab:red", label="on the Pareto front")
        lat = [p["p50_ms"] for p in pts]
        if min(lat) > 0 and max(lat) / min(lat) > 20:
            ax.set_xscale("log")
        bs = sorted({p["batch_size"] for p in pts})
        ax.set_xlabel(f"p50 latency, batch {'/'.join(map(str, bs))} (ms, lower is better{', log scale' if ax.get_xscale() == 'log' else ''})")
        split = (report.get("dataset") or {}).get("split") or "val"
        ax.set_ylabel(f"top-1 accuracy on {split} (%), Wilson 95 % interval")
        ax.set_title(plot_title(report), fontsize=10)
        ax.margins(x=0.25)
        ax.set_ylim(*y_limits(pts))
        fig.tight_layout()
        place_labels(ax, fig, pts)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)
