"""What both experiment scripts need: one harness run, per-seed initial models, statistics,
tables (rich and markdown) and result files.

Every run goes through the fine-tuning harness (``uabnn_convert.train.finetune``) with the
bundled recipes, so an experiment measures exactly what a user's ``finetune`` run would do.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from uabnn_convert.train import finetune, load_recipe
from uabnn_convert.train.analysis import epoch_curve, run_summary, state_hash
from uabnn_convert.train.progress import step_callback
from uabnn_convert.train.recipe import parse_assignment

DATASETS = ("digits", "cifar10", "cifar100")


def recipe_for(data: str, wrn: int) -> str:
    """The bundled recipe of a data set: digits, or the paper's WRN-22 for CIFAR."""
    if data not in DATASETS:
        raise ValueError(f"--data {data!r}: use one of {', '.join(DATASETS)}")
    if data == "digits":
        return "digits"
    if wrn not in (16, 64):
        raise ValueError(f"--wrn {wrn}: WRN-22 recipes exist for widths 16 and 64")
    return f"{data}_wrn22_{wrn}"


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=0.01", ...]`` to a dict of recipe overrides (values read as YAML)."""
    return dict(parse_assignment(item) for item in items)


def make_init(recipe: str, seed: int, path: Path) -> str:
    """Build the recipe's *unconverted* model from ``seed`` and save its state_dict.

    Both the sign and the c-sign run of a seed start from this file (recipe key
    ``model.init``), so they share the initial model by construction. Returns its hash.
    """
    import timm

    import uabnn_convert.zoo  # noqa: F401  (registers the zoo's models with timm)
    from uabnn_convert.train.harness import seed_everything

    rec = load_recipe(recipe)
    seed_everything(seed)
    model = timm.create_model(rec.model.arch, pretrained=False, **rec.model.kwargs)
    sd = model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return state_hash(sd)


def run_one(
    recipe: str,
    *,
    out: Path,
    seed: int,
    init: Path,
    sign: bool,
    progress: Progress,
    name: str,
    csign: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    data_dir: Path | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    sites: bool = False,
    keep: Path | None = None,
) -> dict[str, Any]:
    """One harness run from ``init``; its summary and per-epoch curve (``sites``: per-site flip
    curves too; ``keep``: also save the trained weights, without c-sign state, there)."""
    merged = {
        "seed": seed,
        "model.init": str(init.resolve()),
        "log.plot": False,
        "log.keep_last": 1,
        **{f"csign.{k}": v for k, v in (csign or {}).items()},
        **dict(overrides or {}),
    }
    task = progress.add_task("", total=None, name=name)
    t0 = time.perf_counter()
    result = finetune(
        recipe,
        data=data_dir,
        out=out,
        sign_baseline=sign,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        overrides=merged,
        progress=False,
        callbacks=[step_callback(progress, task)],
    )
    progress.remove_task(task)
    record: dict[str, Any] = {
        "seed": seed,
        "run_dir": str(out),
        "seconds": round(time.perf_counter() - t0, 2),
        "summary": run_summary(result.history),
        "curve": epoch_curve(result.history),
        "state_sha256": state_hash(result.model.state_dict()),
    }
    if sites:
        record["sites"] = site_epoch_curves(result.history)
    if keep is not None:
        record["saved_sha256"] = save_plain_weights(result.model, recipe, keep)
    return record


@contextlib.contextmanager
def runs_directory(runs: Path | None) -> Iterator[Path]:
    """``runs`` (kept), or a temporary directory removed at the end (checkpoints are big)."""
    if runs is not None:
        runs.mkdir(parents=True, exist_ok=True)
        yield runs
        return
    with tempfile.TemporaryDirectory(prefix="uabnn-exp-") as tmp:
        yield Path(tmp)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is 0."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def stats(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of ``values`` for the JSON results."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def pm(values: Sequence[float], spec: str = ".2f") -> str:
    """``mean ± std`` of ``values`` formatted with ``spec``."""
    mean, std = mean_std(values)
    return f"{mean:{spec}} ± {std:{spec}}"


