"""``uabnn-convert plot RUN [RUN...]``: accuracy and flip-rate curves of harness runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import UsageError, app

HELP = (
    "Plot accuracy and flip rate of one or more fine-tuning runs (e.g. c-sign against its "
    "sign baseline) from their metrics logs. Example:\n\n"
    "[cyan]uabnn-convert plot runs/digits runs/digits_sign -o flips.png[/cyan]"
)


@app.command("plot", help=HELP)
def plot_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (or metrics.jsonl files).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
        "flip_rate.png"
    ),
) -> None:
    """Read each run's metrics log and write one PNG."""
    import json

    from ..train.plot import plot_runs, read_history, run_label

    try:
        series = [(run_label(r) if r.is_dir() else r.stem, read_history(r)) for r in runs]
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise UsageError(exc) from None
    typer.echo(f"wrote {plot_runs(series, out)}")
