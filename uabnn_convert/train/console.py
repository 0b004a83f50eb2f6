"""What a run shows on the terminal (rich): a header, a progress bar, a summary table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RunConsole:
    """Header line, a progress bar with the latest train record, eval lines as they come."""

    def __init__(self, header: str, total: int, done: int, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console()
        self.console.print(header)
        self.bar = Progress(
            TextColumn("[bold]{task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.task = self.bar.add_task("", total=total, completed=done, epoch=label)
        self.bar.start()

    def advance(self, step: int, label: str) -> None:
        self.bar.update(self.task, completed=step, epoch=label)

    def describe(self, rec: dict[str, Any]) -> None:
        if rec["kind"] == "train":
            text = f"loss {rec['loss']:.3f} top1 {rec['top1']:.1f} flip {rec['flip_rate']:.1e}"
            self.bar.update(self.task, description=text)
        else:
            self.bar.console.print(
                f"step {rec['step']}: val loss {rec['val_loss']:.4f} top1 "
                f"{rec['val_top1']:.2f} top5 {rec['val_top5']:.2f}"
            )

    def stop(self) -> None:
        self.bar.stop()

    def print(self, renderable: Any) -> None:
        self.console.print(renderable)


def summary_table(
    history: Sequence[dict[str, Any]], best: dict[str, Any] | None, title: str
) -> Any:
    """A rich table with one row per evaluation: accuracy, loss, LR, flips, uncertainty."""
    from rich.table import Table

    table = Table(
        title=f"{title}: summary", box=None, padding=(0, 1), header_style="bold underline"
    )
    columns = ("epoch", "step", "loss", "top1", "val@1", "val@5", "lr", "flips", "vetoed")
    for col in (*columns, "Σf̂"):
        table.add_column(col, justify="right", no_wrap=True)
    last_train: dict[str, Any] = {}
    nan = float("nan")
    for r in history:
        if r["kind"] == "train":
            last_train = r
            continue
        t = last_train
        table.add_row(
            str(r["epoch"]),
            str(r["step"]),
            f"{t.get('loss', nan):.3f}",
            f"{t.get('top1', nan):.1f}",
            f"{r['val_top1']:.2f}",
            f"{r['val_top5']:.2f}",
            f"{t.get('lr', nan):.1e}",
            f"{t.get('flip_rate', nan):.1e}",
            f"{t.get('vetoed_rate', nan):.1e}",
            f"{t.get('uncertainty', nan):.4g}",
        )
    if best:
        table.caption = f"best {best['metric']} {best['value']:.2f} at step {best['step']}"
    return table