SUMMARY_HEADERS = (
    "test acc (%)",
    "mean flip rate",
    "last-epoch flip rate",
    "vetoed rate",
    "Σ f̂ (end)",
    "test acc per seed",
)
_SUMMARY_FORMATS = {
    "test_top1": ".2f",
    "mean_flip_rate": ".3e",
    "last_epoch_flip_rate": ".3e",
    "mean_vetoed_rate": ".3e",
    "uncertainty": ".0f",
}


def summarize_seeds(sums: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Run summaries of one variant over seeds: their statistics (data) and the table cells
    under :data:`SUMMARY_HEADERS` (mean ± std of each figure, then accuracy per seed)."""
    data: dict[str, Any] = {k: stats([s[k] for s in sums]) for k in _SUMMARY_FORMATS}
    data["test_top1_per_seed"] = [s["test_top1"] for s in sums]
    cells = [pm([s[k] for s in sums], spec) for k, spec in _SUMMARY_FORMATS.items()]
    cells.append(" ".join(f"{s['test_top1']:.2f}" for s in sums))
    return data, cells


def rich_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], caption: str = ""
) -> Table:
    """A rich table of pre-formatted cells; the first column left-aligned, the rest right."""
    table = Table(title=title, header_style="bold", caption=caption or None)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same cells as a GitHub markdown table."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def command_line() -> str:
    """How this script was started (``python -m experiments.NAME ...``), for the result files."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    head = ["python", "-m", name] if name.startswith("experiments.") else ["python", sys.argv[0]]
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


def write_results(
    results: Path, stem: str, data: Mapping[str, Any], markdown: str
) -> tuple[Path, Path]:
    """``<results>/<stem>.json`` and ``<results>/<stem>.md``."""
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results / f"{stem}.json", results / f"{stem}.md"
    json_path.write_text(json.dumps(_finite(data), indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def _finite(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def wide_console() -> Console:
    """A console that does not wrap the tables when output goes to a file or a pipe."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    return console


def save_plain_weights(model: torch.nn.Module, recipe: str | Path, path: Path) -> str:
    """Save the *unconverted* weights of a trained converted model as a ``model.init`` file.

    A converted model's state_dict holds its weights plus the c-sign state of every site; only
    the keys of the recipe's plain model are kept, so a run started from the file begins with a
    fresh c-sign state (whatever its m), and its first binary weights are the signs of the saved
    latents: the trained model exactly. Returns the file's hash.
    """
    import timm

    import uabnn_convert.zoo  # noqa: F401  (registers the zoo's models with timm)

    rec = load_recipe(recipe)
    plain = timm.create_model(rec.model.arch, pretrained=False, **rec.model.kwargs).state_dict()
    trained = model.state_dict()
    missing = [k for k in plain if k not in trained]
    if missing:
        raise RuntimeError(f"the trained model lacks {', '.join(missing[:3])} of {rec.model.arch}")
    sd = {k: trained[k].detach().cpu().clone() for k in plain}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return state_hash(sd)


def site_epoch_curves(history: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per c-sign site, per epoch: flip and veto rates per update (from the ``sites`` entry of
    every train record), weighted by the updates each log interval covers, as ``epoch_curve``
    weights the totals (the first update of a fresh state is not counted)."""
    per_epoch: dict[int, list[tuple[Mapping[str, Any], int]]] = {}
    previous = 0
    for rec in history:
        if rec.get("kind") != "train":
            continue
        n = max(rec["step"] - previous - (1 if previous == 0 else 0), 0)
        previous = rec["step"]
        per_epoch.setdefault(rec["epoch"], []).append((rec, n))
    curves: dict[str, list[dict[str, float]]] = {}
    for epoch in sorted(per_epoch):
        pairs = per_epoch[epoch]
        total = sum(n for _, n in pairs)
        names = {name for rec, _ in pairs for name in rec.get("sites", {})}
        for name in sorted(names):
            rates = {}
            for key in ("flip_rate", "vetoed_rate"):
                weighted = sum(
                    rec["sites"][name][key] * n for rec, n in pairs if name in rec["sites"]
                )
                rates[key] = weighted / total if total else 0.0
            curves.setdefault(name, []).append({"epoch": epoch + 1, **rates})
    return curves
