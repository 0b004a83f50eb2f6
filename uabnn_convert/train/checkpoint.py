"""Checkpoints: atomic writes, the last K kept, a ``best`` copy, and finding the latest.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (no arbitrary unpickling). It holds the model ``state_dict``
(weights and the c-sign state buffers), optimizer, LR scheduler, AMP scaler when used, epoch and
step, every RNG state (python, numpy, torch, CUDA), the resolved recipe and the metrics history.

Writes go to a temporary file in the same directory, are flushed and fsynced, then renamed over
the final name (and the directory is fsynced), so a crash or SIGKILL leaves either the previous
file or the complete new one, never a truncated checkpoint under a real name.
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

from ..files import atomic_save as _atomic_save
from ..files import atomic_write_text as _atomic_write_text
from .errors import ResumeError

FORMAT = "uabnn_convert.train/1"
STEP_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")
BEST_NAME = "best.pt"


def step_path(run_dir: Path, step: int) -> Path:
    """The file name of the checkpoint taken after optimizer step ``step``."""
    return run_dir / f"ckpt-{step:08d}.pt"


def atomic_save(obj: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` a checkpoint atomically, creating its directory if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(dict(obj), path)


atomic_write_text = _atomic_write_text


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


def resolve_resume(resume: str | Path, run_dir: Path) -> Path:
    """``"latest"`` -> the newest step checkpoint in ``run_dir``; otherwise the given file."""
    if str(resume) == "latest":
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


def load(path: Path) -> dict[str, Any]:
    """Load a harness checkpoint with ``weights_only=True``; a one-line error otherwise."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ResumeError(
            f"{path} is not a uabnn_convert training checkpoint (expected format {FORMAT!r})"
        )
    return ckpt


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
