"""Fig. 5 of the paper: c-sign lowers the weight flip rate. Sign vs c-sign, same start, N seeds.

    python -m experiments.fig5                       # digits, 5 seeds, the digits recipe (20 ep.)
    python -m experiments.fig5 --seeds 2 --epochs 2  # a quick look
    python -m experiments.fig5 --data cifar100 --data-dir ~/data --wrn 16   # the paper's setup

For every seed the recipe's unconverted model is built from that seed and saved; the sign
baseline (the same recipe with ``delta = 1``, exactly sign) and c-sign (the recipe's m, delta)
are fine-tuned by the harness from that file with that seed, so the two runs of a seed differ
only in the binarizer. Reported: flip rate per epoch (flips per binary weight per update,
mean ± sample std and min–max over seeds), final test accuracy (mean ± std), and paired
per-seed differences. Results go to ``<results>/fig5_<name>.{json,md,png}``.
CIFAR is read from ``--data-dir`` (torchvision's python version; nothing is downloaded).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

if __package__ in (None, ""):  # ``python experiments/fig5.py`` works as well as ``-m``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (
    SUMMARY_HEADERS,
    command_line,
    make_init,
    markdown_table,
    parse_overrides,
    pm,
    recipe_for,
    rich_table,
    run_one,
    runs_directory,
    stats,
    summarize_seeds,
    wide_console,
    write_results,
)
from uabnn_convert.train import load_recipe
from uabnn_convert.train.plot import plot_epochs
from uabnn_convert.train.progress import new_progress

LABELS = ("sign", "c-sign")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def run_fig5(
    data: str = "digits",
    data_dir: Path | None = None,
    wrn: int = 16,
    seeds: int = 5,
    first_seed: int = 0,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    results: Path = Path("results"),
    runs: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run sign and c-sign for each seed, print the tables, write the result files."""
    console = console or wide_console()
    recipe = recipe_for(data, wrn)
    t0 = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    seed_list = list(range(first_seed, first_seed + seeds))
    config = {
        "recipe": recipe,
        "seeds": seed_list,
        "data": data,
        "data_dir": data_dir,
        "wrn": wrn,
        "epochs": epochs or load_recipe(recipe).train.epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "overrides": overrides,
    }
    with runs_directory(runs) as root, new_progress(console) as progress:
        overall = progress.add_task("", total=2 * len(seed_list), name="fig5 runs")
        for seed in seed_list:
            init = root / f"init-seed{seed}.pt"
            init_hash = make_init(recipe, seed, init)
            entry: dict[str, Any] = {"seed": seed, "init_sha256": init_hash}
            for label in LABELS:
                sign = label == "sign"
                entry[label] = run_one(
                    recipe,
                    out=root / f"{'sign' if sign else 'csign'}-seed{seed}",
                    seed=seed,
                    init=init,
                    sign=sign,
                    progress=progress,
                    name=f"{label} seed {seed}",
                    overrides=overrides,
                    data_dir=data_dir,
                    epochs=epochs,
                    max_steps=max_steps,
                    batch_size=batch_size,
                )
                progress.advance(overall)
            per_seed.append(entry)
    seconds = time.perf_counter() - t0
    return report(recipe, per_seed, seconds, results, console, config)


