"""The demo: the whole story on scikit-learn's digits, in about a minute on a CPU.

1. An *existing* BNN: the zoo's tiny Bi-Real network trained with plain ``sign`` in an ordinary
   loop (no c-sign anywhere), saved as a state_dict ``model.pt`` — what a user already has.
2. Conversion by :func:`uabnn_convert.files.convert_file`, the code behind
   ``uabnn-convert model.pt --m 2 --delta 0.1 --arch bireal_digits``.
3. Two fine-tunes with the harness from that same checkpoint (recipe key ``model.init``) and
   the same seed: the sign baseline (``delta = 1``, which is exactly sign) and c-sign.
4. A table (test accuracy, flip rate, vetoed flips, Σ f̂) and a PNG of flip rate and accuracy
   per epoch.
5. The c-sign run resumed from a mid-epoch checkpoint into a fresh directory: its final
   state_dict (weights, optimizer-driven c-sign state, BatchNorm statistics) is compared by
   SHA-256 with the uninterrupted run's.

Nothing is downloaded; everything is written to one run directory, named at the end. The
command (``uabnn-convert demo``) lives in :mod:`uabnn_convert.cli.demo`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..config import ConvertConfig
from ..files import atomic_save, atomic_write_text, convert_file, read
from .analysis import epoch_curve, run_summary, state_hash
from .plot import plot_epochs, read_history
from .progress import new_progress, step_callback

ARCH = "bireal_digits"
RECIPE = "digits"
DEFAULT_EPOCHS = 10
DEFAULT_SEED = 0
PRETRAIN_LR = 1e-3
PRETRAIN_BATCH = 64
CONVERT = {"m": 2, "delta": 0.1}
PLOT_NAME = "flip_rate_accuracy.png"
SUMMARY_NAME = "summary.json"


# ----------------------------------------------------------------------------- the demo
@dataclass
class RunResult:
    """One fine-tune of the demo: where it is, its numbers per epoch and in total."""

    label: str
    run_dir: Path
    summary: dict[str, Any]
    curve: list[dict[str, Any]]
    state_hash: str


@dataclass
class DemoResult:
    """Everything the demo produced; ``run_dir`` holds all of its files."""

    run_dir: Path
    model_path: Path
    converted_path: Path
    pretrain: list[dict[str, Any]]
    sign: RunResult
    csign: RunResult
    resumed: RunResult
    resumed_from: Path
    resume_identical: bool
    history_identical: bool
    plot: Path
    summary_path: Path
    seconds: float
    table: list[dict[str, Any]] = field(default_factory=list)


def _run_dir(out: Path | None) -> Path:
    """``out`` if new or empty; otherwise ``runs/demo-<time>`` — never mixes with old files."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"demo-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = Path("runs") / f"demo-{stamp}-{n}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"--out {out} already exists and is not an empty directory; choose a new one"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _pretrain(
    epochs: int, seed: int, progress: Progress
) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Train the plain-sign BNN as a user's own script would: Adam, shuffled mini-batches."""
    import timm

    from ..zoo import digits_data

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits_data()
    model = timm.create_model(ARCH, num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LR)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(y_train) // PRETRAIN_BATCH
    task = progress.add_task("", total=epochs * per_epoch, name="1 train (sign)")
    log = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        total = 0.0
        for b in range(per_epoch):
            idx = order[b * PRETRAIN_BATCH : (b + 1) * PRETRAIN_BATCH]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            progress.update(task, advance=1, description=f"loss {float(loss.detach()):.3f}")
        model.eval()
        with torch.no_grad():
            top1 = 100.0 * float((model(x_test).argmax(1) == y_test).float().mean())
        log.append({"epoch": epoch + 1, "loss": total / per_epoch, "test_top1": top1})
        progress.update(task, description=f"loss {total / per_epoch:.3f}  test {top1:.1f}%")
    return model, log


