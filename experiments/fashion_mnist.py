"""The paper's claim where accuracy does not saturate: sign vs c-sign on Fashion-MNIST (issue 15).

    python experiments/fashion_mnist.py compare --results DIR   # Table 1 / Fig. 5 claims
    python experiments/fashion_mnist.py sweep --results DIR     # m x delta x threshold reading
    python experiments/fashion_mnist.py compare --quick --results DIR   # seconds: a smoke run

On scikit-learn's digits sign and c-sign both reach ~98.8 %, so accuracy cannot separate them.
Fashion-MNIST (Debian's ``dataset-fashion-mnist`` IDX files, read where the package puts them
or from ``--data DIR``; nothing is downloaded) keeps small BNNs well below saturation.

``compare`` runs, for every seed, sign and c-sign from the same initial model with the same
seed (so the same data order): from scratch (the paper's Algorithm 1) at two schedule lengths,
and fine-tuning a converged sign model at two lengths. The converged sign model of a seed is
the from-scratch long sign run itself (the ``_sign`` recipe trained to the end of its cosine
schedule); its weights, without c-sign state, are the ``model.init`` of the fine-tuning runs.
Models: ``bireal_fmnist`` (small Bi-Real BNN) and ``wrn22_16_fmnist`` (the paper's WRN-22
16-16-32-64 with a one-channel stem). ``sweep`` fine-tunes ``bireal_fmnist`` for every m x delta
x threshold reading ("certain": the paper's Δ as the k-th smallest f̂, the default; "uncertain":
the k-th largest), with the sign baseline from the same converged model.

The full runs are sized to one hour of this machine's two cores (compare and sweep run side by
side, one thread each): the training set is subsampled (``data.train_subset``, the same images
for every seed and variant), the schedules are short and the crop/flip augmentation is off;
every table caption says so. Printed output is markdown; it also goes, with the command line
and the wall time on top, to ``<results>/fashion_mnist_<command>.md``, next to a JSON of every
run and the plots.
"""

from __future__ import annotations

import gzip
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

if __package__ in (None, ""):  # ``python experiments/fashion_mnist.py`` works as well as ``-m``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uabnn_convert.zoo.fashion  # noqa: F401  (registers bireal_fmnist and wrn22_16_fmnist)
from experiments.common import (
    SUMMARY_HEADERS,
    command_line,
    make_init,
    markdown_table,
    mean_std,
    parse_overrides,
    pm,
    run_one,
    runs_directory,
    stats,
    summarize_seeds,
    write_results,
)
from experiments.sweep import identical_groups, parse_list
from uabnn_convert.train.data import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, read_idx
from uabnn_convert.train.errors import DataError
from uabnn_convert.train.plot import plot_epochs
from uabnn_convert.train.progress import new_progress

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MODELS = {"bireal_fmnist": "fashion_mnist", "wrn22_16_fmnist": "fashion_mnist_wrn22_16"}
VARIANTS = ("sign", "c-sign")
SETTINGS = ("scratch", "finetune")
LENGTHS = ("short", "long")
READINGS = ("certain", "uncertain")
NEVER = 10_000  # log.eval_every_epochs that means: evaluate at the end of the run only
QUICK_TRAIN, QUICK_TEST, QUICK_BATCH = 32, 100, 16

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


@dataclass(frozen=True)
class Plan:
    """How one model is trained in ``compare`` (and ``sweep``): data, lengths, seeds.

    ``eval_every`` is the recipe's ``log.eval_every_epochs`` (every run is also evaluated at its
    end); evaluating the 10,000 test images costs ~6 s on ``bireal_fmnist`` and ~30 s on the
    WRN-22, as much as training on 4,000 or 3,000 images, so it is rationed.
    """

    model: str
    seeds: int
    subset: int
    scratch: tuple[int, int]
    finetune: tuple[int, int]
    finetune_lr: float
    eval_every: int
    batch_size: int
    test_images: int | None = None  # None: all 10,000 (``--quick`` tests on the first 200)

    @property
    def recipe(self) -> str:
        return MODELS[self.model]

    @property
    def recipe_path(self) -> str:
        """The c-sign recipe's file, beside this script (``_sign`` adds the baseline's)."""
        return str(RECIPES / f"{self.recipe}.yaml")

    def epochs(self, setting: str, length: str) -> int:
        return (self.scratch if setting == "scratch" else self.finetune)[LENGTHS.index(length)]


