"""``edgetransfer targets list|show``: the target device profiles (targets/*.yaml), on stdout."""

from __future__ import annotations

import typer

from . import present

app = typer.Typer(no_args_is_help=True, help="List and show target device profiles (on stdout).")


@app.command("list")
def targets_list():
    """Known target profiles, one table row each."""
    from ..targets import list_targets, load_target

    present.targets_table([(n, load_target(n)) for n in list_targets()])


@app.command("show")
def targets_show(name: str = typer.Argument(..., help="target profile name (targets/*.yaml) or path")):
    """Every field of one target profile, as JSON."""
    from ..targets import load_target

    present.print_json(load_target(name).to_dict())
