"""The fine-tuning loop: a recipe in, a trained converted model, checkpoints and logs out.

Converted models train in any ordinary loop (see ``examples/train_loop.py``); this harness adds
what long runs need: recipes, exact resume, metrics, plots and multi-process training.

Choices worth knowing:

* The sign baseline (``csign.enabled: false``) is the same model patched with ``delta=1``, which
  is exactly ``sign`` (SPEC section 2), so both runs report flips through one mechanism.
* ``data.batch_size`` is the global batch of one optimizer step. Each rank computes
  ``batch_size / (world_size * grad_accum)`` samples per forward, so a recipe means the same
  optimization on one process or many, with or without accumulation.
* The LR schedule is laid out over the recipe's full ``epochs`` and stepped per update;
  ``max_steps`` stops early on that same schedule (so a short run is a prefix of the long one).
* DDP runs without the per-forward buffer broadcast (``broadcast_buffers=False``, named
  ``forward_sync_buffers=False`` since torch 2.14; buffers still sync once at the start). The
  c-sign state is a deterministic function of the weights, which DDP keeps identical on every
  rank, so broadcasting it (``m + 1`` copies of every binary weight, before every forward) would
  only cost time. BatchNorm running statistics do differ per rank (each sees its own samples);
  they are averaged over ranks (timm's ``distribute_bn(reduce=True)``) before every evaluation
  and checkpoint, so evaluation, checkpoints and all ranks agree. Training-mode BN normalises
  with batch statistics and is unaffected.
* Gradient accumulation: the micro-batches of one step see unchanged weights, so c-sign does
  not advance on them (SPEC section 3): one update per optimizer step.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
from torch import nn

from .._version import __version__
from ..api import patch, sites
from ..files import append_line
from . import checkpoint as ck
from .data import build_data, eval_loader, steps_per_epoch, train_loader
from .errors import DataError, RecipeError, ResumeError
from .metrics import FlipMeter, LossMeter, uncertainty
from .plot import METRICS_FILE, plot_runs, read_history, run_label
from .recipe import CSignSpec, Recipe, flatten, load_recipe, recipe_differences

DEFAULT_RUNS_DIR = Path("runs")


@dataclass
class TrainState:
    """What a callback sees after each optimizer step (and its checkpoint, if one was due)."""

    step: int
    epoch: int
    target_steps: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    run_dir: Path
    history: list[dict[str, Any]]
    rank: int


@dataclass
class FinetuneResult:
    """The outcome of :func:`finetune`: the trained converted model and where its files are."""

    run_dir: Path
    model: nn.Module
    recipe: Recipe
    history: list[dict[str, Any]]
    step: int
    best: dict[str, Any] | None
    checkpoint: Path | None
    rank: int = 0
    world_size: int = 1
    final: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[TrainState], None]


def finetune(
    recipe: str | Path | Mapping[str, Any] | Recipe,
    data: str | Path | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    *,
    sign_baseline: bool = False,
    max_steps: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    compare: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> FinetuneResult:
    """Train a converted model as a recipe says; resume exactly from a checkpoint.

    ``data`` is the dataset directory (not needed for digits); ``out`` the run directory
    (default: ``runs/<recipe name>``, or the resumed checkpoint's directory); ``resume`` a
    checkpoint file, a run directory, or ``"latest"`` (the newest checkpoint in ``out``).
    ``sign_baseline`` turns c-sign off; ``max_steps``, ``epochs``, ``batch_size``,
    ``image_size`` and dotted ``overrides`` (``{"optim.lr": 0.01}``) change the recipe before
    validation. ``compare`` is another run directory whose curves the final plot overlays.
    ``callbacks`` run after every step.
    Under ``torchrun`` every rank calls this; only rank 0 writes files.
    """
    merged: dict[str, Any] = dict(overrides or {})
    for key, value in (
        ("train.max_steps", max_steps),
        ("train.epochs", epochs),
        ("data.batch_size", batch_size),
        ("data.image_size", image_size),
    ):
        if value is not None:
            merged[key] = value
    if sign_baseline:
        merged["csign.enabled"] = False
    rec = load_recipe(recipe, merged)
    if not rec.csign.enabled and not rec.name.endswith("_sign"):
        rec.name = f"{rec.name}_sign"
    if data is not None:
        rec.data.root = str(Path(data).expanduser())
    if out is not None:
        run_dir = Path(out)
    elif resume is not None and str(resume) != "latest":
        # Continue in the directory the checkpoint came from.
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    else:
        run_dir = DEFAULT_RUNS_DIR / rec.name
    return _Trainer(rec, run_dir, resume, compare, progress, list(callbacks)).run()


# ----------------------------------------------------------------------------- building blocks
def build_model(rec: Recipe) -> nn.Module:
    """The recipe's timm model (zoo names registered), converted, with ``model.init`` loaded."""
    from .. import zoo  # noqa: F401  (registers the zoo's models with timm)

    try:
        model = timm.create_model(rec.model.arch, pretrained=False, **rec.model.kwargs)
    except RuntimeError as exc:
        raise RecipeError(f"model.arch={rec.model.arch!r}: {exc}") from None
    except TypeError as exc:
        raise RecipeError(f"model.kwargs for {rec.model.arch!r}: {exc}") from None
    convert(model, rec.csign)
    if rec.model.init:
        _load_init(model, Path(rec.model.init))
    return model


def convert(model: nn.Module, spec: CSignSpec) -> nn.Module:
    """Patch with the recipe's c-sign, or with ``delta=1`` (exactly sign) for the baseline."""
    return patch(model, spec.config())


def build_optimizer(model: nn.Module, rec: Recipe) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` with the recipe's settings."""
    from timm.optim import create_optimizer_v2

    o = rec.optim
    if o.name == "sgd":
        # timm's "sgd" is Nesterov SGD; "momentum" is classical momentum SGD.
        return create_optimizer_v2(
            model,
            opt="sgd" if o.nesterov else "momentum",
            lr=o.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            filter_bias_and_bn=o.filter_bias_and_bn,
        )
    return create_optimizer_v2(
        model,
        opt=o.name,
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=(o.momentum, o.beta2),
        filter_bias_and_bn=o.filter_bias_and_bn,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, rec: Recipe, updates_per_epoch: int) -> Any:
    """A timm scheduler over the full recipe length, stepped once per optimizer update."""
    from timm.scheduler import create_scheduler_v2

    s = rec.schedule
    name = {"cosine": "cosine", "linear": "poly", "constant": "constant"}[s.name]
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=name,
        num_epochs=rec.train.epochs,
        decay_rate=1.0,  # for "poly": power 1 is a linear decay
        min_lr=s.min_lr,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    scheduler.step_update(0)
    return scheduler


def _load_init(model: nn.Module, path: Path) -> None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecipeError(f"model.init: no such file {str(path)!r}") from None
    except Exception as exc:
        raise RecipeError(f"model.init: cannot read {path} as a state_dict ({exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    try:
        model.load_state_dict(obj)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RecipeError(f"model.init: {path} does not fit the model: {first}") from None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Dist:
    """Process-group facts, and the few collectives the loop needs (no-ops on one process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            self.owns_group = True
        if dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        buf = t.to(self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.cpu()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


class _Trainer:
    def __init__(
        self,
        rec: Recipe,
        run_dir: Path,
        resume: str | Path | None,
        compare: str | Path | None,
        progress: bool,
        callbacks: list[Callback],
    ) -> None:
        self.rec = rec
        self.run_dir = run_dir
        self.resume = resume
        self.compare = Path(compare) if compare is not None else None
        self.show = progress
        self.callbacks = callbacks
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.console: Any = None

    # ------------------------------------------------------------------ setup
    def run(self) -> FinetuneResult:
        rec = self.rec
        if rec.train.threads:
            torch.set_num_threads(rec.train.threads)
        self.dist = d = _Dist()
        try:
            return self._run(rec, d)
        finally:
            d.close()

    def _run(self, rec: Recipe, d: _Dist) -> FinetuneResult:
        if self.compare is not None and not (self.compare / METRICS_FILE).is_file():
            raise DataError(f"--compare {self.compare}: expected a run directory with metrics")
        seed_everything(rec.seed)
        model = build_model(rec)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        bundle = build_data(rec.data, rec.data.root, rec.seed, cfg.get("mean"), cfg.get("std"))
        n_out = getattr(model, "num_classes", None)
        if isinstance(n_out, int) and n_out < bundle.num_classes:
            raise RecipeError(
                f"model {rec.model.arch} has {n_out} outputs but the data has "
                f"{bundle.num_classes} classes; set model.kwargs.num_classes"
            )
        accum, batch = rec.train.grad_accum, rec.data.batch_size
        if batch % (d.world * accum):
            raise RecipeError(
                f"data.batch_size={batch} must be divisible by world_size ({d.world}) x "
                f"train.grad_accum ({accum})"
            )
        self.micro = batch // (d.world * accum)
        self.spe = steps_per_epoch(len(bundle.train), batch)
        if self.spe == 0:
            raise DataError(
                f"{bundle.description}: {len(bundle.train)} training samples are fewer than one "
                f"batch of {batch}"
            )
        total = rec.train.epochs * self.spe
        self.target = min(total, rec.train.max_steps or total)
        model.to(d.device)
        self.model = model
        self.bundle = bundle
        self.optimizer = build_optimizer(model, rec)
        self.scheduler = build_scheduler(self.optimizer, rec, self.spe)
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            rec.train.amp or ""
        )
        self.scaler = (
            torch.amp.GradScaler(d.device.type) if self.amp_dtype is torch.float16 else None
        )
        if self.resume is not None:
            self._restore(ck.resolve_resume(self.resume, self.run_dir))
        elif ck.step_checkpoints(self.run_dir):
            raise ResumeError(
                f"run directory {self.run_dir} already holds checkpoints; pass --resume latest "
                "to continue it, or choose another --out"
            )
        if d.main:
            self._init_run_dir()
        d.barrier()
        self.net: nn.Module = model
        if d.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[d.device.index] if d.device.type == "cuda" else None,
                **_no_forward_buffer_sync(),
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=rec.train.label_smoothing)
        self.flips = FlipMeter(model)
        self.meter = LossMeter()
        self._train()
        return self._finish()

    def _restore(self, path: Path) -> None:
        ckpt = ck.load(path)
        diffs = recipe_differences(ckpt["recipe"], self.rec.to_dict())
        if diffs:
            old, new = flatten(ckpt["recipe"]), flatten(self.rec.to_dict())
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diffs[:4])
            more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
            raise ResumeError(
                f"cannot resume from {path}: it was written by a different recipe or model "
                f"({shown}{more})"
            )
        if ckpt["steps_per_epoch"] != self.spe:
            raise ResumeError(
                f"cannot resume from {path}: {ckpt['steps_per_epoch']} steps per epoch there, "
                f"{self.spe} with this data"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ResumeError(
                f"cannot resume from {path}: model state does not fit: {first}"
            ) from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.history = list(ckpt["history"])
        self.best = ckpt.get("best")
        self.resumed_from = path
        ck.set_rng_state(ckpt["rng"])

    def _init_run_dir(self) -> None:
        import yaml

        self.run_dir.mkdir(parents=True, exist_ok=True)
        ck.atomic_write_text(
            yaml.safe_dump(self.rec.to_dict(), sort_keys=False), self.run_dir / "recipe.yaml"
        )
        # On resume the log is rewritten from the checkpoint's history, dropping whatever an
        # interrupted process logged after that checkpoint.
        ck.atomic_write_text(
            "".join(json.dumps(r) + "\n" for r in self.history), self.run_dir / METRICS_FILE
        )

    # ------------------------------------------------------------------ loop
    def _train(self) -> None:
        rec, d = self.rec, self.dist
        accum = rec.train.grad_accum
        if d.main and self.show:
            self._start_console()
        try:
            self._loop(accum)
        finally:
            if self.bar is not None:
                self.bar.stop()

    def _loop(self, accum: int) -> None:
        rec, d = self.rec, self.dist
        # Wall time keeps counting across resumes: it continues from the last logged value.
        times = [r["time"] for r in self.history if "time" in r]
        self.t0 = time.time() - (times[-1] if times else 0.0)
        self.model.train()
        while self.step < self.target:
            epoch, done_in_epoch = divmod(self.step, self.spe)
            loader = train_loader(
                self.bundle.train,
                rec.data,
                epoch=epoch,
                seed=rec.seed,
                micro_batch=self.micro,
                num_batches=self.spe * accum,
                skip=done_in_epoch * accum,
                rank=d.rank,
                world=d.world,
            )
            batches = iter(loader)
            for in_epoch in range(done_in_epoch, self.spe):
                lr = self.optimizer.param_groups[0]["lr"]
                self._one_step(batches, accum)
                self.step += 1
                self.scheduler.step_update(num_updates=self.step)
                self.flips.after_step()
                end_of_epoch = in_epoch + 1 == self.spe
                final = self.step == self.target
                every = rec.log.checkpoint_every_steps
                save = end_of_epoch or final or bool(every and self.step % every == 0)
                # A checkpoint is always a log point too, so the interval meters are empty
                # whenever a checkpoint is taken and a resumed run logs what the original did.
                if save or self.step % rec.log.every_steps == 0:
                    self._log_train(epoch, lr)
                improved = False
                if (end_of_epoch and (epoch + 1) % rec.log.eval_every_epochs == 0) or final:
                    improved = self._evaluate(epoch)
                if save:
                    self._save(epoch, improved)
                self._advance_bar()
                state = TrainState(
                    self.step,
                    epoch,
                    self.target,
                    self.model,
                    self.optimizer,
                    self.run_dir,
                    self.history,
                    d.rank,
                )
                for cb in self.callbacks:
                    cb(state)
                if final:
                    break
            del batches

    def _one_step(self, batches: Any, accum: int) -> None:
        d = self.dist
        for j in range(accum):
            x, y = next(batches)
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            sync = (
                self.net.no_sync()
                if isinstance(self.net, nn.parallel.DistributedDataParallel) and j < accum - 1
                else contextlib.nullcontext()
            )
            with sync:
                with self._autocast():
                    logits = self.net(x)
                    loss = self.criterion(logits, y)
                scaled = loss / accum
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            self.meter.add(loss.detach(), logits.detach(), y)
        if self.rec.train.clip_grad:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.rec.train.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ logging
    def _log_train(self, epoch: int, lr: float) -> None:
        rec = {
            "kind": "train",
            "step": self.step,
            "epoch": epoch,
            "epoch_progress": self.step / self.spe,
            **self.meter.summary(self.dist.sum),
            "lr": lr,
            **self.flips.summary(),
            "uncertainty": uncertainty(self.model),
            "time": round(time.time() - self.t0, 3),
        }
        self.meter.reset()
        self.flips.reset()
        self._record(rec)

    @torch.no_grad()
    def _evaluate(self, epoch: int) -> bool:
        d = self.dist
        self._sync_bn()
        self.model.eval()
        meter = LossMeter()
        loss_fn = nn.CrossEntropyLoss()
        for x, y in eval_loader(self.bundle.val, self.rec.data, rank=d.rank, world=d.world):
            x, y = x.to(d.device), y.to(d.device)
            with self._autocast():
                logits = self.model(x)
            meter.add(loss_fn(logits.float(), y), logits, y)
        self.model.train()
        rec = {
            "kind": "eval",
            "step": self.step,
            "epoch": epoch,
            "epoch_progress": self.step / self.spe,
            **meter.summary(d.sum, prefix="val_"),
        }
        self._record(rec)
        metric = self.rec.log.best_metric
        value = rec[metric]
        better = self.best is None or (
            value < self.best["value"]
            if self.rec.best_mode == "min"
            else value > self.best["value"]
        )
        if better:
            self.best = {"metric": metric, "value": value, "step": self.step, "epoch": epoch}
        return better

    def _record(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.dist.main:
            append_line(json.dumps(rec), self.run_dir / METRICS_FILE)
            self._describe(rec)

    def _sync_bn(self) -> None:
        if self.dist.world > 1:
            from timm.utils import distribute_bn

            distribute_bn(self.model, self.dist.world, reduce=True)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, epoch: int, improved: bool) -> None:
        self._sync_bn()
        if self.dist.main:
            state = {
                "format": ck.FORMAT,
                "version": __version__,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": epoch,
                "step": self.step,
                "steps_per_epoch": self.spe,
                "world_size": self.dist.world,
                "rng": ck.rng_state(),
                "recipe": self.rec.to_dict(),
                "history": self.history,
                "best": self.best,
            }
            path = ck.step_path(self.run_dir, self.step)
            ck.atomic_save(state, path)
            if improved:
                _link_or_copy(path, self.run_dir / ck.BEST_NAME, state)
            ck.prune(self.run_dir, self.rec.log.keep_last)
            self.last_checkpoint = path
        self.dist.barrier()

    # ------------------------------------------------------------------ terminal
    bar: Any = None

    def _start_console(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console()
        rec = self.rec
        mode = (
            f"c-sign m={rec.csign.m} delta={rec.csign.delta}"
            if rec.csign.enabled
            else "sign baseline"
        )
        n_sites = sum(1 for _ in sites(self.model))
        resumed = getattr(self, "resumed_from", None)
        self.console.print(
            f"[bold]{rec.name}[/]: {rec.model.arch} ({n_sites} sites, {mode}) on "
            f"{self.bundle.description}; {self.spe} steps/epoch, {self.target} steps, "
            f"world {self.dist.world}; run dir {self.run_dir}"
            + (f"; resumed from {resumed.name} at step {self.step}" if resumed else "")
        )
        self.bar = Progress(
            TextColumn("[bold]{task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.task = self.bar.add_task(
            "", total=self.target, completed=self.step, epoch=self._epoch_label()
        )
        self.bar.start()

    def _advance_bar(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.step, epoch=self._epoch_label())

    def _epoch_label(self) -> str:
        epochs = self.rec.train.epochs
        return f"epoch {min(self.step // self.spe + 1, epochs)}/{epochs}"

    def _describe(self, rec: dict[str, Any]) -> None:
        if self.bar is None:
            return
        if rec["kind"] == "train":
            text = f"loss {rec['loss']:.3f} top1 {rec['top1']:.1f} flip {rec['flip_rate']:.1e}"
            self.bar.update(self.task, description=text)
        else:
            self.bar.console.print(
                f"step {rec['step']}: val loss {rec['val_loss']:.4f} top1 "
                f"{rec['val_top1']:.2f} top5 {rec['val_top5']:.2f}"
            )

    # ------------------------------------------------------------------ end
    def _finish(self) -> FinetuneResult:
        d = self.dist
        if d.main:
            if self.rec.log.plot and self.history:
                runs = [(self._label(), self.history)]
                if self.compare is not None:
                    runs.append((run_label(self.compare), read_history(self.compare)))
                plot_runs(runs, self.run_dir / "metrics.png", title=self.rec.name)
            if self.console is not None:
                self.console.print(summary_table(self.history, self.best, self.rec.name))
        evals = [r for r in self.history if r["kind"] == "eval"]
        return FinetuneResult(
            run_dir=self.run_dir,
            model=self.model,
            recipe=self.rec,
            history=self.history,
            step=self.step,
            best=self.best,
            checkpoint=self.last_checkpoint,
            rank=d.rank,
            world_size=d.world,
            final=evals[-1] if evals else {},
        )

    def _label(self) -> str:
        return f"{self.rec.name} ({'c-sign' if self.rec.csign.enabled else 'sign'})"


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


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP without a buffer broadcast before every forward (buffers still sync at init).

    torch >= 2.14 names this ``forward_sync_buffers=False`` and deprecates the older
    ``broadcast_buffers=False``; use whichever this torch has.
    """
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _link_or_copy(src: Path, dst: Path, state: Mapping[str, Any]) -> None:
    """Point ``best.pt`` at a checkpoint: an atomic hard link, or a second atomic save."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        ck.atomic_save(state, dst)