# Sized from measurements on this machine with two runs side by side, one thread each, and the
# other engineer's test runs on the same two cores: a training step costs ~2.2 ms per image on
# bireal_fmnist and ~9 ms on wrn22_16_fmnist at batch 64 (batch 128 is slower per image on one
# core: ~2.8 and ~12 ms), and testing the 10,000 images ~10 s and ~25 s. Per seed: bireal
# 2 x (6 + 2 + 3 + 1) epochs of 4,000 images + 10 evaluations ≈ 310 s (5 seeds ≈ 26 min); WRN
# 2 x (5 + 2 + 2 + 1) epochs of 2,000 images + 8 evaluations ≈ 560 s (3 seeds ≈ 28 min).
FULL = {
    "bireal_fmnist": Plan("bireal_fmnist", 5, 4000, (2, 6), (1, 3), 0.01, 3, 64),
    "wrn22_16_fmnist": Plan("wrn22_16_fmnist", 3, 2000, (2, 5), (1, 2), 0.01, NEVER, 64),
}
# A few steps on a tiny subset (32 training images at batch 16: 2 steps per epoch, 100 test
# images): what a test runs in seconds.
QUICK = {
    "bireal_fmnist": Plan(
        "bireal_fmnist", 2, QUICK_TRAIN, (1, 2), (1, 2), 0.01, 1, QUICK_BATCH, QUICK_TEST
    ),
    "wrn22_16_fmnist": Plan(
        "wrn22_16_fmnist", 1, QUICK_TRAIN, (1, 2), (1, 2), 0.01, 1, QUICK_BATCH, QUICK_TEST
    ),
}
SWEEP_M, SWEEP_DELTA = "1,2,3", "0.05,0.1,0.2,0.5"
SWEEP_SEEDS = 3
QUICK_SWEEP_M, QUICK_SWEEP_DELTA = "1,2", "0.1,0.5"


# ----------------------------------------------------------------------------- data
def check_data(root: Path) -> None:
    """The four IDX files must be there; else one error that says how to get them."""
    missing = [n for pair in FASHION_MNIST_FILES.values() for n in pair if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found: {root} lacks {', '.join(missing)}; install the Debian "
            f"package (apt-get install dataset-fashion-mnist, which puts the files under "
            f"{FASHION_MNIST_ROOT}) or pass --data DIR holding those four files"
        )


def write_idx(path: Path, data: Any) -> None:
    """A uint8 tensor as a gzipped IDX file (the format ``read_idx`` reads)."""
    header = bytes([0, 0, 0x08, data.dim()])
    header += b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + data.contiguous().numpy().tobytes())


def tiny_copy(root: Path, dest: Path, n_train: int, n_test: int) -> Path:
    """The first ``n_train`` training and ``n_test`` test images of ``root``, as IDX files in
    ``dest`` (``--quick``: the harness then evaluates a hundred images, not 10,000)."""
    dest.mkdir(parents=True, exist_ok=True)
    for (images, labels), n in zip(FASHION_MNIST_FILES.values(), (n_train, n_test), strict=True):
        for name in (images, labels):
            write_idx(dest / name, read_idx(root / name)[:n])
    return dest


# ----------------------------------------------------------------------------- running
@dataclass
class Runner:
    """What every harness run of one command shares: data, runs directory, progress, log."""

    root: Path
    data_dir: Path
    overrides: dict[str, Any]
    progress: Any
    log: Callable[[str], None]
    total: int
    done: int = 0

    def run(
        self,
        plan: Plan,
        *,
        name: str,
        seed: int,
        init: Path,
        sign: bool,
        epochs: int,
        lr: float | None = None,
        csign: dict[str, Any] | None = None,
        eval_every: int | None = None,
        keep: Path | None = None,
    ) -> dict[str, Any]:
        """One harness run from ``init`` (:func:`common.run_one` with this experiment's data
        settings): its summary, per-epoch curve, per-site flip curves; ``keep``: save the
        trained weights (no c-sign state) there."""
        overrides: dict[str, Any] = {
            "data.train_subset": plan.subset,
            "data.augment": "none",
            "log.eval_every_epochs": eval_every or plan.eval_every,
            "log.every_steps": 25,
        }
        if lr is not None:
            overrides["optim.lr"] = lr
        overrides.update(self.overrides)
        result = run_one(
            str(RECIPES / f"{plan.recipe}{'_sign' if sign else ''}.yaml"),
            out=self.root / name,
            seed=seed,
            init=init,
            sign=sign,
            progress=self.progress,
            name=name[-16:],
            csign=csign,
            overrides=overrides,
            data_dir=self.data_dir,
            epochs=epochs,
            batch_size=plan.batch_size,
            sites=True,
            keep=keep,
        )
        result["epochs"] = epochs
        self.done += 1
        s = result["summary"]
        self.log(
            f"[{self.done}/{self.total}] {name}: test {s['test_top1']:.2f} %, flip rate "
            f"{s['mean_flip_rate']:.3e}, vetoed {s['mean_vetoed_rate']:.3e}, "
            f"{result['seconds']:.0f} s ({result['seconds'] / epochs:.1f} s/epoch)"
        )
        return result


