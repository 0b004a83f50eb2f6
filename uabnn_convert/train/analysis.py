"""Run analysis: what a harness run's metrics log says, per epoch and in total.

Shared by the demo, the experiments and the ``plot`` command: flip and veto rates as exact
per-update averages (log intervals weighted by the updates they cover, so they do not depend on
how often a run logged), final accuracy, Σ f̂, and a hash of a state_dict for exact-resume checks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def _counted_updates(history: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], int]]:
    """Each train record with the number of updates its flip counters cover.

    The harness logs flips over the steps since the previous log point; the very first update
    of a fresh c-sign state only initialises it (there is no earlier sign to flip from), so it
    is not counted. Every run here starts from a fresh state (``model.init`` is a plain
    state_dict), hence the ``- 1`` on the first interval.
    """
    out = []
    previous = 0
    for rec in history:
        if rec.get("kind") != "train":
            continue
        n = rec["step"] - previous - (1 if previous == 0 else 0)
        out.append((rec, max(n, 0)))
        previous = rec["step"]
    return out


def _weighted(pairs: Sequence[tuple[Mapping[str, Any], int]], key: str) -> float:
    total = sum(n for _, n in pairs)
    if total == 0:
        return 0.0
    return sum(rec[key] * n for rec, n in pairs) / total


def epoch_curve(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch of a harness run: flip and veto rates per update, flips, test accuracy, Σ f̂.

    Rates are exact per-update averages over the epoch (log intervals weighted by the updates
    they cover), so they do not depend on how often the run logged.
    """
    counted = _counted_updates(history)
    evals = {r["epoch"]: r for r in history if r.get("kind") == "eval"}
    epochs = sorted({rec["epoch"] for rec, _ in counted})
    curve = []
    for e in epochs:
        pairs = [(rec, n) for rec, n in counted if rec["epoch"] == e]
        curve.append(
            {
                "epoch": e + 1,
                "flip_rate": _weighted(pairs, "flip_rate"),
                "vetoed_rate": _weighted(pairs, "vetoed_rate"),
                "flips": sum(rec["flips"] for rec, _ in pairs),
                "vetoed": sum(rec["vetoed"] for rec, _ in pairs),
                "uncertainty": pairs[-1][0]["uncertainty"],
                "val_top1": evals[e]["val_top1"] if e in evals else math.nan,
            }
        )
    return curve


def run_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One run in numbers: final test accuracy, mean and last-epoch flip rate, flips, Σ f̂."""
    counted = _counted_updates(history)
    evals = [r for r in history if r.get("kind") == "eval"]
    curve = epoch_curve(history)
    return {
        "test_top1": evals[-1]["val_top1"] if evals else math.nan,
        "test_loss": evals[-1]["val_loss"] if evals else math.nan,
        "mean_flip_rate": _weighted(counted, "flip_rate"),
        "mean_vetoed_rate": _weighted(counted, "vetoed_rate"),
        "last_epoch_flip_rate": curve[-1]["flip_rate"] if curve else math.nan,
        "flips": sum(rec["flips"] for rec, _ in counted),
        "vetoed": sum(rec["vetoed"] for rec, _ in counted),
        "uncertainty": counted[-1][0]["uncertainty"] if counted else math.nan,
        "updates": counted[-1][0]["step"] if counted else 0,
    }


def state_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every key, dtype, shape and raw byte of a state_dict (order-independent)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
