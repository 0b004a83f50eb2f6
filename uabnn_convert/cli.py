"""``uabnn-convert``: convert, inspect and freeze saved BNNs from the shell.

A thin layer over the Python API (:mod:`.api`) and the file side (:mod:`.io`): it parses and
validates arguments, checks paths before loading anything, calls the API, and prints a rich
table (or JSON). All conversion logic lives in the API.

``convert`` is the default command: ``uabnn-convert model.pt --arch NAME`` is
``uabnn-convert convert model.pt --arch NAME``. Adding a sub-command is one decorated
function: ``@app.command()`` below; :class:`_DefaultGroup` routes everything that is not a
command name to ``convert``.

Every failure prints one line, ``error: …``, on stderr and exits non-zero without a traceback:
2 when the command line must change (bad option value, missing input, existing output,
unknown architecture, a missing opt-in flag), 1 when a file cannot be read, converted or
written, 130 when interrupted. Nothing is written unless the whole write succeeds.
Set ``UABNN_CONVERT_DEBUG=1`` to get the traceback of an unexpected error.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from . import __version__
from . import io as uio
from .api import LOOKED_FOR, ConversionError, inspect, patch, stats
from .csign import validate_settings
from .report import Report

PROG = "uabnn-convert"
DEFAULT_COMMAND = "convert"
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A one-line error with the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class _DefaultGroup(TyperGroup):
    """A typer group that runs ``convert`` when the first argument is not a command, and turns
    every error into one ``error: …`` line (typer would print a multi-line panel)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        group_options = {o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
        if args and args[0] not in self.commands and args[0] not in group_options:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = _run(
            lambda: super(_DefaultGroup, self).main(
                args, prog_name or PROG, complete_var, standalone_mode=False, **extra
            )
        )
        if standalone_mode:
            sys.exit(code)
        return code


def _run(call: Any) -> int:
    """Call the group; map every outcome to an exit code, printing at most one error line."""
    cwd = os.getcwd()
    if cwd not in sys.path:  # --arch mymodels:build finds ./mymodels.py; last, so it never
        sys.path.append(cwd)  # shadows an installed package (a stray ./timm.py, say)
    try:
        rv = call()
    except CliError as e:
        return _fail(str(e), e.code)
    except uio.CheckpointError as e:
        return _fail(str(e), e.exit_code)
    except (ConversionError, ValueError) as e:
        return _fail(str(e), EXIT_FAILED)
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", EXIT_FAILED)
    except Exception as e:
        if _is_click_error(e):
            return _click_error(e)
        if os.environ.get("UABNN_CONVERT_DEBUG"):
            raise
        return _fail(
            f"unexpected {type(e).__name__}: {e} (set UABNN_CONVERT_DEBUG=1 for the traceback)",
            EXIT_FAILED,
        )
    code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
        return _interrupted()
    return code


def _is_click_error(e: BaseException) -> bool:
    return isinstance(getattr(e, "exit_code", None), int) and hasattr(e, "format_message")


def _click_error(e: Any) -> int:
    if type(e).__name__ == "NoArgsIsHelpError":  # typer's rich help printed itself already
        return EXIT_USAGE
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return _fail(e.format_message().rstrip(".") + hint, e.exit_code)


def _interrupted() -> int:
    return _fail("interrupted; nothing was written", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return code


def _note(message: str) -> None:
    typer.echo(f"note: {' '.join(message.split())}", err=True)


def _show_version(value: bool) -> None:
    if value:
        import torch

        typer.echo(f"{PROG} {__version__} (torch {torch.__version__})")
        raise typer.Exit()


# Help texts: typer's rich mode keeps single newlines, so a paragraph is one string.
ROOT_HELP = (
    "Turn the weight sign() of a saved BNN into the certainty-sign (c-sign) of UaBNN.\n\n"
    "MODEL without a command runs [bold]convert[/bold]. Examples:\n\n"
    "[cyan]uabnn-convert model.pt --arch bireal_resnet18 --m 2 --delta 0.1[/cyan]\n"
    "[cyan]uabnn-convert inspect model.uabnn.pt[/cyan]\n"
    "[cyan]uabnn-convert freeze model.uabnn.pt -o model.frozen.pt[/cyan]"
)
CONVERT_HELP = (
    "Convert MODEL: every weight sign becomes a c-sign; write it and list the sites.\n\n"
    "The output (default: model.pt -> model.uabnn.pt) records the architecture and the "
    "settings, so [bold]inspect[/bold], [bold]freeze[/bold] and uabnn_convert.io.load() "
    "rebuild it without --arch. Example:\n\n"
    "[cyan]uabnn-convert model.pt --arch bireal_resnet18 --arch-kwarg num_classes=10 "
    "--m 2 --delta 0.1[/cyan]"
)
INSPECT_HELP = (
    "Dry run: the sites MODEL would get, or a converted file's settings and statistics.\n\n"
    "Nothing is written. Examples (what convert would do; the settings and per-site flip "
    "statistics of a converted file):\n\n"
    "[cyan]uabnn-convert inspect model.pt --arch bireal_resnet18[/cyan]\n"
    "[cyan]uabnn-convert inspect model.uabnn.pt[/cyan]"
)
FREEZE_HELP = (
    "Freeze a converted file for deployment: binary weights become constants.\n\n"
    "Every c-sign site is replaced by the binary state it holds (uc.freeze): eval outputs are "
    "unchanged and no c-sign code is left. Also reports the size of the binary weights packed "
    "at 1 bit each. Example:\n\n"
    "[cyan]uabnn-convert freeze model.uabnn.pt -o model.frozen.pt[/cyan]"
)
SUMMARY_HELP = (
    "Binary-aware summary of MODEL, like larq.models.summary: per layer the parameters by "
    "precision, memory at deployment (1-bit weights at 1/8 byte), and multiply-accumulates "
    "split into binary and float. Example:\n\n"
    "[cyan]uabnn-convert summary model.uabnn.pt --input-size 3,224,224[/cyan]"
)
EXPORT_HELP = (
    "Export a converted file to ONNX: frozen and folded first, checked with onnx.checker "
    "(needs the 'export' extra). Example:\n\n"
    "[cyan]uabnn-convert export model.uabnn.pt -o model.onnx --input-size 1,8,8[/cyan]"
)
FINETUNE_HELP = (
    "Fine-tune as RECIPE says (a YAML file or a bundled name), with checkpoints that carry the "
    "c-sign state and resume exactly. Example:\n\n"
    "[cyan]uabnn-convert finetune digits[/cyan]\n"
    "[cyan]uabnn-convert finetune cifar10_wrn22_16 --data ~/data/cifar[/cyan]"
)
DEMO_HELP = (
    "Train a sign BNN on scikit-learn's digits, convert it, fine-tune sign vs c-sign, compare, "
    "and resume exactly. Nothing is downloaded. Example:\n\n"
    "[cyan]uabnn-convert demo --out runs/demo[/cyan]"
)


app = typer.Typer(
    name=PROG,
    cls=_DefaultGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    subcommand_metavar="[COMMAND] MODEL [ARGS]...",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Exit status: 0 done; 1 a file could not be read, converted or written; "
        "2 the command line must change (bad option, missing input, existing output, "
        "unknown architecture, missing opt-in flag); 130 interrupted. "
        "Errors are one line on stderr and never leave a partial output file."
    ),
)


@app.callback(help=ROOT_HELP)
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The group itself does nothing: ``--version`` is eager and commands do the work."""


# ------------------------------------------------------------------------------ options

ModelArg = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL",
        show_default=False,
        help="A state_dict or training checkpoint (needs --arch), a file written by this tool, "
        "or a pickled model (needs --trust-pickle).",
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        metavar="NAME|pkg.mod:factory",
        help="Architecture that builds the model: a timm or uabnn_convert.zoo name "
        "(timm.create_model) or a package.module:factory callable (the current directory is "
        "importable).",
    ),
]
ArchKwargOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-kwarg",
        metavar="KEY=VALUE",
        help="Argument for --arch, repeatable, e.g. num_classes=10. Numbers become int/float, "
        "true/false/none become bool/None, anything else a string.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the report as JSON on stdout instead of a table.")
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Replace an existing output file (never the input itself)."),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow MODEL to be a whole pickled model. Unpickling runs code chosen by whoever "
        "wrote the file, so this is off by default: use only for files you trust.",
    ),
]
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Allow calling the package.module:factory that a converted file names to rebuild "
        "its model (or name it yourself with --arch).",
    ),
]


# ------------------------------------------------------------------------------ commands


@app.command("convert", help=CONVERT_HELP)
def convert_command(
    model: ModelArg,
    m: Annotated[
        str, typer.Option("--m", metavar="INT", help="Window: the current and previous m updates.")
    ] = "2",
    delta: Annotated[
        str,
        typer.Option(
            "--delta",
            metavar="FLOAT",
            help="Fraction in (0, 1] of the most certain weights of a site that may always flip.",
        ),
    ] = "0.1",
    sigma: Annotated[
        str,
        typer.Option(
            "--sigma",
            metavar="std|var|FLOAT",
            help="Spread of the uncertainty function: the latent's std or variance at the "
            "first update, or a positive number.",
        ),
    ] = "std",
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
) -> None:
    """Load, patch, write atomically, report; every check that needs no loading comes first."""
    settings = parse_settings(m, delta, sigma)
    kwargs = parse_arch_kwargs(arch_kwarg)
    src = _input_path(model)
    dst = _output_path(src, output, ".uabnn.pt", force)
    file = uio.read(src, trust_pickle=trust_pickle)
    if file.kind in uio.KINDS:
        raise CliError(
            f"{src} is already {file.kind} by {PROG} ({_settings_text(file.record['settings'])}); "
            f"see it with '{PROG} inspect {src}', or convert the original checkpoint",
            EXIT_FAILED,
        )
    notes = list(file.notes)
    net, arch_ref = uio.model_from(file, arch, kwargs)
    patch(net, **settings, include=include or None, exclude=exclude or None)
    if arch_ref is None:
        notes.append(
            f"{dst.name} records no architecture (MODEL is a pickled model and no --arch was "
            "given): inspect/freeze/load it with --arch"
        )
    recorded = {**settings, "include": include or None, "exclude": exclude or None}
    uio.save_converted(
        net, dst, arch=arch_ref, arch_kwargs=kwargs if arch_ref else {}, settings=recorded
    )
    report = inspect(net)
    summary = (
        f"wrote {dst} ({_size(dst.stat().st_size)}): {len(report)} c-sign sites, "
        f"{report.total['elements']:,} binary weights of {type(net).__name__}, "
        f"{_settings_text(recorded)}"
    )
    meta = {
        "command": "convert",
        "input": str(src),
        "output": str(dst),
        "bytes": dst.stat().st_size,
        "arch": arch_ref,
        "arch_kwargs": kwargs if arch_ref else {},
        "settings": recorded,
    }
    table = _view(report, ["site", "family", "shape", "elements"])
    table.title = f"c-sign sites of {type(net).__name__}"
    _emit(json_out, meta, report, notes, [table], summary)


@app.command("inspect", help=INSPECT_HELP)
def inspect_command(
    model: ModelArg,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    json_out: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Show what convert would do, or what a converted/frozen file holds; write nothing."""
    kwargs = parse_arch_kwargs(arch_kwarg)
    src = _input_path(model)
    file = uio.read(src, trust_pickle=trust_pickle)
    notes = list(file.notes)
    if file.kind in ("state_dict", "module"):
        net, arch_ref = uio.model_from(file, arch, kwargs)
        report = inspect(net)
        if not len(report):
            detail = f"; {report.notes[0]}" if report.notes else ""
            raise CliError(
                f"no weight-sign site found in {type(net).__name__}, so {PROG} would refuse it: "
                f"looked for {LOOKED_FOR}{detail}",
                EXIT_FAILED,
            )
        meta = {"command": "inspect", "input": str(src), "kind": file.kind, "arch": arch_ref}
        summary = (
            f"would convert {len(report)} sites ({report.total['elements']:,} binary weights) "
            f"of {type(net).__name__}; nothing written"
        )
        _emit(json_out, meta, report, notes + report.notes, [report], summary)
        return
    net = uio.rebuild(
        file, arch=arch, arch_kwargs=kwargs if arch_kwarg else None, trust_code=trust_code
    )
    meta = _file_meta(file, src)
    header = _header_lines(file)
    if file.kind == "frozen":
        report = _constants_report(net, file)
        summary = f"frozen: {_packed_text(report)}"
        _emit(json_out, meta, report, notes, [report], summary, header)
        return
    sites_report, stats_report = inspect(net), stats(net)
    meta["stats"] = stats_report.to_dict()
    summary = (
        f"{len(sites_report)} c-sign sites, {sites_report.total['elements']:,} binary weights, "
        f"{stats_report.total['updates']} updates so far"
    )
    tables = [
        _view(sites_report, ["site", "family", "shape", "elements", "m", "delta", "sigma"]),
        _view(stats_report, ["site", "updates", "flips", "vetoed", "flip_rate", "uncertainty"]),
    ]
    _emit(json_out, meta, sites_report, notes, tables, summary, header)


@app.command("freeze", help=FREEZE_HELP)
def freeze_command(
    model: ModelArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="OUT",
            show_default=False,
            help="Output file (default: model.uabnn.pt -> model.frozen.pt).",
        ),
    ] = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    trust_code: TrustCodeOpt = False,
    packed: Annotated[
        bool,
        typer.Option(
            "--packed",
            help="Write the deployable model with binary weights packed 8 per byte "
            "(safetensors, no pickle; default output model.packed.safetensors).",
        ),
    ] = False,
) -> None:
    """Rebuild a converted file, ``uc.freeze`` it, write it with the same record."""
    kwargs = parse_arch_kwargs(arch_kwarg)
    src = _input_path(model)
    suffix = ".packed.safetensors" if packed else ".frozen.pt"
    dst = _output_path(src, output, suffix, force)
    file = uio.read(src)
    if file.kind != "converted":
        what = "already frozen" if file.kind == "frozen" else f"a plain {file.kind}"
        raise CliError(
            f"{src} is {what}; freeze takes a file written by '{PROG} MODEL' "
            f"(convert first: {PROG} {src} --arch NAME)",
            EXIT_FAILED,
        )
    net = uio.rebuild(
        file, arch=arch, arch_kwargs=kwargs if arch_kwarg else None, trust_code=trust_code
    )
    if packed:
        _write_packed(net, file, dst, arch, kwargs if arch_kwarg else None, src, json_out)
        return
    from .api import freeze

    frozen = freeze(net)
    uio.save_frozen(frozen, dst, source=file, arch=arch, arch_kwargs=kwargs if arch_kwarg else None)
    report = _constants_report(frozen, file)
    meta = {
        "command": "freeze",
        "input": str(src),
        "output": str(dst),
        "bytes": dst.stat().st_size,
        **_packed(report),
    }
    summary = f"wrote {dst} ({_size(dst.stat().st_size)}): {_packed_text(report)}"
    _emit(json_out, meta, report, [], [report], summary)