def _stderr_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress_console() -> Console:
    # Progress bars go to stderr (and only to a terminal), so stdout holds the markdown alone.
    return Console(stderr=True, quiet=not sys.stderr.isatty())


def _data_root(data: Path | None, quick: bool, root: Path) -> Path:
    source = Path(data).expanduser() if data is not None else FASHION_MNIST_ROOT
    check_data(source)
    if quick:
        return tiny_copy(source, root / "data", QUICK_TRAIN, QUICK_TEST)
    return source


# ----------------------------------------------------------------------------- compare
def run_compare(
    models: Sequence[str],
    *,
    quick: bool = False,
    seeds: int | None = None,
    data: Path | None = None,
    overrides: dict[str, Any] | None = None,
    results: Path = Path("results"),
    runs: Path | None = None,
    echo: Callable[[str], None] = print,
    log: Callable[[str], None] = _stderr_log,
) -> dict[str, Any]:
    """Sign vs c-sign, from scratch and fine-tuning, two lengths each; print and write results."""
    plans = []
    for model in models:
        if model not in MODELS:
            raise ValueError(f"--models {model!r}: use {', '.join(MODELS)}")
        plan = (QUICK if quick else FULL)[model]
        plans.append(replace(plan, seeds=seeds) if seeds else plan)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"experiment": "fashion_mnist_compare", "models": {}}
    with runs_directory(runs) as root, new_progress(_progress_console()) as progress:
        data_dir = _data_root(data, quick, root)
        total = sum(p.seeds * 8 for p in plans)
        runner = Runner(root, data_dir, dict(overrides or {}), progress, log, total)
        for plan in plans:
            out["models"][plan.model] = compare_model(plan, runner)
    seconds = time.perf_counter() - t0
    out.update(
        command=command_line(),
        seconds=round(seconds, 1),
        quick=quick,
        data=str(data or FASHION_MNIST_ROOT),
        overrides=overrides,
    )
    body = [compare_markdown(plan, out["models"][plan.model], results) for plan in plans]
    title = "# Sign vs c-sign on Fashion-MNIST (issue 15): Table 1 and Fig. 5 claims"
    return finish(out, title, body, seconds, results, "fashion_mnist_compare", echo)


def compare_model(plan: Plan, runner: Runner) -> dict[str, Any]:
    """Every seed of one model: 4 sign/c-sign pairs (scratch and fine-tune, short and long)."""
    per_seed = []
    for seed in range(plan.seeds):
        tag = f"{plan.model}/seed{seed}"
        init = runner.root / tag / "init.pt"
        entry: dict[str, Any] = {
            "seed": seed,
            "init_sha256": make_init(plan.recipe_path, seed, init),
        }
        runs: dict[str, dict[str, Any]] = {}
        # The long sign run from scratch comes first: its trained weights are the converged
        # sign model that the fine-tuning runs start from.
        start = runner.root / tag / "converged-sign.pt"
        order = [("scratch", "long"), ("scratch", "short"), ("finetune", "short")]
        for setting, length in [*order, ("finetune", "long")]:
            key = f"{setting}-{length}"
            runs[key] = {}
            for variant in VARIANTS:
                converged = key == "scratch-long" and variant == "sign"
                runs[key][variant] = runner.run(
                    plan,
                    name=f"{tag}/{key}-{'sign' if variant == 'sign' else 'csign'}",
                    seed=seed,
                    init=init if setting == "scratch" else start,
                    sign=variant == "sign",
                    epochs=plan.epochs(setting, length),
                    lr=plan.finetune_lr if setting == "finetune" else None,
                    keep=start if converged else None,
                )
        entry["converged_sha256"] = runs["scratch-long"]["sign"]["saved_sha256"]
        entry["converged_top1"] = runs["scratch-long"]["sign"]["summary"]["test_top1"]
        entry["runs"] = runs
        per_seed.append(entry)
    return {"plan": asdict(plan), "per_seed": per_seed}


