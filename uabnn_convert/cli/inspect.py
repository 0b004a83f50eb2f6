"""``uabnn-convert inspect MODEL``: what convert would do, or what a file written here holds."""

from __future__ import annotations

from typing import Any

from .._version import __version__
from .app import PROG, app
from .options import (
    ArchKwargOpt,
    ArchOpt,
    JsonOpt,
    ModelArg,
    TrustCodeOpt,
    TrustPickleOpt,
    parse_arch_kwargs,
)
from .output import constants_text, emit, view

HELP = (
    "Dry run: the sites MODEL would get, or a file's settings and statistics.\n\n"
    "Nothing is written. MODEL may be a checkpoint (what convert would do), a converted file "
    "or a fine-tuning checkpoint (settings and per-site flip statistics), a frozen file or a "
    "packed file (its binary tensors). Examples:\n\n"
    "[cyan]uabnn-convert inspect model.pt --arch bireal_digits[/cyan]\n"
    "[cyan]uabnn-convert inspect model.uabnn.pt[/cyan]"
)


@app.command("inspect", help=HELP)
def inspect_command(
    model: ModelArg,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    json_out: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Show what convert would do, or what a converted/frozen file holds; write nothing."""
    from ..api import LOOKED_FOR, inspect, model_name, stats
    from ..deploy import binary_constants, is_packed_file, packed_report
    from ..errors import ConversionError
    from ..files import input_path, model_from, read, rebuild

    kwargs = parse_arch_kwargs(arch_kwarg)
    src = input_path(model)
    if is_packed_file(src):
        report = packed_report(src)
        meta = {"command": "inspect", "input": str(src), "kind": "packed"}
        summary = f"packed: {len(report)} tensors in {report.total['file_bytes']:,} bytes"
        emit(json_out, meta, report, [], [report], summary)
        return
    file = read(src, trust_pickle=trust_pickle)
    notes = list(file.notes)
    if not file.is_record:
        net, arch_ref = model_from(file, arch, kwargs)
        report = inspect(net)
        if not len(report):
            detail = f"; {report.notes[0]}" if report.notes else ""
            raise ConversionError(
                f"no weight-sign site found in {model_name(net)}, so {PROG} would refuse it: "
                f"looked for {LOOKED_FOR}{detail}"
            )
        meta = {"command": "inspect", "input": str(src), "kind": file.kind, "arch": arch_ref}
        summary = (
            f"would convert {len(report)} sites ({report.total['elements']:,} binary weights) "
            f"of {model_name(net)}; nothing written"
        )
        emit(json_out, meta, report, notes + report.notes, [report], summary)
        return
    net = rebuild(
        file, arch=arch, arch_kwargs=kwargs if arch_kwarg else None, trust_code=trust_code
    )
    meta = _file_meta(file, src)
    header = _header_lines(file)
    if file.kind == "frozen":
        report = binary_constants(net, list(file.record.get("derived", {})))
        summary = f"frozen: {constants_text(report)}"
        emit(json_out, meta, report, notes, [report], summary, header)
        return
    sites_report, stats_report = inspect(net), stats(net, uncertainty=True)
    meta["stats"] = stats_report.to_dict()
    summary = (
        f"{len(sites_report)} c-sign sites, {sites_report.total['elements']:,} binary weights, "
        f"{stats_report.total['updates']} updates so far"
    )
    tables = [
        view(sites_report, ["site", "family", "shape", "elements", "m", "delta", "sigma"]),
        view(stats_report, ["site", "updates", "flips", "vetoed", "flip_rate", "uncertainty"]),
    ]
    emit(json_out, meta, sites_report, notes, tables, summary, header)


def _file_meta(file: Any, src: Any) -> dict[str, Any]:
    rec = file.record
    return {
        "command": "inspect",
        "input": str(src),
        "kind": file.kind,
        "format": rec["format"],
        "format_version": rec["format_version"],
        "package_version": rec.get("package_version"),
        "arch": rec["arch"],
        "arch_kwargs": rec["arch_kwargs"],
        "settings": rec["config"].to_dict(),
    }


def _header_lines(file: Any) -> list[str]:
    from ..files import arch_label

    rec = file.record
    arch = arch_label(rec["arch"], rec["arch_kwargs"]) if rec["arch"] else "not recorded"
    return [
        f"{file.path}: {file.kind} model, {rec['format']} format {rec['format_version']} "
        f"(written by {rec.get('package_version', '?')}, this is {__version__})",
        f"architecture: {arch}",
        f"settings: {rec['config'].describe()}",
    ]
