"""Option types shared by the commands, and the parsers that check them before any loading."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from .app import UsageError

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
OutputOpt = Annotated[
    Path | None,
    typer.Option("-o", "--output", metavar="OUT", show_default=False, help="Output file."),
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
        help="Allow calling the package.module:factory that a file (a converted file, a "
        "checkpoint, a recipe) names to build its model (or name it yourself with --arch).",
    ),
]
InputSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-size",
        metavar="C,H,W",
        help="One sample's input size without the batch (default: the model's pretrained_cfg); "
        "convert runs two such random samples to check step-0 parity and to capture modules "
        "the trace refuses.",
    ),
]

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_settings(m: str, delta: str, sigma: str) -> dict[str, Any]:
    """Validate --m/--delta/--sigma before anything is loaded; a usage error names the flag."""
    from ..core import validate_settings

    if not _INT.fullmatch(m.strip()) or int(m) < 0:
        raise UsageError(
            f"--m {m}: m must be a non-negative integer (the number of previous updates in the "
            "window, e.g. 2)"
        )
    d = float(delta) if _FLOAT.fullmatch(delta.strip()) else math.nan
    if not 0 < d <= 1:
        raise UsageError(
            f"--delta {delta}: delta must be a number in (0, 1] (the fraction of most certain "
            "weights that may always flip, e.g. 0.1)"
        )
    s: str | float = sigma.strip().lower()
    if s not in ("std", "var"):
        value = float(s) if _FLOAT.fullmatch(str(s)) else math.nan
        if not value > 0 or not math.isfinite(value):
            raise UsageError(f"--sigma {sigma}: use std, var or a positive number (e.g. 0.05)")
        s = value
    settings = {"m": int(m), "delta": d, "sigma": s}
    try:
        validate_settings(**settings)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return settings


def parse_arch_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` strings to a dict; numbers, booleans and none are converted."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--arch-kwarg {item!r}: use key=value, e.g. num_classes=10")
        if key in out:
            raise UsageError(f"--arch-kwarg {key} is given twice")
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


def parse_input_size(text: str | None) -> tuple[int, ...] | None:
    """``C,H,W`` (or any sizes) as positive integers; ``None`` when not given (the model's
    ``pretrained_cfg`` decides later, :func:`input_size_of`). Parsed before anything loads."""
    if text is None:
        return None
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise UsageError(f"--input-size {text!r} is not C,H,W (integers)") from e
    if not size or any(v <= 0 for v in size):
        raise UsageError(f"--input-size {text!r} must be positive integers C,H,W")
    return size


def input_size_of(size: tuple[int, ...] | None, net: Any) -> tuple[int, ...]:
    """The given size, else the one the model's ``pretrained_cfg`` records."""
    if size is not None:
        return size
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(int(v) for v in cfg["input_size"])
    raise UsageError("give --input-size C,H,W (the model does not record one)")