def _convert(model_path: Path, console: Console) -> Path:
    """Convert ``model.pt`` as ``uabnn-convert model.pt --m 2 --delta 0.1 --arch ...`` does."""
    args = " ".join(f"--{k} {v}" for k, v in CONVERT.items())
    console.print(f"[bold]2 convert[/]  $ uabnn-convert {model_path} {args} --arch {ARCH}")
    done = convert_file(model_path, arch=ARCH, config=ConvertConfig(**CONVERT))
    console.print(done.table())
    console.print(done.summary(), highlight=False)
    return done.path


def _check_converted(model_path: Path, converted: Path) -> None:
    """The converted file must be ``model.pt`` plus a fresh c-sign state: the same start."""
    original = torch.load(model_path, map_location="cpu", weights_only=True)
    file = read(converted)
    sd = file.state_dict or {}
    differ = [k for k, v in original.items() if k not in sd or not torch.equal(sd[k], v)]
    used = [k for k, v in sd.items() if k.endswith("num_updates") and int(v) != 0]
    if differ or used or file.record["config"].delta != CONVERT["delta"]:
        raise RuntimeError(
            f"{converted} is not model.pt plus a fresh c-sign state "
            f"(differing {differ[:3]}, updated sites {used[:3]})"
        )


def _finetune(
    label: str,
    run_dir: Path,
    overrides: Mapping[str, Any],
    progress: Progress,
    name: str,
    *,
    sign: bool = False,
    resume: Path | None = None,
) -> RunResult:
    from .harness import finetune

    task = progress.add_task("", total=None, name=name)
    result = finetune(
        RECIPE,
        out=run_dir,
        resume=resume,
        sign_baseline=sign,
        overrides=dict(overrides),
        progress=False,
        callbacks=[step_callback(progress, task)],
    )
    return RunResult(
        label,
        run_dir,
        run_summary(result.history),
        epoch_curve(result.history),
        state_hash(result.model.state_dict()),
    )


