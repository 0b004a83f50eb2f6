"""The fine-tuning loop: a recipe in, a trained converted model, checkpoints and logs out.

Converted models train in any ordinary loop (see ``examples/train_loop.py``); this harness adds
what long runs need: recipes, a start from any checkpoint or converted file, exact resume,
metrics (JSON lines, a per-site CSV, TensorBoard), plots and multi-process training.

Choices worth knowing:

* The sign baseline (``csign.enabled: false``) is the same model patched with ``delta=1``, which
  is exactly ``sign`` (SPEC section 2), so both runs report flips through one mechanism.
* ``data.batch_size`` is the global batch of one optimizer step. Each rank computes
  ``batch_size / (world_size * grad_accum)`` samples per forward, so a recipe means the same
  optimization on one process or many, with or without accumulation.
* The LR schedule is laid out over the recipe's full ``epochs`` and stepped per update;
  ``max_steps`` stops early on that same schedule (so a short run is a prefix of the long one).
* Resume (``resume="latest"`` or a checkpoint): the run continues from the checkpoint's own
  recorded recipe, overrides and model; flags need not be repeated. Keys that do not change
  the trajectory may change (:data:`~.recipe.RESUME_EXEMPT`: where the data lives, logging,
  ``max_steps``, which is not inherited: a resume without it runs to the recipe's end), and
  ``train.epochs`` may grow to extend a run (the schedule is laid out again over the new
  length, from the current step); any other change is refused, naming the key.
* DDP runs without the per-forward buffer broadcast (:func:`.dist.no_forward_buffer_sync`).
  BatchNorm running statistics differ per rank; they are averaged over ranks (timm's
  ``distribute_bn(reduce=True)``) before every evaluation and checkpoint.
* Gradient accumulation: the micro-batches of one step see unchanged weights, so c-sign does
  not advance on them (SPEC section 3): one update per optimizer step.
* Nothing in a step reads a value back to the host (meters stay on the device); log points,
  evaluations and checkpoints do.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import sites
from ..config import ConvertConfig
from ..files import arch_label, atomic_write_text, rebuild
from . import checkpoint as ck
from .build import (
    ModelSource,
    build_model,
    build_optimizer,
    build_scheduler,
    seed_everything,
)
from .console import RunConsole, summary_table
from .data import build_data, eval_loader, steps_per_epoch, train_loader
from .dist import Dist, no_forward_buffer_sync
from .errors import DataError, RecipeError, ResumeError
from .logs import METRICS_FILE, RunLogs
from .metrics import FlipMeter, LossMeter, uncertainty
from .plot import plot_runs, read_history, run_label
from .recipe import Recipe, flatten, load_recipe, recipe_differences

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
    recipe: str | Path | Mapping[str, Any] | Recipe | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    *,
    init: str | Path | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
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

    ``recipe``: a YAML path, a bundled name, a dict or a :class:`Recipe` (optional when
    resuming: the checkpoint records its recipe). ``init``: a file to start from — a
    state_dict, a converted file or a checkpoint (:mod:`.build` says which settings win);
    ``arch``/``arch_kwargs``: the architecture, as ``uabnn-convert --arch`` takes it;
    ``trust_code``: allow a factory named by a file or a recipe. ``data``: the dataset
    directory. ``out``: the run directory (default ``runs/<recipe name>``, or the resumed
    checkpoint's directory). ``resume``: a checkpoint file, a run directory, or ``"latest"``.
    ``sign_baseline`` turns c-sign off; ``max_steps``, ``epochs``, ``batch_size``,
    ``image_size`` and dotted ``overrides`` (``{"optim.lr": 0.01}``) change the recipe.
    ``compare`` is another run directory whose curves the final plot overlays; ``callbacks``
    run after every step. Under ``torchrun`` every rank calls this; only rank 0 writes files.
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
    if data is not None:
        merged["data.root"] = str(Path(data).expanduser())
    start = _Start(init, arch, arch_kwargs, trust_code, merged)
    if resume is not None:
        run_dir, path = _resume_target(resume, out, recipe, merged)
        rec, checkpoint = _resumed_recipe(path, merged)
        start.checkpoint = checkpoint
        start.path = path
    else:
        if recipe is None:
            raise RecipeError("give a recipe (a YAML file or a bundled name) or --resume")
        rec = load_recipe(recipe, merged)
        if not rec.csign.enabled and not rec.name.endswith("_sign"):
            rec.name = f"{rec.name}_sign"
        run_dir = Path(out) if out is not None else DEFAULT_RUNS_DIR / rec.name
    return _Trainer(rec, run_dir, start, compare, progress, list(callbacks)).run()


@dataclass
class _Start:
    """Where a run's model comes from: ``init`` (and ``arch``) for a new run, the checkpoint
    for a resumed one; ``overrides`` are the recipe keys this invocation set."""

    init: str | Path | None
    arch: str | None
    arch_kwargs: Mapping[str, Any] | None
    trust_code: bool
    overrides: dict[str, Any]
    checkpoint: Any = None
    path: Path | None = None


def _resume_target(
    resume: str | Path, out: str | Path | None, recipe: Any, merged: Mapping[str, Any]
) -> tuple[Path, Path]:
    """The run directory and the checkpoint a resume continues."""
    run_dir = Path(out) if out is not None else None
    if run_dir is None and str(resume) == "latest" and recipe is not None:
        rec = load_recipe(recipe, merged)
        suffix = "" if rec.csign.enabled or rec.name.endswith("_sign") else "_sign"
        run_dir = DEFAULT_RUNS_DIR / f"{rec.name}{suffix}"
    path = ck.resolve_resume(resume, run_dir)
    return (run_dir if run_dir is not None else path.parent), path


def _resumed_recipe(path: Path, merged: Mapping[str, Any]) -> tuple[Recipe, Any]:
    """The checkpoint's recipe with this invocation's allowed changes; others are refused."""
    checkpoint = ck.load(path)
    training = checkpoint.record["training"]
    recorded = training["recipe"]
    # max_steps says where this invocation stops; a resume without it runs to the recipe's end.
    rec = load_recipe(recorded, {"train.max_steps": None, **merged})
    diffs = [k for k in recipe_differences(recorded, rec.to_dict()) if k != "train.epochs"]
    if rec.train.epochs < recorded["train"]["epochs"]:
        raise ResumeError(
            f"cannot resume from {path} with train.epochs {rec.train.epochs}: the run was laid "
            f"out over {recorded['train']['epochs']} epochs; give more epochs to extend it, or "
            "--max-steps to stop early"
        )
    if diffs:
        old, new = flatten(recorded), flatten(rec.to_dict())
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diffs[:4])
        raise ResumeError(
            f"cannot resume from {path} with {shown}: only where the data lives, logging, "
            "max_steps and a longer train.epochs may change on resume (start a new run with "
            "--init to change the rest)"
        )
    return rec, checkpoint


# ----------------------------------------------------------------------------- the loop
class _Trainer:
    def __init__(
        self,
        rec: Recipe,
        run_dir: Path,
        start: _Start,
        compare: str | Path | None,
        progress: bool,
        callbacks: list[Callback],
    ) -> None:
        self.rec = rec
        self.run_dir = run_dir
        self.start = start
        self.compare = Path(compare) if compare is not None else None
        self.show = progress
        self.callbacks = callbacks
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.console: RunConsole | None = None
        self.logs: RunLogs | None = None

    def run(self) -> FinetuneResult:
        rec = self.rec
        if rec.train.threads:
            torch.set_num_threads(rec.train.threads)
        self.dist = d = Dist()
        try:
            return self._run(rec, d)
        finally:
            if self.logs is not None:
                self.logs.close()
            d.close()

    def _run(self, rec: Recipe, d: Dist) -> FinetuneResult:
        if self.compare is not None and not (self.compare / METRICS_FILE).is_file():
            raise DataError(f"--compare {self.compare}: expected a run directory with metrics")
        seed_everything(rec.seed)
        self.model, self.source = self._model(rec)
        if self.start.checkpoint is None:
            # The recorded recipe says what runs: the architecture and settings actually used.
            src = self.source
            rec.model.arch, rec.model.kwargs = src.arch, dict(src.arch_kwargs)
            rec.model.init = str(src.init) if src.init is not None else None
            rec.csign.record(src.config)
        bundle = self._data(self.model)
        n_out = getattr(self.model, "num_classes", None)
        if isinstance(n_out, int) and n_out < bundle.num_classes:
            raise RecipeError(
                f"model {self.source.arch} has {n_out} outputs but the data has "
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
        self.model.to(d.device)
        self.bundle = bundle
        self.optimizer = build_optimizer(self.model, rec)
        self.scheduler = build_scheduler(self.optimizer, rec, self.spe)
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            rec.train.amp or ""
        )
        self.scaler = (
            torch.amp.GradScaler(d.device.type) if self.amp_dtype is torch.float16 else None
        )
        if self.start.checkpoint is not None:
            self._restore()
        elif ck.step_checkpoints(self.run_dir):
            raise ResumeError(
                f"run directory {self.run_dir} already holds checkpoints; pass --resume latest "
                "to continue it, or choose another --out"
            )
        if self.step >= self.target:
            raise ResumeError(
                f"the run in {self.run_dir} is already at step {self.step} of {self.target}; "
                "give --epochs N (more than before) or --max-steps to train further"
            )
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_recipe()
            self.logs = RunLogs(self.run_dir, self.history, self.step)
        d.barrier()
        self.net: nn.Module = self.model
        if d.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[d.device.index] if d.device.type == "cuda" else None,
                **no_forward_buffer_sync(),
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=rec.train.label_smoothing)
        self.flips = FlipMeter(self.model)
        self.meter = LossMeter(d.device)
        self._train()
        return self._finish()

    # ------------------------------------------------------------------ model
    def _model(self, rec: Recipe) -> tuple[nn.Module, ModelSource]:
        start = self.start
        if start.checkpoint is not None:
            return _from_checkpoint(start.checkpoint, start.trust_code)

        def example(model: nn.Module) -> torch.Tensor:
            sample = self._data(model).train[(0, 0)][0]
            return torch.zeros(2, *sample.shape, dtype=sample.dtype)

        explicit = {k: v for k, v in start.overrides.items() if k.startswith("csign.")}
        return build_model(
            rec,
            init=start.init,
            arch=start.arch,
            arch_kwargs=start.arch_kwargs,
            trust_code=start.trust_code,
            explicit=explicit,
            example=example,
        )

    def _data(self, model: nn.Module) -> Any:
        """The recipe's data, normalised as the model's ``pretrained_cfg`` says (opened once)."""
        if getattr(self, "_bundle", None) is None:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            rec = self.rec
            self._bundle = build_data(
                rec.data, rec.data.root, rec.seed, cfg.get("mean"), cfg.get("std")
            )
        return self._bundle

    def _restore(self) -> None:
        training = self.start.checkpoint.record["training"]
        path = self.start.path
        if training["steps_per_epoch"] != self.spe:
            raise ResumeError(
                f"cannot resume from {path}: {training['steps_per_epoch']} steps per epoch "
                f"there, {self.spe} with this data"
            )
        self.optimizer.load_state_dict(training["optimizer"])
        if training["recipe"]["train"]["epochs"] == self.rec.train.epochs:
            self.scheduler.load_state_dict(training["scheduler"])
        if self.scaler is not None and training.get("scaler") is not None:
            self.scaler.load_state_dict(training["scaler"])
        self.step = int(training["step"])
        self.scheduler.step_update(num_updates=self.step)
        self.history = list(training["history"])
        self.best = training.get("best")
        self.resumed_from = path
        ck.set_rng_state(training["rng"])

    def _write_recipe(self) -> None:
        import yaml

        atomic_write_text(
            yaml.safe_dump(self.rec.to_dict(), sort_keys=False), self.run_dir / "recipe.yaml"
        )

    # ------------------------------------------------------------------ loop
    def _train(self) -> None:
        accum = self.rec.train.grad_accum
        if self.dist.main and self.show:
            self.console = RunConsole(self._header(), self.target, self.step, self._epoch_label())
        try:
            self._loop(accum)
        finally:
            if self.console is not None:
                self.console.stop()

    def _header(self) -> str:
        rec, c = self.rec, self.source.config
        mode = f"c-sign {c.describe()}" if rec.csign.enabled else "sign baseline"
        n_sites = sum(1 for _ in sites(self.model))
        resumed = getattr(self, "resumed_from", None)
        return (
            f"[bold]{rec.name}[/]: {arch_label(self.source.arch, self.source.arch_kwargs)} "
            f"({n_sites} sites, {mode}) on {self.bundle.description}; {self.spe} steps/epoch, "
            f"{self.target} steps, world {self.dist.world}; run dir {self.run_dir}"
            + (f"; resumed from {resumed.name} at step {self.step}" if resumed else "")
            + "".join(f"; {note}" for note in self.source.notes)
        )

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
                if self.console is not None:
                    self.console.advance(self.step, self._epoch_label())
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

    def _epoch_label(self) -> str:
        epochs = self.rec.train.epochs
        return f"epoch {min(self.step // self.spe + 1, epochs)}/{epochs}"

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
            self.meter.add(loss, logits, y)
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
        meter = LossMeter(d.device)
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
        if self.logs is not None:
            self.logs.record(rec)
        if self.console is not None:
            self.console.describe(rec)

    def _sync_bn(self) -> None:
        if self.dist.world > 1:
            from timm.utils import distribute_bn

            distribute_bn(self.model, self.dist.world, reduce=True)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, epoch: int, improved: bool) -> None:
        self._sync_bn()
        if self.dist.main:
            training = {
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
            ck.save(path, self.model, self.source, training)
            if improved:
                _link_or_copy(path, self.run_dir / ck.BEST_NAME)
            ck.prune(self.run_dir, self.rec.log.keep_last)
            self.last_checkpoint = path
        self.dist.barrier()

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


def _from_checkpoint(checkpoint: Any, trust_code: bool) -> tuple[nn.Module, ModelSource]:
    """The model a checkpoint holds, as its run made it (its recorded trust included: a resume
    trusts the run directory it is given, as one trusts a script one runs)."""
    record = checkpoint.record
    training = record["training"]
    trusted = trust_code or bool(training.get("trusted"))
    model = rebuild(checkpoint, trust_code=trusted)
    arch, kwargs = record["arch"], dict(record["arch_kwargs"])
    config: ConvertConfig = record["config"]
    return model, ModelSource(arch, kwargs, config, trusted, training.get("init"))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Point ``best.pt`` at a checkpoint: an atomic hard link, or an atomic copy."""
    import shutil

    from ..files import atomic_path

    tmp = dst.with_name(f".{dst.name}.link.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        with atomic_path(dst) as part:
            shutil.copyfile(src, part)
