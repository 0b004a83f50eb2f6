"""Checkpoints: the package's record (kind ``checkpoint``) around the harness state.

A checkpoint is what ``uabnn-convert`` writes for a converted model — architecture, arguments,
c-sign settings per site, the state_dict with weights and c-sign state, package version — plus
``training``: optimizer, LR scheduler, AMP scaler when used, epoch and step, every RNG state
(python, numpy, torch, CUDA), the resolved recipe, this run's overrides, the metrics history.
So ``inspect``, ``freeze``, ``freeze --packed``, ``summary``, ``export`` and ``uc.load`` read it
as they read a converted file, and ``--resume`` needs nothing else. It loads with
``torch.load(weights_only=True)``.

Writes are atomic (temporary file, fsync, rename), so a crash or SIGKILL leaves either the
previous file or the complete new one; the last ``log.keep_last`` are kept, ``best.pt`` is a
hard link to the best.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UabnnError
from ..files import ModelFile, atomic_save, converted_record, read
from .build import ModelSource
from .errors import ResumeError

STEP_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")
BEST_NAME = "best.pt"


def step_path(run_dir: Path, step: int) -> Path:
    """The file name of the checkpoint taken after optimizer step ``step``."""
    return run_dir / f"ckpt-{step:08d}.pt"


def save(path: Path, model: nn.Module, source: ModelSource, training: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically, creating its directory if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    record = converted_record(
        "checkpoint",
        model,
        arch=source.arch,
        arch_kwargs=source.arch_kwargs,
        config=source.config,
        training={**training, "trusted": source.trusted, "init": source.init},
    )
    return atomic_save(record, path)


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete step checkpoints in ``run_dir``, oldest first."""
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        match = STEP_PATTERN.match(p.name)
        if match and p.is_file():
            found.append((int(match.group(1)), p))
    return sorted(found)


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``best.pt`` is separate)."""
    for _, path in step_checkpoints(run_dir)[:-keep]:
        with contextlib.suppress(OSError):
            path.unlink()


def resolve_resume(resume: str | Path, run_dir: Path | None) -> Path:
    """``"latest"`` -> the newest step checkpoint in ``run_dir``; a run directory -> its newest;
    otherwise the given file."""
    if str(resume) == "latest":
        if run_dir is None:
            raise ResumeError("--resume latest needs the run directory: give --out DIR")
        found = step_checkpoints(run_dir)
        if not found:
            raise ResumeError(
                f"--resume latest: no checkpoint (ckpt-*.pt) in run directory {run_dir}"
            )
        return found[-1][1]
    path = Path(resume)
    if path.is_dir():
        return resolve_resume("latest", path)
    if not path.is_file():
        raise ResumeError(f"--resume {str(resume)!r}: no such checkpoint file or run directory")
    return path


def load(path: Path) -> ModelFile:
    """A harness checkpoint (read like every other file: ``weights_only=True``)."""
    try:
        file = read(path)
    except UabnnError as exc:
        raise ResumeError(f"cannot resume: {exc}") from None
    if file.kind != "checkpoint" or not isinstance(file.record.get("training"), Mapping):
        raise ResumeError(
            f"{path} is a {file.kind.replace('_', ' ')}, not a checkpoint of this harness; give "
            "it to --init to start a new run from it"
        )
    return file


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
