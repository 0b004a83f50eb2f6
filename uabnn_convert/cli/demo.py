"""``uabnn-convert demo``: the whole story on scikit-learn's digits (see :mod:`..train.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import UsageError, app

HELP = (
    "Train a sign BNN on scikit-learn's digits, convert it, fine-tune sign vs c-sign, compare, "
    "and resume exactly. Nothing is downloaded. Example:\n\n"
    "[cyan]uabnn-convert demo --epochs 2 --out runs/demo[/cyan]"
)


@app.command("demo", help=HELP)
def demo_command(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            show_default=False,
            help="Run directory, new or empty (default: runs/demo-<date>-<time>).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of training and data order.")] = 0,
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs", min=1, help="Epochs of the sign pre-training and of each fine-tune."
        ),
    ] = 10,
) -> None:
    """Train a sign BNN on scikit-learn's digits, convert it, fine-tune sign vs c-sign from
    the same checkpoint, compare them, and resume the c-sign run bit for bit (no download)."""
    from ..errors import UabnnError
    from ..train.demo import console, run_demo

    try:
        result = run_demo(out, seed, epochs, console())
    except FileExistsError as exc:
        raise UsageError(exc) from None
    if not (result.resume_identical and result.history_identical):
        raise UabnnError("the resumed c-sign run did not end identical")
