"""Independent float64 references for the c-sign rule, written the straightforward way.

``literal_rule`` evaluates SPEC section 2 exactly as the formulas read (Gaussian f, window
product, k-th smallest f̂ as Δ). ``log_rule`` evaluates the same rule in log space, which is
exact where the literal products saturate near zero. Tests drive them with the module's own
held state, so every decision is compared on the same inputs.
"""

from __future__ import annotations

import math

import torch


def _f(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-(x * x) / (2 * sigma * sigma))


def literal_fhat(hist: list[torch.Tensor], s: int, m: int, sigma: float) -> torch.Tensor:
    """f̂_s from the history ``hist[i-1] = x_i`` (float64)."""
    if s <= m:
        return _f(hist[s - 1], sigma)
    prod = torch.ones_like(hist[0])
    for i in range(s - m, s + 1):
        prod = prod * (1 - _f(hist[i - 1], sigma))
    return 1 - prod


def literal_rule(hist: list[torch.Tensor], t: int, m: int, delta: float, sigma: float):
    """Boolean per element: the flip to sign(x_t) is allowed at update t (t >= 2)."""
    ft = literal_fhat(hist, t, m, sigma)
    fp = literal_fhat(hist, t - 1, m, sigma)
    n = ft.numel()
    k = min(n, max(1, math.ceil(delta * n)))
    threshold = ft.flatten().kthvalue(k).values
    return ft <= torch.maximum(fp, threshold)


def _ell(x: torch.Tensor, sigma: float) -> torch.Tensor:
    z = x * x / (2 * sigma * sigma)
    return torch.where(z < math.log(2), torch.log(-torch.expm1(-z)), torch.log1p(-torch.exp(-z)))


def log_L(hist: list[torch.Tensor], s: int, m: int, sigma: float) -> torch.Tensor:
    if s <= m:
        return _ell(hist[s - 1], sigma)
    total = torch.zeros_like(hist[0])
    for i in range(s - m, s + 1):
        total = total + _ell(hist[i - 1], sigma)
    return total


def threshold_L(lt: torch.Tensor, delta: float, reading: str = "certain") -> torch.Tensor:
    """L at Δ_t: the k-th largest L (Δ = k-th smallest f̂), or with the "uncertain" reading
    the k-th smallest L (Δ = k-th largest f̂)."""
    n = lt.numel()
    k = min(n, max(1, math.ceil(delta * n)))
    if reading == "uncertain":
        return lt.flatten().kthvalue(k).values
    return -((-lt.flatten()).kthvalue(k).values)


def log_rule(
    hist: list[torch.Tensor], t: int, m: int, delta: float, sigma: float, reading: str = "certain"
):
    """The same rule as ``literal_rule`` with f̂ = 1 - exp(L), compared through L."""
    lt = log_L(hist, t, m, sigma)
    lp = log_L(hist, t - 1, m, sigma)
    return lt >= torch.minimum(lp, threshold_L(lt, delta, reading))


def float32_naive_rule(hist: list[torch.Tensor], t: int, m: int, delta: float, sigma: float):
    """The literal rule in float32: what a straightforward implementation would compute."""
    h32 = [h.float() for h in hist]
    return literal_rule(h32, t, m, delta, float(sigma))


class StreamingLogRule:
    """``log_rule`` for long trajectories: keeps only the last m + 2 values of ℓ(x_i)."""

    def __init__(self, m: int, delta: float, reading: str = "certain") -> None:
        self.m, self.delta, self.reading = m, delta, reading
        self.ells: list[torch.Tensor] = []
        self.t = 0

    def _L(self, s: int) -> torch.Tensor:
        offset = self.t - len(self.ells)  # ells[j] holds ℓ(x_{offset + j + 1})
        if s <= self.m:
            return self.ells[s - 1 - offset]
        total = torch.zeros_like(self.ells[-1])
        for i in range(s - self.m, s + 1):
            total = total + self.ells[i - 1 - offset]
        return total

    def step(self, x: torch.Tensor, sigma: float) -> torch.Tensor | None:
        """Add x_t; return the rule's per-element answer for t >= 2."""
        self.t += 1
        self.ells.append(_ell(x.double(), sigma))
        self.ells = self.ells[-(self.m + 2) :]
        if self.t == 1:
            return None
        lt, lp = self._L(self.t), self._L(self.t - 1)
        return lt >= torch.minimum(lp, threshold_L(lt, self.delta, self.reading))
