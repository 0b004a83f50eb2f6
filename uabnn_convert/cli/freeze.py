"""``uabnn-convert freeze MODEL``: the deployable model, as a float file or packed at 1 bit."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import UabnnError
from .app import PROG, app
from .options import (
    ArchKwargOpt,
    ArchOpt,
    ForceOpt,
    JsonOpt,
    ModelArg,
    OutputOpt,
    TrustCodeOpt,
    parse_arch_kwargs,
)
from .output import constants_text, emit, size_text

HELP = (
    "Freeze a converted file or a fine-tuning checkpoint for deployment.\n\n"
    "Every c-sign site is replaced by the binary state it holds, and what each binary layer "
    "computes from its weights alone is folded into constants: eval outputs are unchanged bit "
    "for bit, no c-sign code is left, and latent weights nothing reads are dropped. "
    "[bold]--packed[/bold] writes binary weights at 1 bit each (safetensors, no pickle). "
    "Examples:\n\n"
    "[cyan]uabnn-convert freeze model.uabnn.pt -o model.frozen.pt[/cyan]\n"
    "[cyan]uabnn-convert freeze model.uabnn.pt --packed[/cyan]"
)
FROZEN_SUFFIX = ".frozen.pt"
PACKED_SUFFIX = ".packed.safetensors"


@app.command("freeze", help=HELP)
def freeze_command(
    model: ModelArg,
    output: OutputOpt = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    trust_code: TrustCodeOpt = False,
    packed: Annotated[
        bool,
        typer.Option(
            "--packed",
            help="Write binary weights packed 8 per byte (safetensors, no pickle; default "
            "output model.packed.safetensors).",
        ),
    ] = False,
) -> None:
    """Rebuild the file's model, freeze and fold it, write it with the same record."""
    from ..api import sites
    from ..deploy import binary_constants, export_packed, packed_report
    from ..files import check_arch, input_path, output_path, read, rebuild, save_frozen
    from ..fx import freeze_and_fold

    kwargs = parse_arch_kwargs(arch_kwarg)
    src = input_path(model)
    if arch is not None:
        check_arch(arch)
    dst = output_path(src, output, PACKED_SUFFIX if packed else FROZEN_SUFFIX, force=force)
    file = read(src)
    if file.kind not in ("converted", "checkpoint"):
        what = "already frozen" if file.kind == "frozen" else f"a plain {file.kind}"
        raise UabnnError(
            f"{src} is {what}; freeze takes a file written by '{PROG} MODEL' or a fine-tuning "
            f"checkpoint (convert first: {PROG} {src} --arch NAME)"
        )
    given_kwargs = kwargs if arch_kwarg else None
    net = rebuild(file, arch=arch, arch_kwargs=given_kwargs, trust_code=trust_code)
    fresh = [name for name, s in sites(net) if int(s.num_updates) == 0]
    notes = []
    if fresh:
        notes.append(
            f"{len(fresh)} site(s) hold no c-sign state yet (no training update, e.g. "
            f"{fresh[0]}): their binary weights are the sign of the latent, as the original "
            "model's"
        )
    if packed:
        record_arch = arch or file.record["arch"]
        record_kwargs = given_kwargs if given_kwargs is not None else file.record["arch_kwargs"]
        export_packed(net, dst, arch=record_arch, arch_kwargs=record_kwargs)
        report = packed_report(dst)
        float_bytes = report.total["bytes"]
        meta: dict[str, Any] = {
            "command": "freeze",
            "input": str(src),
            "output": str(dst),
            "packed": True,
            "bytes": dst.stat().st_size,
        }
        summary = (
            f"wrote {dst} ({size_text(dst.stat().st_size)}; the same tensors in float take "
            f"{size_text(float_bytes)}, {float_bytes / max(1, dst.stat().st_size):.1f}x more)"
        )
        emit(json_out, meta, report, notes, [report], summary)
        return
    frozen, derived = freeze_and_fold(net)
    save_frozen(frozen, dst, source=file, derived=derived, arch=arch, arch_kwargs=given_kwargs)
    report = binary_constants(frozen, list(derived))
    meta = {
        "command": "freeze",
        "input": str(src),
        "output": str(dst),
        "bytes": dst.stat().st_size,
        "binary_weights": report.total["elements"],
        "binary_bytes": report.total["bytes"],
        "packed_bytes": report.total["packed_bytes"],
    }
    summary = f"wrote {dst} ({size_text(dst.stat().st_size)}): {constants_text(report)}"
    emit(json_out, meta, report, notes, [report], summary)