def compare_markdown(plan: Plan, data: dict[str, Any], results: Path) -> str:
    """Tables, plots and aggregates of one model (aggregates are added to ``data``)."""
    per_seed = data["per_seed"]
    n = len(per_seed)
    keys = [f"{s}-{length}" for s in SETTINGS for length in LENGTHS]
    converged = [e["converged_top1"] for e in per_seed]
    caption = (
        f"`{plan.model}` (recipe `{plan.recipe}`): trained on a fixed subset of {plan.subset:,} "
        f"of the 60,000 training images (the same for every seed and run), no augmentation, "
        f"batch {plan.batch_size}, tested on "
        + _test_set(plan)
        + f"; {_seeds(n)}; sign and c-sign (m = 2, Δ = 0.1) "
        f"of a seed start from the same model with the same seed and data order. "
        f"From scratch: {plan.scratch[0]} (short) and {plan.scratch[1]} (long) epochs, SGD lr "
        f"0.1 cosine to 0. Fine-tuning: {plan.finetune[0]} (short) and {plan.finetune[1]} "
        f"(long) epochs, SGD lr {plan.finetune_lr:g} cosine to 0, from the converged sign "
        f"model of the seed (= its {plan.scratch[1]}-epoch sign run from scratch: "
        f"{pm(converged)} % test accuracy)."
    )

    final_headers = ["setting", "epochs", "run", *SUMMARY_HEADERS]
    final_rows, paired_rows = [], []
    aggregates: dict[str, Any] = {}
    for key in keys:
        setting, length = key.split("-")
        epochs = plan.epochs(setting, length)
        agg: dict[str, Any] = {"epochs": epochs}
        for variant in VARIANTS:
            sums = [e["runs"][key][variant]["summary"] for e in per_seed]
            agg[variant], cells = summarize_seeds(sums)
            final_rows.append([setting, str(epochs), variant, *cells])
        pairs = [
            (e["runs"][key]["sign"]["summary"], e["runs"][key]["c-sign"]["summary"])
            for e in per_seed
        ]
        d_acc = [c["test_top1"] - s["test_top1"] for s, c in pairs]
        ratio = [_ratio(c["mean_flip_rate"], s["mean_flip_rate"]) for s, c in pairs]
        ratio_last = [
            _ratio(c["last_epoch_flip_rate"], s["last_epoch_flip_rate"]) for s, c in pairs
        ]
        higher = sum(d > 0 for d in d_acc)
        ties = sum(d == 0 for d in d_acc)
        lower = sum(c["mean_flip_rate"] < s["mean_flip_rate"] for s, c in pairs)
        lower_last = sum(c["last_epoch_flip_rate"] < s["last_epoch_flip_rate"] for s, c in pairs)
        agg["paired"] = {
            "test_top1_difference": stats(d_acc),
            "csign_higher_accuracy_seeds": higher,
            "equal_accuracy_seeds": ties,
            "mean_flip_rate_ratio": stats(ratio),
            "last_epoch_flip_rate_ratio": stats(ratio_last),
            "csign_lower_mean_flip_rate_seeds": lower,
            "csign_lower_last_epoch_flip_rate_seeds": lower_last,
        }
        paired_rows.append(
            [
                setting,
                str(epochs),
                pm(d_acc),
                f"{higher}/{n}" + (f" ({ties} equal)" if ties else ""),
                " ".join(f"{d:+.2f}" for d in d_acc),
                pm(ratio, ".3f"),
                f"{lower}/{n}",
                pm(ratio_last, ".3f"),
                f"{lower_last}/{n}",
            ]
        )
        aggregates[key] = agg
    paired_headers = [
        "setting",
        "epochs",
        "c-sign − sign acc (pp)",
        "c-sign higher",
        "difference per seed",
        "c-sign / sign mean flip rate",
        "c-sign lower",
        "c-sign / sign last-epoch flip rate",
        "c-sign lower (last epoch)",
    ]

    epoch_sections, plots = [], []
    for key in keys:
        setting, length = key.split("-")
        curves = {v: [e["runs"][key][v]["curve"] for e in per_seed] for v in VARIANTS}
        epoch_headers = [
            "epoch",
            "sign flip rate",
            "c-sign flip rate",
            "c-sign / sign",
            "c-sign vetoed rate",
            "sign test acc (%)",
            "c-sign test acc (%)",
        ]
        rows = []
        length_ = min(len(c) for cs in curves.values() for c in cs)
        for i in range(length_):
            flips = {v: [c[i]["flip_rate"] for c in curves[v]] for v in VARIANTS}
            accs = {v: [c[i]["val_top1"] for c in curves[v]] for v in VARIANTS}
            ratio = [_ratio(c, s) for s, c in zip(flips["sign"], flips["c-sign"], strict=True)]
            rows.append(
                [
                    str(curves["sign"][0][i]["epoch"]),
                    pm(flips["sign"], ".2e"),
                    pm(flips["c-sign"], ".2e"),
                    pm(ratio, ".3f"),
                    pm([c[i]["vetoed_rate"] for c in curves["c-sign"]], ".2e"),
                    _pm_or_dash(accs["sign"]),
                    _pm_or_dash(accs["c-sign"]),
                ]
            )
        epoch_sections.append(
            f"#### {plan.model}, {setting}, {length} ({_epochs(plan.epochs(setting, length))})"
            f"\n\n{markdown_table(epoch_headers, rows)}"
        )
        stem = f"fashion_mnist_compare_{plan.model}_{key}"
        plots.append(
            plot_epochs(
                curves,
                results / f"{stem}.png",
                title=f"{plan.model} on Fashion-MNIST, {setting} ({length}, "
                f"{plan.epochs(setting, length)} ep., {n} seeds)",
                start_top1=mean_std(converged)[0] if setting == "finetune" else None,
            )
        )
    layer_png = plot_layers(plan, per_seed, keys, results)
    plots.append(layer_png)
    layer_headers, layer_rows, layer_data = layer_table(plan, per_seed, keys)
    data["aggregates"] = aggregates
    data["per_layer"] = layer_data
    data["plots"] = [str(p) for p in plots]
    when = (
        "every epoch"
        if plan.eval_every == 1
        else f"every {plan.eval_every} epochs and at the end"
        if plan.eval_every < NEVER
        else "at the end only"
    )
    sections = [
        f"## {plan.model}",
        caption,
        f"### End of training ({plan.model})",
        markdown_table(final_headers, final_rows),
        f"### Paired per seed, c-sign − sign ({plan.model})",
        markdown_table(paired_headers, paired_rows),
        f"### Per layer: mean flip rate over the run, mean over seeds ({plan.model})",
        markdown_table(layer_headers, layer_rows),
        f"### Per epoch ({plan.model}; test accuracy where the run was evaluated: {when})",
        *epoch_sections,
        "Plots: " + ", ".join(f"[{p.name}]({p.name})" for p in plots),
    ]
    return "\n\n".join(sections)


