"""The ``edgetransfer`` command: the Typer app, its command groups, exit codes.

Exit codes: 0 success; 1 ``selftest`` found an artifact that does not reproduce its golden
logits; 2 bad input or environment (an EdgeTransferError, the message says how to fix it); 3 a
result breaks the target's budget (``compare``: NEW regresses against OLD); 130 interrupted.
"""

from __future__ import annotations

import typer

from ..errors import EdgeTransferError
from . import checks, deploy, devices, present, stages, targets

STAGES, CHECKS, TARGETS, DEVICES, DEPLOY = "Stages", "Checks", "Targets", "Devices", "Deploy"

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Pretrained image model -> measured, deployable edge artifact.")
for fn in (stages.run, stages.train, stages.export, stages.quantize, stages.build, stages.benchmark, stages.demo):
    app.command(rich_help_panel=STAGES)(fn)
for fn in (checks.selftest, checks.compare):
    app.command(rich_help_panel=CHECKS)(fn)
app.command("app", rich_help_panel=DEPLOY)(deploy.app)
app.command("export-data", rich_help_panel=DEPLOY)(deploy.export_data)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        present.out().print(f"edgetransfer {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """Pretrained image model -> measured, deployable edge artifact."""


app.add_typer(targets.app, name="targets", rich_help_panel=TARGETS)
app.add_typer(devices.app, name="devices", rich_help_panel=DEVICES)


def main() -> None:
    """Console-script entry point (``edgetransfer = "edgetransfer.cli:main"``)."""
    try:
        app(standalone_mode=False)
    except EdgeTransferError as exc:
        present.error(exc)
        raise SystemExit(exc.exit_code)
    except typer.Abort:
        raise SystemExit(130)
    except typer.TyperException as exc:  # usage errors (typer's own click): the message, not a traceback
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            present.err.print(f"error: {exc.format_message()}", markup=False)
        raise SystemExit(exc.exit_code)
