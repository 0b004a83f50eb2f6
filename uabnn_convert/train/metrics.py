"""Training metrics kept on the device: loss and top-k meters, and flip counters read from the
c-sign sites, summed with tensor ops and read back to the host only at log points (on a GPU
each host read is a sync; a step makes none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..api import sites, stats


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """How many rows have the target among their top-k logits, for each k (k capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


class LossMeter:
    """Sums of loss·n, top-1 and top-5 hits and samples since the last reset (float64)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def add(self, loss: Tensor, logits: Tensor, target: Tensor) -> None:
        n = target.shape[0]
        hits = topk_correct(logits.detach().float(), target).to(torch.float64)
        step = torch.stack([loss.detach().to(torch.float64) * n, hits[0], hits[1]])
        self.sums[:3] += step
        self.sums[3] += n

    def summary(
        self, reduce: Callable[[Tensor], Tensor] | None = None, prefix: str = ""
    ) -> dict[str, float]:
        """Mean loss and top-1/top-5 in percent; ``reduce`` sums the counts over ranks."""
        sums = self.sums if reduce is None else reduce(self.sums.clone())
        loss, c1, c5, n = sums.cpu().tolist()
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
        self.sync()
        self.reset()

    def _read(self, attr: str) -> Tensor:
        if not self.modules:
            return torch.zeros(0, dtype=torch.int64)
        return torch.stack([getattr(s, attr).detach() for s in self.modules])

    def reset(self) -> None:
        device = self.seen.device
        k = len(self.modules)
        self.flips = torch.zeros(k, dtype=torch.int64, device=device)
        self.vetoed = torch.zeros(k, dtype=torch.int64, device=device)
        self.updates = torch.zeros(k, dtype=torch.int64, device=device)

    def sync(self) -> None:
        """Forget updates made before now (after loading a checkpoint)."""
        self.seen = self._read("num_updates")

    def after_step(self) -> None:
        """Add the counters of the update each site made during this step, if it made one."""
        if not self.modules:
            return
        now = self._read("num_updates")
        # The first update only initialises the state: it has no previous sign to flip from.
        counted = (now != self.seen) & (now > 1)
        self.flips += torch.where(counted, self._read("last_flips"), 0)
        self.vetoed += torch.where(counted, self._read("last_vetoed"), 0)
        self.updates += counted.long()
        self.seen = now

    def summary(self) -> dict[str, Any]:
        """Interval flip and veto rates: total and per site (flips / elements / updates)."""
        flips, vetoed, updates = (t.cpu() for t in (self.flips, self.vetoed, self.updates))
        denom = self.numel * updates.double()
        total = float(denom.sum())
        rates = torch.where(denom > 0, flips.double() / denom.clamp(min=1), 0.0)
        vrates = torch.where(denom > 0, vetoed.double() / denom.clamp(min=1), 0.0)
        return {
            "flips": int(flips.sum()),
            "vetoed": int(vetoed.sum()),
            "flip_rate": float(flips.sum()) / total if total else 0.0,
            "vetoed_rate": float(vetoed.sum()) / total if total else 0.0,
            "sites": {
                name: {"flip_rate": float(r), "vetoed_rate": float(v)}
                for name, r, v in zip(self.names, rates, vrates, strict=True)
            },
        }


def uncertainty(model: nn.Module) -> float:
    """Σ f-hat over every site at its last update, for the per-epoch log."""
    return float(stats(model, uncertainty=True).total["uncertainty"])
