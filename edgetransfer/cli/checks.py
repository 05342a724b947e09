"""The check commands: selftest (golden logits reproduced?) and compare (a CI regression gate)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import present
from .options import DEFAULT_TARGET, json_option, target_option
from .stages import target_for


def selftest(
    bundle: Path = typer.Argument(..., help="bundle directory (with golden/golden.json)"),
    target: Optional[str] = target_option(),
    threads: int = typer.Option(0, "--threads", help="inference threads (0 = runtime default)"),
    as_json: bool = json_option("the result"),
):
    """Check that every artifact reproduces the bundle's golden logits (exit 0 pass, 1 fail).

    Each artifact is run on the golden images and held to its precision's tolerance. Exit 0 when
    all that can run here pass, 1 otherwise."""
    from ..bench.golden import selftest as run_selftest

    res = run_selftest(bundle, target_for(bundle, target), threads=threads)
    present.selftest(bundle, res, as_json)
    if not res["passed"]:
        raise SystemExit(1)


def compare(
    old: Path = typer.Argument(..., help="baseline report.json"),
    new: Path = typer.Argument(..., help="candidate report.json"),
    target: Optional[str] = typer.Option(None, "--target", help="target whose accuracy budget applies (default: NEW's target)"),
    max_top1_drop: Optional[float] = typer.Option(None, "--max-top1-drop", help="fraction, e.g. 0.005 (default: the target's budget)"),
    max_p50_ratio: Optional[float] = typer.Option(None, "--max-p50-ratio", help="fail when NEW p50 > this x OLD p50 (e.g. 1.10)"),
    max_p50_ms: Optional[float] = typer.Option(None, "--max-p50-ms", help="fail when NEW p50 (smallest batch) exceeds this"),
    as_json: bool = json_option("the comparison"),
    allow_different_data: bool = typer.Option(False, "--allow-different-data",
                                              help="compare reports of different validation data (else refused, exit 2)"),
):
    """Print what changed from OLD to NEW; exit 3 when NEW breaks the budgets (a CI regression gate)."""
    from ..bench.compare import compare_reports
    from ..bench.report import load_report
    from ..errors import BudgetExceededError, TargetError
    from ..targets import load_target

    o, n = load_report(old), load_report(new)
    if max_top1_drop is None:
        try:
            max_top1_drop = load_target(target or n.get("target") or DEFAULT_TARGET).max_top1_drop
        except TargetError:
            if target:
                raise
            max_top1_drop = load_target(DEFAULT_TARGET).max_top1_drop
    res = compare_reports(o, n, max_top1_drop=max_top1_drop, max_p50_ratio=max_p50_ratio, max_p50_ms=max_p50_ms,
                          allow_different_data=allow_different_data)
    present.comparison(old, new, res, as_json)
    if not res.passed:
        raise BudgetExceededError(f"{new} breaks the budgets against {old}: " + "; ".join(
            f"{c.artifact} [{c.runtime}] {c.metric}: {c.reason}" for c in res.regressions)
            + " — fix the regression, or relax the budget (--max-top1-drop / --max-p50-ratio) if it is intended")
