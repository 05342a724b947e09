"""Command line: argument parsing, exit codes and presentation only.

* :mod:`.app` — the Typer app, command groups (stages, checks, targets, devices), :func:`main`;
* :mod:`.options` — options generated from the config dataclasses, shared options, ``--config``;
* :mod:`.stages`, :mod:`.checks`, :mod:`.targets`, :mod:`.devices` — the commands;
* :mod:`.present` — everything printed (results on stdout, progress and logs on stderr).
"""

from .app import app, main

__all__ = ["app", "main"]