def report(
    name: str,
    per_seed: list[dict[str, Any]],
    seconds: float,
    results: Path,
    console: Console,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Aggregate over seeds; print the tables; write JSON, markdown and the plot."""
    n = len(per_seed)
    curves = {label: [s[label]["curve"] for s in per_seed] for label in LABELS}
    length = min(len(c) for cs in curves.values() for c in cs)
    epoch_rows, epoch_data = [], []
    for i in range(length):
        flips = {lb: [c[i]["flip_rate"] for c in curves[lb]] for lb in LABELS}
        accs = {lb: [c[i]["val_top1"] for c in curves[lb]] for lb in LABELS}
        ratio = [c / s if s else float("nan") for s, c in zip(*flips.values(), strict=True)]
        epoch_data.append(
            {
                "epoch": curves["sign"][0][i]["epoch"],
                **{
                    f"{lb}_flip_rate": {
                        **stats(flips[lb]),
                        "min": min(flips[lb]),
                        "max": max(flips[lb]),
                    }
                    for lb in LABELS
                },
                **{f"{lb}_test_top1": stats(accs[lb]) for lb in LABELS},
                "csign_over_sign": stats(ratio),
            }
        )
        epoch_rows.append(
            [
                str(curves["sign"][0][i]["epoch"]),
                pm(flips["sign"], ".2e"),
                pm(flips["c-sign"], ".2e"),
                pm(ratio, ".2f"),
                pm(accs["sign"]),
                pm(accs["c-sign"]),
            ]
        )
    epoch_headers = [
        "epoch",
        "sign flip rate",
        "c-sign flip rate",
        "c-sign / sign",
        "sign test acc (%)",
        "c-sign test acc (%)",
    ]

    final_rows, final_data = [], {}
    for lb in LABELS:
        sums = [s[lb]["summary"] for s in per_seed]
        final_data[lb], cells = summarize_seeds(sums)
        final_rows.append([lb, *cells])
    final_headers = ["run", *SUMMARY_HEADERS]

    d_acc = [
        s["c-sign"]["summary"]["test_top1"] - s["sign"]["summary"]["test_top1"] for s in per_seed
    ]
    ratio_mean = [
        s["c-sign"]["summary"]["mean_flip_rate"] / s["sign"]["summary"]["mean_flip_rate"]
        for s in per_seed
        if s["sign"]["summary"]["mean_flip_rate"]
    ]
    lower = sum(
        s["c-sign"]["summary"]["mean_flip_rate"] < s["sign"]["summary"]["mean_flip_rate"]
        for s in per_seed
    )
    lower_last = sum(
        s["c-sign"]["summary"]["last_epoch_flip_rate"]
        < s["sign"]["summary"]["last_epoch_flip_rate"]
        for s in per_seed
    )
    better = sum(d > 0 for d in d_acc)
    paired = (
        f"paired over {n} seeds (same initial model per seed): c-sign − sign test accuracy "
        f"{pm(d_acc)} pp (c-sign higher in {better}/{n}); c-sign / sign mean flip rate "
        f"{pm(ratio_mean, '.3f')} (c-sign lower in {lower}/{n}; in the last epoch {lower_last}/{n})"
    )
    what = (
        f"{config['recipe']} recipe, {config['epochs']} epoch"
        + ("s" if config["epochs"] != 1 else "")
        + (f", max {config['max_steps']} steps" if config.get("max_steps") else "")
        + f", seeds {config['seeds'][0]}–{config['seeds'][-1]}; mean ± sample std over seeds"
    )
    console.print(rich_table(f"Fig. 5 — flip rate per epoch ({what})", epoch_headers, epoch_rows))
    console.print(rich_table(f"Fig. 5 — end of training ({what})", final_headers, final_rows))
    console.print(paired)

    stem = f"fig5_{name}"
    plot = plot_epochs(curves, results / f"{stem}.png", title=f"Fig. 5 on {name} ({n} seeds)")
    markdown = "\n\n".join(
        [
            f"# Fig. 5 — sign vs c-sign flip rate: {what}",
            f"Command: `{command_line()}`; wall time {seconds:.0f} s.",
            "Flip rate: flips per binary weight per update, averaged over the epoch. "
            "Test accuracy: the recipe's test split.",
            "## Flip rate and test accuracy per epoch",
            markdown_table(epoch_headers, epoch_rows),
            "## End of training",
            markdown_table(final_headers, final_rows),
            paired,
            f"![flip rate and accuracy per epoch]({plot.name})",
        ]
    )
    out = {
        "experiment": "fig5",
        "name": name,
        "config": config,
        "command": command_line(),
        "seconds": round(seconds, 1),
        "per_epoch": epoch_data,
        "final": final_data,
        "paired": {
            "test_top1_difference": stats(d_acc),
            "mean_flip_rate_ratio": stats(ratio_mean),
            "csign_lower_mean_flip_rate_seeds": lower,
            "csign_lower_last_epoch_flip_rate_seeds": lower_last,
            "csign_higher_accuracy_seeds": better,
        },
        "per_seed": per_seed,
        "plot": str(plot),
    }
    json_path, md_path = write_results(results, stem, out, markdown)
    console.print(f"wrote {json_path}, {md_path}, {plot} ({seconds:.0f} s)")
    return out


@app.command()
def main(
    data: Annotated[str, typer.Option(help="digits, cifar10 or cifar100.")] = "digits",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="CIFAR directory (not for digits).")
    ] = None,
    wrn: Annotated[int, typer.Option(help="CIFAR: WRN-22 first-stage width, 16 or 64.")] = 16,
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds.")] = 5,
    first_seed: Annotated[int, typer.Option("--first-seed", help="The first seed.")] = 0,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs (default: the recipe's).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Stop each run after N steps.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Override the recipe's batch.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Recipe override KEY=VALUE (repeatable).")
    ] = None,
    results: Annotated[Path, typer.Option(help="Directory for the result files.")] = Path(
        "results"
    ),
    runs: Annotated[
        Path | None,
        typer.Option(help="Keep the harness run directories here (default: temporary)."),
    ] = None,
) -> None:
    """Fig. 5: sign vs c-sign flip rate and accuracy over seeds, from the same initial model."""
    try:
        run_fig5(
            data,
            data_dir,
            wrn,
            seeds,
            first_seed,
            epochs,
            max_steps,
            batch_size,
            parse_overrides(set_ or []),
            results,
            runs,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