def layer_table(
    plan: Plan, per_seed: list[dict[str, Any]], keys: Sequence[str]
) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """Per site: sign and c-sign mean flip rate per setting (mean over seeds)."""
    first = per_seed[0]["runs"][keys[0]]["sign"]["sites"]
    names = list(first)
    headers = ["layer"]
    for key in keys:
        headers += [f"{key} sign", f"{key} c-sign / sign"]
    rows, data = [], {}
    for name in names:
        row = [_short(name)]
        data[name] = {}
        for key in keys:
            means = {}
            for v in VARIANTS:
                per_run = [_site_mean(e["runs"][key][v]["sites"][name]) for e in per_seed]
                means[v] = mean_std(per_run)[0]
            ratio = _ratio(means["c-sign"], means["sign"])
            row += [f"{means['sign']:.2e}", f"{ratio:.3f}"]
            curves = {
                v: [[p["flip_rate"] for p in e["runs"][key][v]["sites"][name]] for e in per_seed]
                for v in VARIANTS
            }
            data[name][key] = {
                "sign_mean_flip_rate": means["sign"],
                "csign_mean_flip_rate": means["c-sign"],
                "flip_rate_per_epoch_per_seed": curves,
            }
        rows.append(row)
    return headers, rows, data


def plot_layers(
    plan: Plan, per_seed: list[dict[str, Any]], keys: Sequence[str], results: Path
) -> Path:
    """A PNG: one panel per setting, flip rate per epoch of every layer (mean over seeds);
    sign solid, c-sign dashed, colour by depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    names = list(per_seed[0]["runs"][keys[0]]["sign"]["sites"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        for j, name in enumerate(names):
            color = cmap(j / max(len(names) - 1, 1))
            for v, style in (("sign", "-"), ("c-sign", "--")):
                series = [e["runs"][key][v]["sites"][name] for e in per_seed]
                length = min(len(s) for s in series)
                values = np.array([[p["flip_rate"] for p in s[:length]] for s in series])
                epochs = [p["epoch"] for p in series[0][:length]]
                label = f"{_short(name)}" if v == "sign" else None
                ax.plot(epochs, values.mean(0), style, color=color, marker=".", label=label)
        ax.set(xlabel="epoch", ylabel="flips per weight per update", title=key)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if any(
            p["flip_rate"] > 0
            for e in per_seed
            for s in e["runs"][key]["sign"]["sites"].values()
            for p in s
        ):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=6, ncol=2, title="solid: sign, dashed: c-sign")
    fig.suptitle(f"{plan.model}: per-layer flip rate ({len(per_seed)} seeds, mean)")
    path = results / f"fashion_mnist_compare_{plan.model}_layers.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- sweep
def run_sweep(
    ms: Sequence[int],
    deltas: Sequence[float],
    readings: Sequence[str],
    *,
    quick: bool = False,
    seeds: int | None = None,
    data: Path | None = None,
    overrides: dict[str, Any] | None = None,
    results: Path = Path("results"),
    runs: Path | None = None,
    echo: Callable[[str], None] = print,
    log: Callable[[str], None] = _stderr_log,
) -> dict[str, Any]:
    """m x delta x reading, fine-tuning bireal_fmnist from its converged sign model."""
    for r in readings:
        if r not in READINGS:
            raise ValueError(f"--readings {r!r}: use {', '.join(READINGS)}")
    for d in deltas:
        if not 0 < d <= 1:
            raise ValueError(f"--delta {d:g}: delta must be in (0, 1]")
    plan = (QUICK if quick else FULL)["bireal_fmnist"]
    plan = replace(plan, seeds=seeds or (1 if quick else SWEEP_SEEDS))
    settings: list[tuple[str, dict[str, Any] | None]] = [("sign", None)]
    settings += [
        (f"{r} m={m} delta={d:g}", {"m": m, "delta": d, "threshold": r})
        for r in readings
        for m in ms
        for d in deltas
    ]
    t0 = time.perf_counter()
    by_setting: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in settings}
    starts = []
    epochs = plan.finetune[1]
    with runs_directory(runs) as root, new_progress(_progress_console()) as progress:
        data_dir = _data_root(data, quick, root)
        total = plan.seeds * (len(settings) + 1)
        runner = Runner(root, data_dir, dict(overrides or {}), progress, log, total)
        for seed in range(plan.seeds):
            tag = f"sweep/seed{seed}"
            init = root / tag / "init.pt"
            make_init(plan.recipe_path, seed, init)
            start = root / tag / "converged-sign.pt"
            pre = runner.run(
                plan,
                name=f"{tag}/converged-sign",
                seed=seed,
                init=init,
                sign=True,
                epochs=plan.scratch[1],
                keep=start,
            )
            starts.append({"seed": seed, "run": pre})
            for label, csign in settings:
                slug = label.replace(" ", "_").replace("=", "")
                by_setting[label].append(
                    runner.run(
                        plan,
                        name=f"{tag}/{slug}",
                        seed=seed,
                        init=start,
                        sign=csign is None,
                        csign=csign,
                        epochs=epochs,
                        lr=plan.finetune_lr,
                        eval_every=NEVER,
                    )
                )
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "experiment": "fashion_mnist_sweep",
        "plan": asdict(plan),
        "m": list(ms),
        "delta": list(deltas),
        "readings": list(readings),
        "command": command_line(),
        "seconds": round(seconds, 1),
        "quick": quick,
        "data": str(data or FASHION_MNIST_ROOT),
        "overrides": overrides,
        "converged": starts,
    }
    body = sweep_markdown(plan, settings, by_setting, starts, out)
    title = "# m × Δ × threshold reading on Fashion-MNIST (issue 15), fine-tuning bireal_fmnist"
    return finish(out, title, [body], seconds, results, "fashion_mnist_sweep", echo)


def sweep_markdown(
    plan: Plan,
    settings: list[tuple[str, dict[str, Any] | None]],
    by_setting: dict[str, list[dict[str, Any]]],
    starts: list[dict[str, Any]],
    out: dict[str, Any],
) -> str:
    n = plan.seeds
    epochs = plan.finetune[1]
    start_acc = [s["run"]["summary"]["test_top1"] for s in starts]
    caption = (
        f"`{plan.model}` fine-tuned for {_epochs(epochs)} (SGD lr "
        f"{plan.finetune_lr:g}, cosine to 0) from the converged sign model of each seed (the "
        f"`{plan.recipe}_sign` recipe, {plan.scratch[1]} epochs from scratch: {pm(start_acc)} % "
        f"test accuracy); training on a fixed subset of {plan.subset:,} of the 60,000 images, "
        f"no augmentation, batch {plan.batch_size}; tested on "
        + _test_set(plan)
        + f" at the end; {_seeds(n)}; every setting of a seed "
        "starts from the same model with the same seed and data order. Reading `certain`: Δ_t "
        "is the k-th smallest f̂ (k = ⌈δN⌉; flips among the δ most certain weights always pass, "
        "the package default); `uncertain`: the k-th largest (all but the δ most uncertain "
        "weights may always flip)."
    )
    sign_acc = {r["seed"]: r["summary"]["test_top1"] for r in by_setting["sign"]}
    headers = [
        "setting",
        "reading",
        "m",
        "Δ",
        "test acc (%)",
        "Δ acc vs sign (pp)",
        "c-sign higher",
        "mean flip rate",
        "last-epoch flip rate",
        "vetoed rate",
    ]
    rows, data = [], []
    for label, csign in settings:
        runs = by_setting[label]
        sums = [r["summary"] for r in runs]
        diffs = [r["summary"]["test_top1"] - sign_acc[r["seed"]] for r in runs]
        higher = sum(d > 0 for d in diffs)
        rows.append(
            [
                label,
                csign["threshold"] if csign else "–",
                str(csign["m"]) if csign else "–",
                f"{csign['delta']:g}" if csign else "1 (sign)",
                pm([s["test_top1"] for s in sums]),
                pm(diffs) if csign else "–",
                f"{higher}/{n}" if csign else "–",
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
                "test_top1_minus_sign": stats(diffs) if csign else None,
                "csign_higher_accuracy_seeds": higher if csign else None,
                "mean_flip_rate": stats([s["mean_flip_rate"] for s in sums]),
                "last_epoch_flip_rate": stats([s["last_epoch_flip_rate"] for s in sums]),
                "mean_vetoed_rate": stats([s["mean_vetoed_rate"] for s in sums]),
                "uncertainty": stats([s["uncertainty"] for s in sums]),
                "runs": runs,
            }
        )
    out["settings"] = data
    sign_sums = [r["summary"] for r in by_setting["sign"]]
    baseline = (
        f"Sign baseline (Δ = 1, exactly sign) from the same start: test accuracy "
        f"{pm([s['test_top1'] for s in sign_sums])} %, mean flip rate "
        f"{pm([s['mean_flip_rate'] for s in sign_sums], '.3e')}, last-epoch flip rate "
        f"{pm([s['last_epoch_flip_rate'] for s in sign_sums], '.3e')}."
    )
    grids = []
    readings = out["readings"]
    for reading in readings:
        by_md = {
            (c["m"], c["delta"]): by_setting[label]
            for label, c in settings
            if c and c["threshold"] == reading
        }
        for key, what, spec in (
            ("test_top1", "test accuracy (%)", ".2f"),
            ("test_top1_diff", "c-sign − sign test accuracy (pp, paired)", "+.2f"),
            ("mean_flip_rate", "mean flip rate", ".3e"),
            ("mean_vetoed_rate", "vetoed rate", ".3e"),
        ):
            g_headers = ["m \\ Δ", *(f"{d:g}" for d in out["delta"])]
            g_rows = []
            for m in out["m"]:
                cells = []
                for d in out["delta"]:
                    runs = by_md[(m, d)]
                    if key == "test_top1_diff":
                        vals = [r["summary"]["test_top1"] - sign_acc[r["seed"]] for r in runs]
                    else:
                        vals = [r["summary"][key] for r in runs]
                    cells.append(f"{mean_std(vals)[0]:{spec}}")
                g_rows.append([str(m), *cells])
            grids.append(
                f"#### {what}, reading `{reading}`, mean over {n} seed{'s' if n > 1 else ''}"
                f"\n\n{markdown_table(g_headers, g_rows)}"
            )
    groups = identical_groups(settings, by_setting)
    out["identical"] = groups
    same = (
        "Bit-identical runs (the same final state_dict, hashed as sweep.py does, for every "
        "seed): " + "; ".join(" = ".join(g) for g in groups)
        if groups
        else "No two settings gave bit-identical runs."
    )
    return "\n\n".join(
        [
            caption,
            "### Every setting",
            markdown_table(headers, rows),
            baseline,
            "### Grids per reading",
            *grids,
            "### Identical runs",
            same,
        ]
    )


# ----------------------------------------------------------------------------- output
def finish(
    out: dict[str, Any],
    title: str,
    body: Sequence[str],
    seconds: float,
    results: Path,
    stem: str,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Print the markdown (command line and wall time on top) and write it and the JSON."""
    head = (
        f"{title}\n\nCommand: `{command_line()}`\n\nWall time: {seconds:.0f} s "
        f"({seconds / 60:.1f} min)"
        + (" — `--quick`: a smoke run, not a measurement." if out.get("quick") else "")
    )
    markdown = "\n\n".join([head, *body])
    json_path, md_path = write_results(results, stem, out, markdown)
    echo(markdown)
    echo(f"\nwrote {md_path} and {json_path}; wall time {seconds:.0f} s")
    return out


