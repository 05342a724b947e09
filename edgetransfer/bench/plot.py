"""report.png: top-1 accuracy vs p50 latency per artifact x runtime, the Pareto front marked.

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
        pts.append({"label": f"{r['name']} [{r['runtime']}]", "p50_ms": lat["p50_ms"], "batch_size": lat["batch_size"],
                    "top1": acc["top1"], "name": r["name"], "runtime": r["runtime"]})
    return pts


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
            ax.scatter(p["p50_ms"], p["top1"] * 100, marker=markers[p["runtime"]], s=70 if on else 40,
                       facecolors="tab:red" if on else "none", edgecolors="tab:red" if on else "tab:gray", zorder=3)
            # staggered offsets keep the labels of neighbouring points apart
            ax.annotate(p["label"], (p["p50_ms"], p["top1"] * 100), textcoords="offset points",
                        xytext=(6, 4 + 10 * (p_i % 3)), fontsize=7)
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
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"edgetransfer — {report.get('target')}: accuracy vs latency")
        ax.margins(x=0.1, y=0.3)  # room for the labels above the points
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)
