"""Accuracy and flip rate against steps (the paper's Fig. 5), for one run or several overlaid,
with the flip rate of every c-sign site of each run below.

``uabnn-convert plot RUN_DIR [RUN_DIR ...] -o fig.png`` plots runs from their ``metrics.jsonl``;
give a c-sign run and its sign baseline to compare them. Uses the Agg backend, so it works
without a display.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .logs import METRICS_FILE


def read_history(run: str | Path) -> list[dict[str, Any]]:
    """The records of a run directory's ``metrics.jsonl`` (or of that file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} at {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a torn last line: the process died while appending it
            raise
    return records


def plot_runs(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], out: str | Path, title: str = ""
) -> Path:
    """Write a PNG: top-1 accuracy (train and val) and the total flip rate against optimizer
    steps; below, per run, the flip rate of every c-sign site (which layers flip most)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_site = [(label, _site_curves(history)) for label, history in runs]
    per_site = [(label, curves) for label, curves in per_site if curves]
    columns = max(2, len(per_site))
    fig = plt.figure(figsize=(5.5 * columns, 8 if per_site else 4), constrained_layout=True)
    grid = fig.add_gridspec(2 if per_site else 1, 2 * columns)
    ax_acc = fig.add_subplot(grid[0, :columns])
    ax_flip = fig.add_subplot(grid[0, columns:])
    for i, (label, curves) in enumerate(per_site):
        ax = fig.add_subplot(grid[1, 2 * i : 2 * i + 2])
        for j, (site, (steps, rates)) in enumerate(curves.items()):
            ax.plot(steps, rates, color=f"C{j % 10}", lw=1, label=site.removesuffix("_csign"))
        ax.set(xlabel="step", ylabel="flip rate", title=f"{label}: per site")
        if any(r > 0 for steps, rates in curves.values() for r in rates):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2 if len(curves) > 8 else 1)
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
    return _save(fig, (ax_acc, ax_flip), title, out)


def _site_curves(history: Sequence[dict[str, Any]]) -> dict[str, tuple[list, list]]:
    """Per site: the steps of the train records that report it, and its flip rate there."""
    curves: dict[str, tuple[list, list]] = {}
    for record in history:
        if record.get("kind") != "train":
            continue
        for site, values in (record.get("sites") or {}).items():
            steps, rates = curves.setdefault(site, ([], []))
            steps.append(record["step"])
            rates.append(values["flip_rate"])
    return curves


def run_label(run: Path) -> str:
    """``name (c-sign)`` or ``name (sign)`` from a run directory's resolved recipe."""
    recipe = run / "recipe.yaml"
    if recipe.is_file():
        import yaml

        data = yaml.safe_load(recipe.read_text()) or {}
        enabled = (data.get("csign") or {}).get("enabled", True)
        return f"{data.get('name', run.name)} ({'c-sign' if enabled else 'sign'})"
    return run.name


def plot_epochs(
    series: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    path: str | Path,
    title: str = "",
    start_top1: float | None = None,
) -> Path:
    """A PNG of flip rate (log scale) and test accuracy per epoch, one colour per label.

    ``series`` maps a label ("sign", "c-sign") to one :func:`epoch_curve` per seed; with
    several seeds the line is the mean and the band the min–max spread over seeds.
    ``start_top1`` (the accuracy before fine-tuning) is drawn at epoch 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, (ax_flip, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (label, curves) in enumerate(series.items()):
        color = f"C{i}"
        length = min(len(c) for c in curves)
        if length == 0:
            continue
        epochs = [p["epoch"] for p in curves[0][:length]]
        for ax, key in ((ax_flip, "flip_rate"), (ax_acc, "val_top1")):
            values = np.array([[p[key] for p in c[:length]] for c in curves], dtype=float)
            xs, mean = list(epochs), values.mean(axis=0)
            if key == "val_top1" and start_top1 is not None:
                xs, mean = [0, *xs], np.concatenate([[start_top1], mean])
            seeds = f" (mean of {len(curves)} seeds)" if len(curves) > 1 else ""
            ax.plot(xs, mean, color=color, marker="o", ms=3, label=f"{label}{seeds}")
            if len(curves) > 1:
                ax.fill_between(epochs, values.min(0), values.max(0), color=color, alpha=0.2)
    ax_flip.set(xlabel="epoch", ylabel="flips per weight per update", title="weight flip rate")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    if any(p["flip_rate"] > 0 for curves in series.values() for c in curves for p in c):
        ax_flip.set_yscale("log")
    for ax in (ax_flip, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, (ax_flip, ax_acc), title, path)


def _save(fig: Any, axes: Sequence[Any], title: str, path: str | Path) -> Path:
    """Grid and legend on ``axes``, the title, then the PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
