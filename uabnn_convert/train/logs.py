"""A run's logs: ``metrics.jsonl`` (every record), ``sites.csv`` (per-site flip and veto rates
at each log point) and TensorBoard scalars (``tb/``: loss, accuracy, learning rate, total and
per-site flip and veto rates, Σ f̂), all under the run directory, written by rank 0.

On resume every log is made to agree with the checkpoint: the JSON and CSV logs are rewritten
from the checkpoint's history (dropping what an interrupted process logged after it), and
TensorBoard's ``purge_step`` drops its events from that step on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import append_line, atomic_write_text

METRICS_FILE = "metrics.jsonl"
SITES_FILE = "sites.csv"
SITES_HEADER = "step,epoch,site,flip_rate,vetoed_rate"
TENSORBOARD_DIR = "tb"
_TRAIN_SCALARS = ("loss", "top1", "top5", "lr", "flip_rate", "vetoed_rate", "uncertainty")


class RunLogs:
    """The three logs of one run directory."""

    def __init__(self, run_dir: Path, history: Sequence[Mapping[str, Any]], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        atomic_write_text("".join(json.dumps(r) + "\n" for r in history), run_dir / METRICS_FILE)
        rows = [line for r in history for line in _site_lines(r)]
        atomic_write_text("".join(f"{line}\n" for line in [SITES_HEADER, *rows]), self.sites)
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=step or None)

    @property
    def sites(self) -> Path:
        return self.run_dir / SITES_FILE

    def record(self, rec: Mapping[str, Any]) -> None:
        append_line(json.dumps(rec), self.run_dir / METRICS_FILE)
        for line in _site_lines(rec):
            append_line(line, self.sites)
        step = rec["step"]
        if rec["kind"] == "train":
            for key in _TRAIN_SCALARS:
                if key in rec:
                    self.writer.add_scalar(f"train/{key}", rec[key], step)
            for name, rates in rec.get("sites", {}).items():
                self.writer.add_scalar(f"flip_rate/{name}", rates["flip_rate"], step)
                self.writer.add_scalar(f"vetoed_rate/{name}", rates["vetoed_rate"], step)
        else:
            for key in ("val_loss", "val_top1", "val_top5"):
                self.writer.add_scalar(f"eval/{key.removeprefix('val_')}", rec[key], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _site_lines(rec: Mapping[str, Any]) -> list[str]:
    if rec.get("kind") != "train":
        return []
    return [
        f"{rec['step']},{rec['epoch']},{name},{rates['flip_rate']:.9g},{rates['vetoed_rate']:.9g}"
        for name, rates in rec.get("sites", {}).items()
    ]
