"""Accuracy and flip rate against steps (the paper's Fig. 5), for one run or several overlaid.

``python -m uabnn_convert.train.plot RUN_DIR [RUN_DIR ...] -o fig.png`` plots runs from their
``metrics.jsonl``; give a c-sign run and its sign baseline to compare them. Uses the Agg backend,
so it works without a display.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

METRICS_FILE = "metrics.jsonl"


def read_history(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run directory's ``metrics.jsonl`` (or of that file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], out: str | Path, title: str = ""
) -> Path:
    """Write a PNG: top-1 accuracy (train and val) and flip rate against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_flip) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (label, history) in enumerate(runs):
        color = f"C{i}"
        train = [r for r in history if r.get("kind") == "train"]
        evals = [r for r in history if r.get("kind") == "eval"]
        if train:
            steps = [r["step"] for r in train]
            ax_acc.plot(steps, [r["top1"] for r in train], color=color, alpha=0.45, lw=1)
            rates = [r["flip_rate"] for r in train]
            ax_flip.plot(steps, rates, color=color, label=f"{label} flips")
            if any(r.get("vetoed", 0) for r in train):
                ax_flip.plot(
                    steps,
                    [r["vetoed_rate"] for r in train],
                    color=color,
                    ls=":",
                    label=f"{label} vetoed",
                )
        if evals:
            ax_acc.plot(
                [r["step"] for r in evals],
                [r["val_top1"] for r in evals],
                color=color,
                marker="o",
                ms=3,
                label=f"{label} val",
            )
        ax_acc.plot([], [], color=color, alpha=0.45, lw=1, label=f"{label} train")
    ax_acc.set(xlabel="step", ylabel="top-1 accuracy (%)", title="accuracy")
    ax_flip.set(xlabel="step", ylabel="fraction of binary weights per update", title="flip rate")
    if any(r.get("flip_rate", 0) > 0 for _, h in runs for r in h if r.get("kind") == "train"):
        ax_flip.set_yscale("log")
    for ax in (ax_acc, ax_flip):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_label(run: Path) -> str:
    """``name (c-sign)`` or ``name (sign)`` from a run directory's resolved recipe."""
    recipe = run / "recipe.yaml"
    if recipe.is_file():
        import yaml

        data = yaml.safe_load(recipe.read_text()) or {}
        enabled = (data.get("csign") or {}).get("enabled", True)
        return f"{data.get('name', run.name)} ({'c-sign' if enabled else 'sign'})"
    return run.name


def main(
    runs: list[Path] = typer.Argument(..., help="Run directories (or metrics.jsonl files)."),
    out: Path = typer.Option(Path("flip_rate.png"), "--out", "-o", help="PNG file to write."),
) -> None:
    """Plot accuracy and flip rate of one or more runs (e.g. c-sign vs its sign baseline)."""
    try:
        series = [(run_label(r) if r.is_dir() else r.stem, read_history(r)) for r in runs]
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(plot_runs(series, out)))


if __name__ == "__main__":
    typer.run(main)