def _mid_step(total: int, per_epoch: int) -> int:
    """A checkpoint step near the middle of the run and inside an epoch (the harder resume)."""
    mid = max(1, total // 2)
    if mid % per_epoch == 0 and per_epoch > 1:
        mid += per_epoch // 2
    return min(mid, max(1, total - 1))


def _strip_time(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


def comparison_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """The sign vs c-sign table: accuracy, flip rates, flips, vetoed flips, Σ f̂."""
    table = Table(title=title, header_style="bold")
    for col in (
        "run",
        "test acc (%)",
        "mean flip rate",
        "last-epoch flip rate",
        "flips",
        "vetoed flips",
        "Σ f̂ (end)",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        table.add_row(
            r["run"],
            f"{r['test_top1']:.2f}",
            f"{r['mean_flip_rate']:.3e}",
            f"{r['last_epoch_flip_rate']:.3e}",
            f"{r['flips']:,}",
            f"{r['vetoed']:,}",
            f"{r['uncertainty']:.1f}",
        )
    return table


def run_demo(
    out: Path | None = None,
    seed: int = DEFAULT_SEED,
    epochs: int = DEFAULT_EPOCHS,
    console: Console | None = None,
) -> DemoResult:
    """Run the five steps of the module docstring; return what they produced.

    ``epochs`` is the length of the sign pre-training and of each fine-tune. Raises
    ``FileExistsError`` for a non-empty ``out`` and ``RuntimeError`` if a step fails its check.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    console = console or Console()
    t0 = time.perf_counter()
    run_dir = _run_dir(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 29k-parameter model is fastest on one thread
    try:
        return _demo(run_dir, seed, epochs, console, t0)
    finally:
        torch.set_num_threads(threads)


def _demo(run_dir: Path, seed: int, epochs: int, console: Console, t0: float) -> DemoResult:
    from ..zoo import digits_data
    from .checkpoint import step_path
    from .recipe import load_recipe

    console.print(
        f"[bold]uabnn-convert demo[/]: scikit-learn digits (8x8, bundled), {ARCH}, "
        f"seed {seed}, {epochs} epoch{'s' if epochs > 1 else ''} per stage; run directory {run_dir}"
    )
    with new_progress(console) as progress:
        model, pretrain = _pretrain(epochs, seed, progress)
    model_path = run_dir / "model.pt"
    atomic_save(model.state_dict(), model_path)
    console.print(
        f"[bold]1 train[/]    plain-sign BNN, test accuracy {pretrain[-1]['test_top1']:.2f}%: "
        f"saved its state_dict to {model_path}"
    )

    converted = _convert(model_path, console)
    _check_converted(model_path, converted)
    console.print(
        f"           checked: {converted.name} = {model_path.name} + a fresh c-sign state\n"
        "           both fine-tunes start from these weights (recipe key model.init)"
    )

    recipe = load_recipe(RECIPE)
    per_epoch = len(digits_data()[1]) // recipe.data.batch_size
    total = epochs * per_epoch
    mid = _mid_step(total, per_epoch)
    overrides = {
        "seed": seed,
        "train.epochs": epochs,
        "model.init": str(model_path.resolve()),
        "log.plot": False,
        "log.keep_last": epochs + 3,
        "log.checkpoint_every_steps": mid,
    }
    console.print(
        f"[bold]3 fine-tune[/] recipe {RECIPE}: {total} steps each, same checkpoint, seed {seed}"
    )
    with new_progress(console) as progress:
        sign = _finetune("sign", run_dir / "sign", overrides, progress, "3 sign", sign=True)
        csign = _finetune("c-sign", run_dir / "csign", overrides, progress, "3 c-sign")

    start = pretrain[-1]["test_top1"]
    rows = [{"run": r.label, **r.summary} for r in (sign, csign)]
    console.print(
        comparison_table(
            rows,
            f"4 sign vs c-sign: {epochs} epoch{'s' if epochs > 1 else ''} from "
            f"{model_path.name} (seed {seed})",
        )
    )
    console.print(
        f"           start: test accuracy {start:.2f}%; flip rate: flips per binary weight per "
        "update\n           vetoed flips: sign changes c-sign held back"
    )
    plot = plot_epochs(
        {"sign": [sign.curve], "c-sign": [csign.curve]},
        run_dir / PLOT_NAME,
        title=f"digits, {ARCH}: fine-tuned from {model_path.name} (seed {seed})",
        start_top1=start,
    )
    console.print(f"           plot: {plot}")

    mid_ckpt = step_path(csign.run_dir, mid)
    with new_progress(console) as progress:
        resumed = _finetune(
            "c-sign (resumed)",
            run_dir / "csign_resumed",
            overrides,
            progress,
            "5 resume c-sign",
            resume=mid_ckpt,
        )
    identical = resumed.state_hash == csign.state_hash
    history_same = _histories_equal(csign.run_dir, resumed.run_dir)
    verdict = "[green]identical[/]" if identical else "[red]DIFFERENT[/]"
    console.print(
        f"[bold]5 resume[/]   c-sign from {mid_ckpt.name} (step {mid} of {total}, mid-epoch "
        f"{mid // per_epoch + 1}) into {resumed.run_dir.name}/: final state_dict sha256\n"
        f"           uninterrupted {csign.state_hash}\n"
        f"           resumed       {resumed.state_hash}  {verdict}\n"
        f"           metrics log (wall time aside): "
        f"{'identical' if history_same else '[red]DIFFERENT[/]'}"
    )

    seconds = time.perf_counter() - t0
    summary_path = run_dir / SUMMARY_NAME
    result = DemoResult(
        run_dir=run_dir,
        model_path=model_path,
        converted_path=converted,
        pretrain=pretrain,
        sign=sign,
        csign=csign,
        resumed=resumed,
        resumed_from=mid_ckpt,
        resume_identical=identical,
        history_identical=history_same,
        plot=plot,
        summary_path=summary_path,
        seconds=seconds,
        table=rows,
    )
    atomic_write_text(json.dumps(_jsonable(asdict(result)), indent=2) + "\n", summary_path)
    console.print(f"done in {seconds:.0f} s; everything is in [bold]{run_dir}[/]")
    return result


def _histories_equal(a: Path, b: Path) -> bool:
    """The two runs' metrics logs agree record by record, apart from wall time."""
    return _strip_time(read_history(a)) == _strip_time(read_history(b))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def console() -> Console:
    """A console for the demo; as wide as a log needs when output is not a terminal."""
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=120)
    return out
