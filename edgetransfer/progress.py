"""Progress bars for every long loop (Rich). Quiet mode turns them off (tests, --json)."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

import sys

# not a terminal (CI logs, pipes): wide enough that the report table is not cut
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
# under torchrun only rank 0 talks
_quiet = bool(os.environ.get("EDGETRANSFER_QUIET")) or os.environ.get("RANK", "0") != "0"


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet or os.environ.get("RANK", "0") != "0"


def log(msg: str) -> None:
    if not _quiet:
        console.print(msg)


@contextlib.contextmanager
def task(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """``with task("Extracting features", total=n) as advance: advance(k)``. ``total`` None: a step
    of unknown length, shown as a spinner with the elapsed time (no "0/?" counter)."""
    if _quiet:
        yield lambda k=1: None
        return
    cols = ((TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             TimeRemainingColumn()) if total is not None else
            (SpinnerColumn(finished_text="[green]done"), TextColumn("[bold]{task.description}"), TimeElapsedColumn()))
    with Progress(*cols, console=console, transient=False) as prog:
        tid = prog.add_task(description, total=total)
        yield lambda k=1: prog.advance(tid, k)
        if total is None:  # the spinner turns into "done"
            prog.update(tid, total=1, completed=1)
