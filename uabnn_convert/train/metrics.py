"""Training metrics: loss and top-k meters, and flip counters read from the c-sign sites.

Flips are counted per update from each site's own counters (``uabnn_convert.sites``): cheap
scalar reads every step, summed over a log interval. The sum of f-hat (the paper's
"uncertainty of the network") costs a pass over every site's window, so it is computed through
``uabnn_convert.stats`` only at log points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..api import sites, stats


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have the target among their top-k logits, for each k (k capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class LossMeter:
    """Sums of loss, top-1 and top-5 hits and samples since the last reset (float64 sums)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = [0.0, 0.0, 0.0, 0.0]  # loss * n, top-1 hits, top-5 hits, n

    def add(self, loss: Tensor, logits: Tensor, target: Tensor) -> None:
        n = target.shape[0]
        c1, c5 = topk_correct(logits.float(), target)
        self.sums[0] += float(loss) * n
        self.sums[1] += c1
        self.sums[2] += c5
        self.sums[3] += n

    def summary(
        self, reduce: Callable[[Tensor], Tensor] | None = None, prefix: str = ""
    ) -> dict[str, float]:
        """Mean loss and top-1/top-5 in percent; ``reduce`` sums the counts over ranks."""
        sums = torch.tensor(self.sums, dtype=torch.float64)
        if reduce is not None:
            sums = reduce(sums)
        loss, c1, c5, n = sums.tolist()
        n = max(n, 1.0)
        return {
            f"{prefix}loss": loss / n,
            f"{prefix}top1": 100.0 * c1 / n,
            f"{prefix}top5": 100.0 * c5 / n,
        }


class FlipMeter:
    """Flips and vetoed flips per site, summed over the updates since the last reset.

    An update is counted when a site's ``num_updates`` advanced since the previous read, so a
    step that did not change a site's latent weights (a frozen layer) is not counted twice.
    """

    def __init__(self, model: nn.Module) -> None:
        pairs = list(sites(model))
        self.names = [name for name, _ in pairs]
        self.modules = [site for _, site in pairs]
        self.numel = torch.tensor([s.numel for s in self.modules], dtype=torch.float64)
        self.seen = self._read("num_updates")
        self.reset()

    def _read(self, attr: str) -> Tensor:
        if not self.modules:
            return torch.zeros(0, dtype=torch.int64)
        return torch.stack([getattr(s, attr).detach().cpu() for s in self.modules])

    def reset(self) -> None:
        k = len(self.modules)
        self.flips = torch.zeros(k, dtype=torch.int64)
        self.vetoed = torch.zeros(k, dtype=torch.int64)
        self.updates = torch.zeros(k, dtype=torch.int64)

    def sync(self) -> None:
        """Forget updates made before now (after loading a checkpoint)."""
        self.seen = self._read("num_updates")

    def after_step(self) -> None:
        """Add the counters of the update each site made during this step, if it made one."""
        if not self.modules:
            return
        now = self._read("num_updates")
        advanced = now != self.seen
        # The first update only initialises the state: it has no previous sign to flip from.
        counted = advanced & (now > 1)
        self.flips += torch.where(counted, self._read("last_flips"), 0)
        self.vetoed += torch.where(counted, self._read("last_vetoed"), 0)
        self.updates += counted.long()
        self.seen = now

    def summary(self) -> dict[str, Any]:
        """Interval flip and veto rates: total and per site (flips / elements / updates)."""
        denom = self.numel * self.updates.double()
        total = float(denom.sum())
        rates = torch.where(denom > 0, self.flips.double() / denom.clamp(min=1), 0.0)
        vrates = torch.where(denom > 0, self.vetoed.double() / denom.clamp(min=1), 0.0)
        return {
            "flips": int(self.flips.sum()),
            "vetoed": int(self.vetoed.sum()),
            "flip_rate": float(self.flips.sum()) / total if total else 0.0,
            "vetoed_rate": float(self.vetoed.sum()) / total if total else 0.0,
            "sites": {
                name: {"flip_rate": float(r), "vetoed_rate": float(v)}
                for name, r, v in zip(self.names, rates, vrates, strict=True)
            },
        }


def uncertainty(model: nn.Module) -> float:
    """Σ f-hat over every site at its last update (``uabnn_convert.stats(model).total``)."""
    return float(stats(model).total["uncertainty"])
