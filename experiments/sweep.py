"""The paper's hyper-parameter study on digits: m in {1, 2, 3, 4} x delta in {0.05, 0.1, 0.2, 0.5}.

    python -m experiments.sweep                          # 16 settings x 3 seeds + sign, 5 epochs
    python -m experiments.sweep --m 1,2 --delta 0.1 --seeds 1 --epochs 1   # a quick look

Every setting and the sign baseline (``delta = 1``) is fine-tuned by the harness with the
digits recipe from the same per-seed initial model, so settings differ only in m and delta.
5 epochs by default (the recipe trains 20; its linear LR decay then spans the 5): the 51 runs
take about 7 minutes of one CPU core. Reported per setting: final test accuracy and the mean
flip rate (flips per binary weight per update over the run), mean ± sample std over seeds,
and the paired accuracy difference to sign. Results go to ``<results>/sweep_<recipe>.{json,md}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

if __package__ in (None, ""):  # ``python experiments/sweep.py`` works as well as ``-m``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (
    command_line,
    make_init,
    markdown_table,
    mean_std,
    parse_overrides,
    pm,
    recipe_for,
    rich_table,
    run_one,
    runs_directory,
    stats,
    wide_console,
    write_results,
)
from uabnn_convert.train.progress import new_progress

DEFAULT_M = "1,2,3,4"
DEFAULT_DELTA = "0.05,0.1,0.2,0.5"
DEFAULT_EPOCHS = 5
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def parse_list(text: str, kind: type, flag: str) -> list[Any]:
    """``"1,2,3"`` to ``[1, 2, 3]``; a usage error names the flag."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise ValueError(f"{flag} {text!r}: give at least one value")
    return values


