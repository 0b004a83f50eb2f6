"""``uabnn-convert summary MODEL``: a binary-aware summary (parameters, memory, MACs)."""

from __future__ import annotations

from .app import app
from .options import (
    ArchKwargOpt,
    ArchOpt,
    InputSizeOpt,
    JsonOpt,
    ModelArg,
    TrustCodeOpt,
    TrustPickleOpt,
    input_size_of,
    parse_arch_kwargs,
    parse_input_size,
)
from .output import emit

HELP = (
    "Binary-aware summary of MODEL, like larq.models.summary: per layer the parameters by "
    "precision, memory at deployment (1-bit weights at 1/8 byte), and multiply-accumulates "
    "split into binary and float. MODEL is any file the other commands take. Examples:\n\n"
    "[cyan]uabnn-convert summary model.uabnn.pt --input-size 1,8,8[/cyan]\n"
    "[cyan]uabnn-convert summary runs/digits/best.pt[/cyan]"
)


@app.command("summary", help=HELP)
def summary_command(
    model: ModelArg,
    input_size: InputSizeOpt = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    json_out: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Per layer: parameters by precision, memory at deployment, binary vs float MACs."""
    from ..deploy import model_of, summary
    from ..files import check_arch, input_path

    kwargs = parse_arch_kwargs(arch_kwarg)
    given = parse_input_size(input_size)
    src = input_path(model)
    if arch is not None:
        check_arch(arch)
    net = model_of(
        src,
        arch=arch,
        arch_kwargs=kwargs if arch_kwarg else None,
        trust_pickle=trust_pickle,
        trust_code=trust_code,
    )
    size = input_size_of(given, net)
    report = summary(net, size)
    meta = {"command": "summary", "input": str(model), "input_size": list(size)}
    total = report.total
    parts = [f"{k}={total[k]:.3g}" for k in ("compression_ratio", "binary_mac_fraction")]
    emit(json_out, meta, report, [], [report], "summary: " + ", ".join(parts))
