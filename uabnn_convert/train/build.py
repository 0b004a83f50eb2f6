"""What a run trains: the model (architecture, initial weights, c-sign settings), its optimizer
and its learning-rate schedule.

Where the model comes from, in priority order:

* the architecture: ``--arch`` (``arch=``) > the architecture recorded in ``--init`` FILE (a
  converted file or a checkpoint) > the recipe's ``model.arch``. Each is a timm / zoo name or a
  ``package.module:factory``; a factory named by a file or a recipe is called only with
  ``--trust-code`` (one named on the command line is trusted), as ``uabnn-convert`` does.
* the initial weights: ``--init`` FILE (``init=``) > the recipe's ``model.init``; FILE is
  anything ``uabnn-convert`` reads: a state_dict or training checkpoint (module. / _orig_mod.
  prefixes stripped), a converted file, or a fine-tuning checkpoint of this harness.
* the c-sign settings: keys set explicitly for this run (``--set csign.delta=…``,
  ``--sign-baseline``) > the settings a converted file or checkpoint records (its c-sign state
  comes with them) > the recipe's ``csign`` section. Only ``delta`` and ``threshold`` may be
  changed on a file that already holds a state (``m``, ``sigma`` and ``uncertainty`` shape the
  state itself).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import patch
from ..config import ConvertConfig
from ..errors import UabnnError
from ..files import (
    ModelFile,
    PickleRefused,
    arch_label,
    build_arch,
    load_weights,
    patch_recorded,
    read,
)
from .errors import RecipeError
from .recipe import Recipe

STATEFUL_SETTINGS = ("m", "sigma", "uncertainty")


@dataclass
class ModelSource:
    """How a run's model was made: recorded in every checkpoint, so that ``inspect``,
    ``freeze``, ``summary`` and ``export`` rebuild it, and a resume needs no flag."""

    arch: str
    arch_kwargs: dict[str, Any]
    config: ConvertConfig
    trusted: bool
    init: str | None = None
    notes: list[str] = field(default_factory=list)


def build_model(
    rec: Recipe,
    *,
    init: str | Path | None = None,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
    explicit: Mapping[str, Any] | None = None,
    example: Callable[[nn.Module], Any] | None = None,
) -> tuple[nn.Module, ModelSource]:
    """The run's converted model and where it came from (see the module docstring).

    ``explicit`` are the ``csign.*`` recipe keys this run set itself (they win over a file's
    recorded settings). ``example(model)`` gives example inputs for the unconverted model (a
    run-time capture needs them; patch checks step-0 parity on them).
    """
    init_path = str(init) if init is not None else rec.model.init
    file = _read_init(init_path) if init_path else None
    if arch is not None:
        arch_ref, kwargs, trusted = arch, dict(arch_kwargs or rec.model.kwargs), True
    elif file is not None and file.is_record and file.record["arch"]:
        arch_ref, kwargs = file.record["arch"], dict(file.record["arch_kwargs"])
        trusted = trust_code
    else:
        arch_ref, kwargs, trusted = rec.model.arch, dict(rec.model.kwargs), trust_code
    trusted = trusted or ":" not in arch_ref
    model = build_arch(arch_ref, kwargs, trusted=trusted)
    label = arch_label(arch_ref, kwargs)
    changes = {k.removeprefix("csign."): v for k, v in (explicit or {}).items()}
    if not rec.csign.enabled:
        changes.update(delta=1.0, threshold="certain")
    changes.pop("enabled", None)
    if file is not None and file.is_record:
        config = _recorded_config(file, changes)
        record = {**file.record, "config": config}
        patch_recorded(model, record, source=str(file.path), target=label)
        _load(model, file, label)
        note = f"started from {file.path} ({file.kind}): its weights, c-sign state and settings"
    else:
        config = rec.csign.config()
        if file is not None:
            _load(model, file, label)
        patch(model, config, example_inputs=example(model) if example is not None else None)
        note = f"started from {file.path} ({file.kind})" if file is not None else ""
    source = ModelSource(arch_ref, kwargs, config, trusted, init_path, [note] if note else [])
    return model, source


def _read_init(path: str) -> ModelFile:
    try:
        file = read(path)
    except PickleRefused:
        raise RecipeError(
            f"{path} is a pickled model; give --init its state_dict (torch.save("
            "model.state_dict(), ...)) or a converted file"
        ) from None
    except UabnnError as exc:
        raise RecipeError(f"--init / model.init: {exc}") from None
    if file.kind == "frozen":
        raise RecipeError(
            f"{path} is a frozen (deployable) model; fine-tune from the converted file or a "
            "checkpoint instead"
        )
    return file


def _recorded_config(file: ModelFile, changes: Mapping[str, Any]) -> ConvertConfig:
    """The file's settings with this run's explicit changes (state-compatible ones only)."""
    config: ConvertConfig = file.record["config"]
    clash = [k for k in STATEFUL_SETTINGS if k in changes and changes[k] != getattr(config, k)]
    if clash:
        key = clash[0]
        raise RecipeError(
            f"csign.{key}={changes[key]!r} differs from the {getattr(config, key)!r} that "
            f"{file.path} holds its c-sign state for; convert the original checkpoint again "
            f"with {key}={changes[key]!r}, or leave csign.{key} alone"
        )
    allowed = {k: v for k, v in changes.items() if k in ("delta", "threshold")}
    return config.replace(**allowed) if allowed else config


def _load(model: nn.Module, file: ModelFile, label: str) -> None:
    load_weights(model, file.state_dict or {}, source=str(file.path), target=label)


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


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
