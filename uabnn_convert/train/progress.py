"""Progress bars shared by the demo and the experiments (rich)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def new_progress(console: Console) -> Progress:
    """The progress bar layout the demo and the experiments share."""
    return Progress(
        TextColumn("[bold]{task.fields[name]:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=console,
    )


def step_callback(progress: Progress, task: TaskID) -> Callable[[Any], None]:
    """A harness callback that moves ``task`` to the current step and shows loss and flips."""

    def update(state: Any) -> None:
        train = next((r for r in reversed(state.history) if r["kind"] == "train"), None)
        text = f"loss {train['loss']:.3f}  flip rate {train['flip_rate']:.2e}" if train else ""
        progress.update(task, completed=state.step, total=state.target_steps, description=text)

    return update
