"""``uabnn-convert export MODEL``: the deployable model as ONNX, checked with onnx.checker."""

from __future__ import annotations

import typer

from .app import app
from .options import (
    ArchKwargOpt,
    ArchOpt,
    ForceOpt,
    InputSizeOpt,
    ModelArg,
    OutputOpt,
    TrustCodeOpt,
    input_size_of,
    parse_arch_kwargs,
    parse_input_size,
)
from .output import size_text

HELP = (
    "Export MODEL (a converted, frozen or packed file, or a fine-tuning checkpoint) to ONNX: "
    "frozen and folded first, checked with onnx.checker (needs the 'export' extra). Example:\n\n"
    "[cyan]uabnn-convert export model.uabnn.pt -o model.onnx --input-size 1,8,8[/cyan]"
)
ONNX_SUFFIX = ".onnx"


@app.command("export", help=HELP)
def export_command(
    model: ModelArg,
    output: OutputOpt = None,
    input_size: InputSizeOpt = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    force: ForceOpt = False,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Export to ONNX (frozen and folded first), checked with onnx.checker."""
    from ..deploy import export_onnx, model_of
    from ..files import check_arch, input_path, output_path

    kwargs = parse_arch_kwargs(arch_kwarg)
    size = parse_input_size(input_size)
    src = input_path(model)
    if arch is not None:
        check_arch(arch)
    dst = output_path(src, output, ONNX_SUFFIX, force=force)
    net = model_of(
        src, arch=arch, arch_kwargs=kwargs if arch_kwarg else None, trust_code=trust_code
    )
    export_onnx(net, dst, input_size_of(size, net))
    typer.echo(f"wrote {dst} ({size_text(dst.stat().st_size)})")
