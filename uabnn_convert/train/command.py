"""The ``finetune`` command: ``python -m uabnn_convert.train RECIPE --data PATH``.

:func:`finetune_command` is a plain typer command function, so the package CLI can mount it as
a sub-command (``app.command("finetune")(finetune_command)``). Harness errors become one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

from uabnn_convert.api import ConversionError

from .errors import TrainError
from .harness import finetune
from .recipe import parse_assignment


def finetune_command(
    recipe: str = typer.Argument(..., help="Recipe YAML file, or a bundled name (e.g. digits)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset directory."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (default: runs/NAME)."
    ),
    resume: str | None = typer.Option(
        None, "--resume", help="Checkpoint file, run directory, or 'latest' (in --out)."
    ),
    sign_baseline: bool = typer.Option(
        False, "--sign-baseline", help="Turn c-sign off: the same recipe with plain sign."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N steps."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    image_size: int | None = typer.Option(None, "--image-size", help="Override image size."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a recipe key: --set optim.lr=0.01 (repeatable)."
    ),
    compare: Path | None = typer.Option(
        None, "--compare", help="Another run directory to overlay in the plot."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Fine-tune a converted BNN as RECIPE says; checkpoints, metrics.jsonl and a plot go to
    the run directory."""
    try:
        overrides = dict(parse_assignment(a) for a in set_)
        finetune(
            recipe,
            data=data,
            out=out,
            resume=resume,
            sign_baseline=sign_baseline,
            max_steps=max_steps,
            epochs=epochs,
            batch_size=batch_size,
            image_size=image_size,
            overrides=overrides,
            compare=compare,
            progress=not quiet,
        )
    except (TrainError, ConversionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
