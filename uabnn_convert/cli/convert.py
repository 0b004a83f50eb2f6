"""``uabnn-convert [convert] MODEL``: convert a saved model, write it, list its sites."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core import SiteSettings
from .app import app
from .options import (
    ArchKwargOpt,
    ArchOpt,
    ForceOpt,
    InputSizeOpt,
    JsonOpt,
    ModelArg,
    TrustPickleOpt,
    parse_arch_kwargs,
    parse_input_size,
    parse_settings,
)
from .output import emit

HELP = (
    "Convert MODEL: every weight sign becomes a c-sign; write it and list the sites.\n\n"
    "The output (default: model.pt -> model.uabnn.pt) records the architecture and the "
    "settings, so [bold]inspect[/bold], [bold]freeze[/bold], [bold]finetune --init[/bold] and "
    "uabnn_convert.load() rebuild it without --arch. Examples:\n\n"
    "[cyan]uabnn-convert model.pt --arch bireal_digits --m 2 --delta 0.1[/cyan]\n"
    "[cyan]uabnn-convert model.pt --arch bireal_digits --m 3 -o m3.uabnn.pt[/cyan]"
)


@app.command("convert", help=HELP)
def convert_command(
    model: ModelArg,
    m: Annotated[
        str, typer.Option("--m", metavar="INT", help="Window: the current and previous m updates.")
    ] = str(SiteSettings.m),
    delta: Annotated[
        str,
        typer.Option(
            "--delta",
            metavar="FLOAT",
            help="Fraction in (0, 1] of the most certain weights of a site that may always flip.",
        ),
    ] = str(SiteSettings.delta),
    sigma: Annotated[
        str,
        typer.Option(
            "--sigma",
            metavar="std|var|FLOAT",
            help="Spread of the uncertainty function: the latent's std or variance at the "
            "first update, or a positive number.",
        ),
    ] = str(SiteSettings.sigma),
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="OUT",
            show_default=False,
            help="Output file (default: next to MODEL, model.pt -> model.uabnn.pt).",
        ),
    ] = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", metavar="GLOB", help="Convert only sites of these modules (repeatable)."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", metavar="GLOB", help="Leave sites of these modules alone."),
    ] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
    input_size: InputSizeOpt = None,
) -> None:
    """Every check that needs no loading comes first, the architecture name next, then the
    output path; only then is anything read."""
    from ..config import ConvertConfig
    from ..files import check_arch, convert_file, input_path, output_path
    from ..files.convert import CONVERTED_SUFFIX

    settings = parse_settings(m, delta, sigma)
    kwargs = parse_arch_kwargs(arch_kwarg)
    size = parse_input_size(input_size)
    config = ConvertConfig(**settings, include=include or None, exclude=exclude or None)
    src = input_path(model)
    if arch is not None:
        check_arch(arch)
    output_path(src, output, CONVERTED_SUFFIX, force=force)
    done = convert_file(
        src,
        output,
        arch=arch,
        arch_kwargs=kwargs,
        config=config,
        force=force,
        trust_pickle=trust_pickle,
        input_size=size,
    )
    meta = {
        "command": "convert",
        "input": str(src),
        "output": str(done.path),
        "bytes": done.bytes,
        "arch": done.arch,
        "arch_kwargs": done.arch_kwargs,
        "settings": config.to_dict(),
    }
    emit(json_out, meta, done.report, done.notes, [done.table()], done.summary())
