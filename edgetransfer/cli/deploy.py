"""The deploy commands: ``app`` (a sample app for the board in BUNDLE/app/) and ``export-data``
(a split of the bundle's data as an ImageFolder, to copy to a board)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import present
from .options import target_option
from .stages import target_for


def app(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    target: Optional[str] = target_option(),
):
    """Write BUNDLE/app/: a torch-free program per runtime of the target (ONNX Runtime, LiteRT,
    TensorRT) that classifies images with the bundle's artifact and prints top-k and its timing."""
    from ..appgen import write_app

    out, cfg = write_app(bundle, target_for(bundle, target))
    runs = ", ".join(f"run_{rt}.py ({Path(a).name})" for rt, a in cfg["artifacts"].items())
    present.info(f"wrote {out}: {runs}; on the board: python3 {out.name}/run_<runtime>.py IMAGES_OR_DIR (see {out.name}/README.md)")


def export_data(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    out: Path = typer.Argument(..., help="new directory for the ImageFolder (DIR/<class>/<images>)"),
    split: str = typer.Option("val", "--split", help="val, test or train: the split recorded in bundle.json"),
):
    """Write a split of the bundle's data as an ImageFolder (to copy to a board, or --data elsewhere)."""
    from ..dataexport import export_split

    counts = export_split(bundle, out, split)
    present.info(f"wrote {sum(counts.values())} {split} images to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
