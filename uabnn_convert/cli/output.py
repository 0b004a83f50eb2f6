"""How commands print: a table (rich) or JSON on stdout, notes on stderr."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import typer

from ..report import Report, format_bytes


def note(message: str) -> None:
    typer.echo(f"note: {' '.join(message.split())}", err=True)


def emit(
    json_out: bool,
    meta: Mapping[str, Any],
    report: Report,
    notes: Sequence[str],
    tables: Sequence[Report],
    summary: str,
    header: Sequence[str] = (),
) -> None:
    """JSON (meta + report.to_dict()) on stdout, or header, tables and summary; notes on stderr."""
    from rich.console import Console

    for text in notes:
        note(text)
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


def view(report: Report, columns: list[str]) -> Report:
    """The same report with fewer columns, so that the table fits a terminal."""
    return Report(report.title, columns, report.rows, report.total, report.notes)


def size_text(n: int) -> str:
    return format_bytes(n)


def constants_text(report: Report) -> str:
    """One line on a :func:`~uabnn_convert.deploy.binary_constants` report."""
    total = report.total
    return (
        f"{len(report)} binary constants, {total['elements']:,} weights: "
        f"{format_bytes(total['bytes'])} as stored, {format_bytes(total['packed_bytes'])} "
        "packed at 1 bit each"
    )