def _write_packed(
    net: Any,
    file: uio.ModelFile,
    dst: Path,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    src: Path,
    json_out: bool,
) -> None:
    from .export import export_packed, packed_report

    record_arch = arch or file.record.get("arch")
    record_kwargs = arch_kwargs if arch_kwargs is not None else file.record.get("arch_kwargs")
    export_packed(net, dst, arch=record_arch, arch_kwargs=record_kwargs)
    report = packed_report(dst)
    float_bytes = report.total["bytes"]
    meta = {"command": "freeze", "input": str(src), "output": str(dst), "packed": True}
    summary = (
        f"wrote {dst} ({_size(dst.stat().st_size)}; the same tensors in float take "
        f"{_size(float_bytes)}, {float_bytes / max(1, dst.stat().st_size):.1f}x more)"
    )
    _emit(json_out, meta, report, [], [report], summary)


@app.command("summary", help=SUMMARY_HELP)
def summary_command(
    model: ModelArg,
    input_size: Annotated[
        str | None,
        typer.Option(
            "--input-size",
            metavar="C,H,W",
            help="Input size without the batch (default: the model's pretrained_cfg).",
        ),
    ] = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    json_out: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Per layer: parameters by precision, memory at deployment, binary vs float MACs."""
    from .summary import summary

    net = _model_for(model, arch, arch_kwarg, trust_pickle, trust_code)
    size = _input_size(input_size, net)
    report = summary(net, size)
    meta = {"command": "summary", "input": str(model), "input_size": list(size)}
    _emit(json_out, meta, report, [], [report], _summary_line(report))


@app.command("export", help=EXPORT_HELP)
def export_command(
    model: ModelArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", metavar="OUT", show_default=False, help="ONNX file to write."
        ),
    ] = None,
    input_size: Annotated[
        str | None,
        typer.Option("--input-size", metavar="C,H,W", help="Input size without the batch."),
    ] = None,
    arch: ArchOpt = None,
    arch_kwarg: ArchKwargOpt = None,
    force: ForceOpt = False,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Export a converted file to ONNX (frozen and folded first), checked with onnx.checker."""
    from .export import export_onnx

    src = _input_path(model)
    dst = _output_path(src, output, ".onnx", force)
    net = _model_for(model, arch, arch_kwarg, False, trust_code)
    export_onnx(net, dst, _input_size(input_size, net))
    typer.echo(f"wrote {dst} ({_size(dst.stat().st_size)})")


def _model_for(
    model: Path,
    arch: str | None,
    arch_kwarg: list[str] | None,
    trust_pickle: bool,
    trust_code: bool,
) -> Any:
    """The model a file holds: a packed export, a converted or frozen file, or a checkpoint."""
    from .export import is_packed_file, load_packed

    kwargs = parse_arch_kwargs(arch_kwarg)
    src = _input_path(model)
    if is_packed_file(src):
        return load_packed(src, arch=arch, arch_kwargs=kwargs or None, trust_code=trust_code)
    file = uio.read(src, trust_pickle=trust_pickle)
    if file.kind in ("state_dict", "module"):
        return uio.model_from(file, arch, kwargs)[0]
    return uio.rebuild(
        file, arch=arch, arch_kwargs=kwargs if arch_kwarg else None, trust_code=trust_code
    )


def _input_size(text: str | None, net: Any) -> tuple[int, ...]:
    if text is None:
        cfg = getattr(net, "pretrained_cfg", None) or {}
        if "input_size" in cfg:
            return tuple(int(v) for v in cfg["input_size"])
        raise CliError("give --input-size C,H,W (the model does not record one)")
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise CliError(f"--input-size {text!r} is not C,H,W (integers)") from e
    if not size or any(v <= 0 for v in size):
        raise CliError(f"--input-size {text!r} must be positive integers C,H,W")
    return size


def _summary_line(report: Report) -> str:
    total = report.total
    keys = ("compression_ratio", "binary_mac_fraction")
    parts = [f"{k}={total[k]:.3g}" for k in keys if k in total]
    return "summary: " + ", ".join(parts) if parts else "summary"


def _mount_optional_commands() -> None:
    """Commands that live in their own modules: fine-tuning (the harness) and the demo."""
    from .demo import demo_command
    from .train.command import finetune_command

    app.command("finetune", help=FINETUNE_HELP)(finetune_command)
    app.command("demo", help=DEMO_HELP)(demo_command)


_mount_optional_commands()


# ------------------------------------------------------------------------------ parsing

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_settings(m: str, delta: str, sigma: str) -> dict[str, Any]:
    """Validate --m/--delta/--sigma before anything is loaded; a usage error names the flag."""
    if not _INT.fullmatch(m.strip()) or int(m) < 0:
        raise CliError(
            f"--m {m}: m must be a non-negative integer (the number of previous updates in the "
            "window, e.g. 2)"
        )
    d = float(delta) if _FLOAT.fullmatch(delta.strip()) else math.nan
    if not 0 < d <= 1:
        raise CliError(
            f"--delta {delta}: delta must be a number in (0, 1] (the fraction of most certain "
            "weights that may always flip, e.g. 0.1)"
        )
    s: str | float = sigma.strip().lower()
    if s not in ("std", "var"):
        value = float(s) if _FLOAT.fullmatch(str(s)) else math.nan
        if not value > 0 or not math.isfinite(value):
            raise CliError(f"--sigma {sigma}: use std, var or a positive number (e.g. 0.05)")
        s = value
    settings = {"m": int(m), "delta": d, "sigma": s}
    try:
        validate_settings(**settings)
    except ValueError as e:
        raise CliError(str(e)) from e
    return settings


def parse_arch_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` strings to a dict; numbers, booleans and none are converted."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CliError(f"--arch-kwarg {item!r}: use key=value, e.g. num_classes=10")
        if key in out:
            raise CliError(f"--arch-kwarg {key} is given twice")
        out[key] = _value(raw.strip())
    return out


def _value(raw: str) -> Any:
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        return float(raw)
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    return raw


# ------------------------------------------------------------------------------ paths


def _input_path(path: Path) -> Path:
    if not path.exists():
        raise CliError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise CliError(f"{path} is a directory; give the checkpoint file inside it")
    return path


def _default_output(src: Path, suffix: str) -> Path:
    name = src.name
    for ending in (".pt", ".pth"):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    else:
        name = src.stem if src.suffix else name
    if suffix == ".frozen.pt" and name.endswith(".uabnn"):
        name = name[: -len(".uabnn")]
    return src.with_name(name + suffix)


def _output_path(src: Path, output: Path | None, suffix: str, force: bool) -> Path:
    """Check the output before any loading: not the input, not existing, directory writable."""
    dst = output if output is not None else _default_output(src, suffix)
    if dst.exists() or dst.is_symlink():
        if dst.is_dir():
            raise CliError(f"output {dst} is a directory; give a file name with -o")
        if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):
            raise CliError(
                f"output {dst} is the input file; choose another -o "
                "(the input is never replaced, even with --force)"
            )
        if not force:
            raise CliError(f"output {dst} already exists; pass --force to replace it or choose -o")
    parent = dst.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a directory"
        raise CliError(f"output directory {parent} {what}; create it first or choose another -o")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CliError(
            f"cannot write to {parent} ({e.strerror}); choose another -o", EXIT_FAILED
        ) from e
    return dst


# ------------------------------------------------------------------------------ output


def _emit(
    json_out: bool,
    meta: Mapping[str, Any],
    report: Report,
    notes: list[str],
    tables: Sequence[Report],
    summary: str,
    header: Sequence[str] = (),
) -> None:
    """JSON (meta + report.to_dict()) on stdout, or header, tables and summary; notes on stderr."""
    for note in notes:
        _note(note)
    if json_out:
        data = {**meta, **report.to_dict()}
        data["notes"] = list(dict.fromkeys([*data["notes"], *notes]))
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=160)  # a pipe or a log: do not truncate names
    for line in header:
        typer.echo(line)
    for table in tables:
        console.print(table)
    typer.echo(summary)


def _view(report: Report, columns: list[str]) -> Report:
    """The same report with fewer columns, so that the table fits a terminal."""
    return Report(report.title, columns, report.rows, report.total, report.notes)


def _settings_text(settings: Mapping[str, Any]) -> str:
    text = f"m={settings['m']} delta={settings['delta']} sigma={settings['sigma']}"
    for key in ("include", "exclude"):
        if settings.get(key):
            text += f" {key}={','.join(settings[key])}"
    return text


def _file_meta(file: uio.ModelFile, src: Path) -> dict[str, Any]:
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
        "settings": rec["settings"],
    }


def _header_lines(file: uio.ModelFile) -> list[str]:
    rec = file.record
    arch = uio.arch_label(rec["arch"], rec["arch_kwargs"]) if rec["arch"] else "not recorded"
    return [
        f"{file.path}: {file.kind} model, {rec['format']} format {rec['format_version']} "
        f"(written by {rec.get('package_version', '?')}, this is {__version__})",
        f"architecture: {arch}",
        f"settings: {_settings_text(rec['settings'])}",
    ]


def _constants_report(frozen: Any, file: uio.ModelFile) -> Report:
    sd = frozen.state_dict()
    rows = [
        {
            "constant": key,
            "shape": tuple(sd[key].shape),
            "elements": sd[key].numel(),
            "dtype": str(sd[key].dtype).replace("torch.", ""),
            "bytes": sd[key].numel() * sd[key].element_size(),
            "packed_bytes": math.ceil(sd[key].numel() / 8),
        }
        for key in uio.frozen_constants(file)
        if key in sd
    ]
    total = {
        "constant": f"{len(rows)} constants",
        "elements": sum(r["elements"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "packed_bytes": sum(r["packed_bytes"] for r in rows),
    }
    columns = ["constant", "shape", "elements", "dtype", "bytes", "packed_bytes"]
    return Report(f"binary constants of {type(frozen).__name__}", columns, rows, total)


def _packed(report: Report) -> dict[str, int]:
    return {
        "binary_weights": report.total["elements"],
        "binary_bytes": report.total["bytes"],
        "packed_bytes": report.total["packed_bytes"],
    }


def _packed_text(report: Report) -> str:
    p = _packed(report)
    return (
        f"{len(report)} binary constants, {p['binary_weights']:,} weights: "
        f"{_size(p['binary_bytes'])} as stored, {_size(p['packed_bytes'])} packed at 1 bit each"
    )


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def main() -> None:
    """Console-script entry point (``uabnn-convert``)."""
    app(prog_name=PROG)