def run_sweep(
    ms: list[int],
    deltas: list[float],
    seeds: int = 3,
    first_seed: int = 0,
    epochs: int | None = DEFAULT_EPOCHS,
    max_steps: int | None = None,
    batch_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    results: Path = Path("results"),
    runs: Path | None = None,
    baseline: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every (m, delta) and the sign baseline for each seed; print and write the tables."""
    console = console or wide_console()
    recipe = recipe_for("digits", 16)
    seed_list = list(range(first_seed, first_seed + seeds))
    settings: list[tuple[str, dict[str, Any] | None]] = [
        (f"m={m} delta={d:g}", {"m": m, "delta": d}) for m in ms for d in deltas
    ]
    if baseline:
        settings.insert(0, ("sign", None))
    t0 = time.perf_counter()
    runs_by_setting: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in settings}
    with runs_directory(runs) as root, new_progress(console) as progress:
        overall = progress.add_task("", total=len(settings) * len(seed_list), name="sweep runs")
        for seed in seed_list:
            init = root / f"init-seed{seed}.pt"
            make_init(recipe, seed, init)
            for label, csign in settings:
                slug = label.replace(" ", "_").replace("=", "")
                runs_by_setting[label].append(
                    run_one(
                        recipe,
                        out=root / f"{slug}-seed{seed}",
                        seed=seed,
                        init=init,
                        sign=csign is None,
                        csign=csign,
                        progress=progress,
                        name=f"{label} s{seed}",
                        overrides=overrides,
                        epochs=epochs,
                        max_steps=max_steps,
                        batch_size=batch_size,
                    )
                )
                progress.advance(overall)
    seconds = time.perf_counter() - t0
    config = {
        "recipe": recipe,
        "m": ms,
        "delta": deltas,
        "seeds": seed_list,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "overrides": overrides,
    }
    return report(recipe, settings, runs_by_setting, seconds, results, console, config)


def report(
    name: str,
    settings: list[tuple[str, dict[str, Any] | None]],
    runs_by_setting: dict[str, list[dict[str, Any]]],
    seconds: float,
    results: Path,
    console: Console,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The per-setting table, the m x delta grids, and the result files."""
    sign_acc = {r["seed"]: r["summary"]["test_top1"] for r in runs_by_setting.get("sign", [])}
    headers = [
        "setting",
        "m",
        "delta",
        "test acc (%)",
        "Δ acc vs sign (pp)",
        "mean flip rate",
        "last-epoch flip rate",
        "vetoed rate",
    ]
    rows, data = [], []
    for label, csign in settings:
        sums = [r["summary"] for r in runs_by_setting[label]]
        diffs = [
            r["summary"]["test_top1"] - sign_acc[r["seed"]]
            for r in runs_by_setting[label]
            if r["seed"] in sign_acc
        ]
        rows.append(
            [
                label,
                str(csign["m"]) if csign else "–",
                f"{csign['delta']:g}" if csign else "1 (sign)",
                pm([s["test_top1"] for s in sums]),
                pm(diffs) if diffs and csign else "–",
                pm([s["mean_flip_rate"] for s in sums], ".3e"),
                pm([s["last_epoch_flip_rate"] for s in sums], ".3e"),
                pm([s["mean_vetoed_rate"] for s in sums], ".3e"),
            ]
        )
        data.append(
            {
                "setting": label,
                "csign": csign,
                "test_top1": stats([s["test_top1"] for s in sums]),
                "test_top1_minus_sign": stats(diffs) if diffs and csign else None,
                "mean_flip_rate": stats([s["mean_flip_rate"] for s in sums]),
                "last_epoch_flip_rate": stats([s["last_epoch_flip_rate"] for s in sums]),
                "mean_vetoed_rate": stats([s["mean_vetoed_rate"] for s in sums]),
                "uncertainty": stats([s["uncertainty"] for s in sums]),
                "runs": runs_by_setting[label],
            }
        )
    n = len(config["seeds"])
    what = (
        f"{name} recipe, "
        + (
            f"{config['epochs']} epoch{'s' if config['epochs'] != 1 else ''}"
            if config.get("epochs")
            else "recipe epochs"
        )
        + (f", max {config['max_steps']} steps" if config.get("max_steps") else "")
        + f", {n} seed{'s' if n > 1 else ''}; mean ± sample std over seeds"
    )
    console.print(rich_table(f"m × delta sweep ({what})", headers, rows))
    grids = _grids(settings, runs_by_setting, config)
    for title, (g_headers, g_rows) in grids.items():
        console.print(rich_table(title, g_headers, g_rows))
    groups = identical_groups(settings, runs_by_setting)
    same = (
        "bit-identical runs (the same final state_dict for every seed): "
        + "; ".join(" = ".join(g) for g in groups)
        if groups
        else "no two settings gave bit-identical runs"
    )
    console.print(same)

    stem = f"sweep_{name}"
    markdown = "\n\n".join(
        [
            f"# Hyper-parameter study (m, delta): {what}",
            f"Command: `{command_line()}`; wall time {seconds:.0f} s.",
            "Flip rate: flips per binary weight per update. Δ acc: paired per seed against "
            "the sign baseline from the same initial model.",
            markdown_table(headers, rows),
            *(f"## {t}\n\n{markdown_table(h, r)}" for t, (h, r) in grids.items()),
            same,
        ]
    )
    out = {
        "experiment": "sweep",
        "name": name,
        "config": config,
        "command": command_line(),
        "seconds": round(seconds, 1),
        "identical": groups,
        "settings": data,
    }
    json_path, md_path = write_results(results, stem, out, markdown)
    console.print(f"wrote {json_path}, {md_path} ({seconds:.0f} s)")
    return out


def identical_groups(
    settings: list[tuple[str, dict[str, Any] | None]],
    runs_by_setting: dict[str, list[dict[str, Any]]],
) -> list[list[str]]:
    """Settings whose runs ended in the same state_dict for every seed (the same trajectory).

    The threshold only rescues a flip when the flipping weight is among the ``delta`` most
    certain of its layer; a weight that just crossed zero rarely is, so small deltas can give
    exactly the same run. Saying so beats reading noise into equal rows.
    """
    by_key: dict[tuple[str, ...], list[str]] = {}
    for label, _ in settings:
        key = tuple(r["state_sha256"] for r in runs_by_setting[label])
        by_key.setdefault(key, []).append(label)
    return [labels for labels in by_key.values() if len(labels) > 1]


def _grids(
    settings: list[tuple[str, dict[str, Any] | None]],
    runs_by_setting: dict[str, list[dict[str, Any]]],
    config: dict[str, Any],
) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Mean test accuracy and mean flip rate laid out as m (rows) x delta (columns)."""
    by_md = {(c["m"], c["delta"]): runs_by_setting[label] for label, c in settings if c}
    grids = {}
    for key, title, spec in (
        ("test_top1", "test accuracy (%), mean over seeds", ".2f"),
        ("mean_flip_rate", "mean flip rate, mean over seeds", ".2e"),
    ):
        headers = ["m \\ delta", *(f"{d:g}" for d in config["delta"])]
        rows = []
        for m in config["m"]:
            cells = [
                f"{mean_std([r['summary'][key] for r in by_md[(m, d)]])[0]:{spec}}"
                for d in config["delta"]
            ]
            rows.append([str(m), *cells])
        grids[title] = (headers, rows)
    return grids


@app.command()
def main(
    m: Annotated[str, typer.Option("--m", help="Windows m, comma-separated.")] = DEFAULT_M,
    delta: Annotated[
        str, typer.Option("--delta", help="Thresholds delta, comma-separated.")
    ] = DEFAULT_DELTA,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per setting.")] = 3,
    first_seed: Annotated[int, typer.Option("--first-seed", help="The first seed.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per run.")] = DEFAULT_EPOCHS,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Stop each run after N steps.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Override the recipe's batch.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Recipe override KEY=VALUE (repeatable).")
    ] = None,
    no_baseline: Annotated[
        bool, typer.Option("--no-baseline", help="Skip the sign baseline runs.")
    ] = False,
    results: Annotated[Path, typer.Option(help="Directory for the result files.")] = Path(
        "results"
    ),
    runs: Annotated[
        Path | None,
        typer.Option(help="Keep the harness run directories here (default: temporary)."),
    ] = None,
) -> None:
    """The m x delta study on digits: accuracy and flip rate per setting over seeds."""
    try:
        run_sweep(
            parse_list(m, int, "--m"),
            parse_list(delta, float, "--delta"),
            seeds,
            first_seed,
            epochs,
            max_steps,
            batch_size,
            parse_overrides(set_ or []),
            results,
            runs,
            baseline=not no_baseline,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
