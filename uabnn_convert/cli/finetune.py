"""``uabnn-convert finetune RECIPE``: train a converted model as a recipe says."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..recipes import names as bundled_recipes
from .app import app
from .options import ArchKwargOpt, ArchOpt, TrustCodeOpt, parse_arch_kwargs

HELP = (
    "Fine-tune as RECIPE says (a YAML file or a bundled name), with checkpoints that carry the "
    "c-sign state and resume exactly. Every checkpoint is a converted file too: inspect, freeze, "
    "summary and export take it. Bundled recipes: "
    f"{', '.join(bundled_recipes())}. Examples:\n\n"
    "[cyan]uabnn-convert finetune digits --max-steps 20[/cyan]\n"
    "[cyan]uabnn-convert finetune --resume latest --out runs/digits --max-steps 30[/cyan]\n"
    "[cyan]uabnn-convert finetune digits --sign-baseline --max-steps 20[/cyan]\n"
    "[cyan]uabnn-convert finetune digits --init model.uabnn.pt --epochs 1 -o runs/mine[/cyan]"
)


@app.command("finetune", help=HELP)
def finetune_command(
    recipe: Annotated[
        str | None,
        typer.Argument(
            show_default=False,
            help="Recipe YAML file, or a bundled name (e.g. digits); optional with --resume "
            "(the checkpoint records its recipe).",
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            metavar="FILE",
            help="Start from FILE: a state_dict, a training checkpoint, a converted file or a "
            "finetune checkpoint (a converted file brings its c-sign state and settings).",
        ),
    ] = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    trust_code: TrustCodeOpt = False,
    data: Annotated[Path | None, typer.Option("--data", help="Dataset directory.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/NAME).")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue a run: a checkpoint file, a run directory, or 'latest' (in --out). "
            "The recorded recipe and flags are reused.",
        ),
    ] = None,
    sign_baseline: Annotated[
        bool,
        typer.Option("--sign-baseline", help="Turn c-sign off: the same recipe with plain sign."),
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after N steps.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Override train.epochs (extends a resumed run).")
    ] = None,
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
    """Checks that need no loading come first; then the harness runs."""
    from ..files import check_arch, input_path
    from ..train import finetune
    from ..train.errors import RecipeError
    from ..train.recipe import parse_assignment

    kwargs = parse_arch_kwargs(arch_kwarg)
    if kwargs and arch is None:
        raise RecipeError("--arch-kwarg needs --arch (a recipe sets model.kwargs)")
    if recipe is None and resume is None:
        raise RecipeError("give a RECIPE (a YAML file or a bundled name) or --resume")
    if resume is not None and (init is not None or arch is not None):
        raise RecipeError(
            "--resume continues a run with its recorded model; --init and --arch start a new one"
        )
    overrides = dict(parse_assignment(a) for a in set_ or ())
    if arch is not None:
        check_arch(arch)
    if init is not None:
        input_path(init)
    finetune(
        recipe,
        data=data,
        out=out,
        resume=resume,
        init=init,
        arch=arch,
        arch_kwargs=kwargs or None,
        trust_code=trust_code,
        sign_baseline=sign_baseline,
        max_steps=max_steps,
        epochs=epochs,
        batch_size=batch_size,
        image_size=image_size,
        overrides=overrides,
        compare=compare,
        progress=not quiet,
    )
