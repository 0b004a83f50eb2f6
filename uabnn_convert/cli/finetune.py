"""``uabnn-convert finetune RECIPE``: train a converted model as a recipe says."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app

HELP = (
    "Fine-tune as RECIPE says (a YAML file or a bundled name), with checkpoints that carry the "
    "c-sign state and resume exactly. Examples:\n\n"
    "[cyan]uabnn-convert finetune digits --max-steps 20[/cyan]\n"
    "[cyan]uabnn-convert finetune cifar10_wrn22_16 --data ~/data/cifar[/cyan]"
)


@app.command("finetune", help=HELP)
def finetune_command(
    recipe: Annotated[
        str, typer.Argument(help="Recipe YAML file, or a bundled name (e.g. digits).")
    ],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset directory.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/NAME).")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Checkpoint file, run directory, or 'latest' (in --out)."),
    ] = None,
    sign_baseline: Annotated[
        bool,
        typer.Option("--sign-baseline", help="Turn c-sign off: the same recipe with plain sign."),
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after N steps.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override train.epochs.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Global batch size.")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Override image size.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key: --set optim.lr=0.01 (repeatable)."),
    ] = None,
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Another run directory to overlay in the plot.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
) -> None:
    """Checkpoints, metrics.jsonl and a plot go to the run directory."""
    from ..train import finetune
    from ..train.recipe import parse_assignment

    overrides = dict(parse_assignment(a) for a in set_ or ())
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