def _test_set(plan: Plan) -> str:
    return f"the first {plan.test_images} test images" if plan.test_images else "all 10,000"


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}" + (f" (0–{n - 1})" if n > 1 else " (0)")


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _pm_or_dash(values: Sequence[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    return pm(vals) if len(vals) == len(values) and vals else "–"


def _site_mean(curve: Sequence[dict[str, float]]) -> float:
    # Epochs have equal numbers of updates (the first epoch one fewer): a plain mean suffices.
    return sum(p["flip_rate"] for p in curve) / len(curve) if curve else math.nan


def _short(site: str) -> str:
    return site.removesuffix(".weight_csign").removesuffix(".binary_conv")


# ----------------------------------------------------------------------------- command line
Results = Annotated[Path, typer.Option(help="Directory for the result files.")]
Runs = Annotated[
    Path | None, typer.Option(help="Keep the harness run directories here (default: temporary).")
]
Data = Annotated[
    Path | None,
    typer.Option(
        help=f"Directory of the four Fashion-MNIST IDX files (default {FASHION_MNIST_ROOT})."
    ),
]
Quick = Annotated[
    bool,
    typer.Option("--quick", help="2 steps per epoch on 32 images, 1-2 seeds: seconds, for tests."),
]
Seeds = Annotated[int | None, typer.Option(min=1, help="Seeds (default: the plan's).")]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Recipe override KEY=VALUE (repeatable).")
]


def _guard(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None


@app.command()
def compare(
    models: Annotated[
        str, typer.Option(help="Comma-separated: bireal_fmnist, wrn22_16_fmnist.")
    ] = ",".join(MODELS),
    quick: Quick = False,
    seeds: Seeds = None,
    data: Data = None,
    set_: Sets = None,
    results: Results = Path("results"),
    runs: Runs = None,
) -> None:
    """Sign vs c-sign: from scratch and fine-tuning, two lengths each, paired over seeds."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    _guard(
        lambda: run_compare(
            names,
            quick=quick,
            seeds=seeds,
            data=data,
            overrides=parse_overrides(set_ or []),
            results=results,
            runs=runs,
            echo=typer.echo,
        )
    )


@app.command()
def sweep(
    m: Annotated[str | None, typer.Option("--m", help=f"Windows m [{SWEEP_M}].")] = None,
    delta: Annotated[
        str | None, typer.Option("--delta", help=f"Thresholds delta [{SWEEP_DELTA}].")
    ] = None,
    readings: Annotated[
        str, typer.Option(help="Threshold readings: certain, uncertain.")
    ] = ",".join(READINGS),
    quick: Quick = False,
    seeds: Seeds = None,
    data: Data = None,
    set_: Sets = None,
    results: Results = Path("results"),
    runs: Runs = None,
) -> None:
    """m x delta x threshold reading, fine-tuning bireal_fmnist, with the sign baseline."""

    def go() -> None:
        ms = parse_list(m or (QUICK_SWEEP_M if quick else SWEEP_M), int, "--m")
        deltas = parse_list(
            delta or (QUICK_SWEEP_DELTA if quick else SWEEP_DELTA), float, "--delta"
        )
        names = [r.strip() for r in readings.split(",") if r.strip()]
        run_sweep(
            ms,
            deltas,
            names,
            quick=quick,
            seeds=seeds,
            data=data,
            overrides=parse_overrides(set_ or []),
            results=results,
            runs=runs,
            echo=typer.echo,
        )

    _guard(go)


if __name__ == "__main__":
    app()
