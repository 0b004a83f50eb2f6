"""The c-sign rule as functions of tensors: the maths both update paths share.

Everything here is a pure function of the window, the current latent and the site's scalars,
written as tensor operations. :class:`~.csign.CSign` uses them in two ways that make the same
decisions, bit for bit: the *dense* update evaluates the whole rule for every element with no
host read at all (``torch.compile``, ``torch.export``, CUDA), the *sparse* update finds the few
elements whose sign changed and evaluates the rule for them alone, falling back to the same
full-site arrays (:func:`window_L`, :func:`order_statistic`) whenever a bound does not settle a
decision.

Notation: ``ℓ(x) = log(1 - f(x))`` with ``f`` the peak-normalised Gaussian, so that
``f̂_t = 1 - exp(L_t)`` with ``L_t = Σ ℓ(x_i)`` over the window; ``f̂`` is decreasing in ``L``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# Elements processed at once by the full-site scans (bounded temporary memory for any size).
CHUNK = 1 << 20
SMALL_CHUNK = 1 << 17
# Relative safety margin of the bound tests: a borderline element goes to the exact fallback.
MARGIN = 1e-9


def log1mexp(z: Tensor) -> Tensor:
    """``log(1 - exp(-z))`` for ``z >= 0``, accurate for tiny and for large ``z``."""
    small = z < math.log(2.0)
    return torch.where(small, torch.log(-torch.expm1(-z)), torch.log1p(-torch.exp(-z)))


def log_certainty(x: Tensor, sigma: float | Tensor) -> Tensor:
    """``ℓ(x) = log(1 - f(x))`` for the peak-normalised Gaussian ``f``, in float64."""
    x = x.to(torch.float64)
    return log1mexp(x * x / (2.0 * sigma * sigma))


def window_log(terms: Sequence[Tensor], sigma: float | Tensor) -> Tensor:
    """``L = Σ ℓ(x_i)`` over window terms, oldest first, always summed in the same order."""
    total = log_certainty(terms[0], sigma)
    for v in terms[1:]:
        total = total + log_certainty(v, sigma)
    return total


def abs_for_log(v: Tensor, sigma: float | Tensor) -> Tensor:
    """Inverse of ``ℓ`` on ``|x|``: the magnitude whose ``ℓ`` equals ``v`` (``v <= 0``).

    ``ℓ(a) = log(1 - exp(-a²/2σ²))`` gives ``a = σ·sqrt(-2·log(1 - exp(v)))``, and
    ``log(1 - exp(v))`` is ``log1mexp(-v)``; ``-inf`` maps to 0 and 0 to ``inf``.
    """
    v = v.to(torch.float64)
    return sigma * torch.sqrt(-2.0 * log1mexp(-v))


def window_rows(window: Tensor, t0: int | Tensor, m: int) -> list[Tensor]:
    """The stored window terms of update ``t = t0 + 1``, oldest first: ``x_{t-m} … x_{t-1}``.

    ``window`` is ``(m + 1, N)``; ``x_i`` lives in row ``(i - 1) % (m + 1)``, so the rows wanted
    start after the one that ``x_t`` will overwrite (row ``t0 % (m + 1)``, holding
    ``x_{t-m-1}``). ``t0`` may be a tensor: the rows are then gathered without a host read.
    """
    m1 = m + 1
    if isinstance(t0, Tensor):
        index = torch.remainder(t0 + 1 + torch.arange(m, device=window.device), m1)
        picked = window.index_select(0, index)
        return [picked[i] for i in range(m)]
    return [window[(t0 + 1 + i) % m1] for i in range(m)]


def window_L(window: Tensor, t0: int | Tensor, m: int, x: Tensor, sigma: float | Tensor) -> Tensor:
    """``L_t`` of every element for update ``t = t0 + 1 > m`` (float64, full site).

    The one computation of full-site ``L`` that both update paths use, so that their exact
    decisions are made on identical arrays.
    """
    return window_log([*window_rows(window, t0, m), x], sigma)


def order_statistic(values: Tensor, rank: int) -> Tensor:
    """The ``rank``-th smallest of ``values`` (1-based), as a 0-d tensor, with no host read.

    The CPU uses ``kthvalue`` (linear time). Elsewhere ``kthvalue`` runs one thread block per
    slice, which is slow for one large slice, so a full radix sort is used instead.
    """
    flat = values.reshape(-1)
    if flat.device.type == "cpu":
        return torch.kthvalue(flat, rank).values
    return torch.sort(flat).values[rank - 1]


def count_above(
    chunks: Callable[[int, int], Tensor], numel: int, thresholds: Tensor, k: int
) -> Tensor:
    """For each threshold ``v``, whether at least ``k`` elements are strictly above ``v``.

    ``chunks(lo, hi)`` yields the values of elements ``lo..hi-1`` (computed on demand, so a
    bound or a log value is never materialised for the whole site). Stops as soon as every
    answer is known, which for the usual near-zero candidates is after a small prefix.
    Returns a bool tensor aligned with ``thresholds``.
    """
    if thresholds.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=thresholds.device)
    # Counts fall as the threshold rises: when the largest threshold already has k elements
    # above it, every answer is yes. This settles the usual case from a small prefix.
    top = thresholds.max()
    seen = 0
    for lo in range(0, numel, SMALL_CHUNK):
        hi = min(numel, lo + SMALL_CHUNK)
        seen += int((chunks(lo, hi) > top).sum())
        if seen >= k:
            return torch.ones_like(thresholds, dtype=torch.bool)
        if seen + numel - hi < k:
            break
    order = torch.argsort(thresholds)
    v = thresholds[order]
    counts = torch.zeros(v.numel() + 1, dtype=torch.int64, device=v.device)
    answer = torch.zeros(v.numel(), dtype=torch.bool, device=v.device)
    for lo in range(0, numel, CHUNK):
        hi = min(numel, lo + CHUNK)
        vals = chunks(lo, hi).to(v.dtype)
        # r = number of thresholds strictly below each value; value > v_j  <=>  j < r.
        r = torch.searchsorted(v, vals, side="left")
        counts += torch.bincount(r, minlength=v.numel() + 1)
        above = counts.flip(0).cumsum(0).flip(0)[1:]
        answer = above >= k
        if bool((answer | (above + numel - hi < k)).all()):
            break
    out = torch.empty_like(answer)
    out[order] = answer
    return out


# ----------------------------------------------------------------------------- literal density
def density(x: Tensor, sigma: float | Tensor) -> Tensor:
    """The paper's literal Gaussian density ``exp(-x²/2σ²) / (√(2π)·σ)`` (float64)."""
    x = x.to(torch.float64)
    return torch.exp(-x * x / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)


def density_fhat(terms: Sequence[Tensor], sigma: float | Tensor) -> Tensor:
    """``f̂`` evaluated literally from the density: one term as it is, else ``1 - Π(1 - f)``."""
    if len(terms) == 1:
        return density(terms[0], sigma)
    prod = torch.ones_like(terms[0], dtype=torch.float64)
    for v in terms:
        prod = prod * (1 - density(v, sigma))
    return 1 - prod
