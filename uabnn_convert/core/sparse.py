"""Host-side helpers of the sparse update: NumPy on the CPU tensors' own memory.

The sparse update evaluates the rule for the few elements whose sign changed. Each step on
those few is a tiny array operation, where PyTorch's per-call dispatch (several microseconds)
would cost more than the work, so they run in NumPy on zero-copy views of the same memory.
Only the passes over the whole site stay in PyTorch. Nothing here makes an exact decision on
its own: the bounds carry a safety margin, and whatever they leave open is decided on the
full-site arrays of :mod:`.rule`, as the dense update decides it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .rule import CHUNK, MARGIN, SMALL_CHUNK

_LN2 = math.log(2.0)
_SCRATCH: dict[torch.device, Tensor] = {}


def scratch_int8(n: int, device: torch.device) -> Tensor:
    """A reused int8 buffer of at least ``n`` elements (a fresh one would fault its pages in)."""
    buf = _SCRATCH.get(device)
    if buf is None or buf.numel() < n:
        buf = _SCRATCH[device] = torch.empty(n, dtype=torch.int8, device=device)
    return buf[:n]


def sign_changes(signs: Tensor, held: Tensor) -> np.ndarray:
    """Indices where ``signs`` (the float sign of the latent) differs from the int8 ``held``.

    The signs are converted to int8 once and compared eight at a time as int64 words; only the
    few differing words are unpacked.
    """
    n = signs.numel()
    mine_t = scratch_int8(n, signs.device)
    mine_t.copy_(signs)
    mine, theirs = mine_t.numpy(), held.numpy()
    packed = n - n % 8
    found = []
    if packed:
        hot = np.flatnonzero(mine[:packed].view(np.int64) != theirs[:packed].view(np.int64))
        if hot.size:
            rows, cols = np.nonzero(
                mine[:packed].reshape(-1, 8)[hot] != theirs[:packed].reshape(-1, 8)[hot]
            )
            found.append(hot[rows] * 8 + cols)
    if packed < n:
        found.append(np.flatnonzero(mine[packed:] != theirs[packed:]) + packed)
    if not found:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(found) if len(found) > 1 else found[0]


def host(t: Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (a float32 copy for dtypes NumPy lacks, e.g. bfloat16)."""
    if t.dtype == torch.bfloat16:
        return t.to(torch.float32).numpy()
    return t.numpy()


def log1mexp(z: np.ndarray) -> np.ndarray:
    """``log(1 - exp(-z))`` for ``z >= 0`` (NumPy twin of :func:`.rule.log1mexp`)."""
    with np.errstate(divide="ignore"):
        return np.where(z < _LN2, np.log(-np.expm1(-z)), np.log1p(-np.exp(-z)))


def log_certainty(x: np.ndarray, sigma: float) -> np.ndarray:
    x = x.astype(np.float64)
    return log1mexp(x * x / (2.0 * sigma * sigma))


def window_log(terms: list[np.ndarray], sigma: float) -> np.ndarray:
    total = log_certainty(terms[0], sigma)
    for v in terms[1:]:
        total = total + log_certainty(v, sigma)
    return total


def abs_for_log(v: np.ndarray, sigma: float) -> np.ndarray:
    """The magnitude whose ``ℓ`` equals ``v`` (``v <= 0``); ``-inf`` maps to 0, 0 to ``inf``."""
    return sigma * np.sqrt(-2.0 * log1mexp(-v.astype(np.float64)))


def count_above(
    chunks: Callable[[int, int], np.ndarray], numel: int, thresholds: np.ndarray, k: int
) -> np.ndarray:
    """For each threshold ``v``: are at least ``k`` elements strictly above it?

    ``chunks(lo, hi)`` gives the values of elements ``lo..hi-1`` on demand. When the largest
    threshold already has ``k`` elements above it every answer is yes, which for the usual
    near-zero candidates is settled by a prefix a little longer than ``k``; otherwise the
    values are counted against every threshold at once until each answer is known.
    """
    if thresholds.size == 0:
        return np.zeros(0, dtype=bool)
    top = thresholds.max()
    seen, lo = 0, 0
    while lo < numel:
        hi = min(numel, lo + max(SMALL_CHUNK, k + k // 16 - seen))
        seen += int(np.count_nonzero(chunks(lo, hi) > top))
        if seen >= k:
            return np.ones(thresholds.size, dtype=bool)
        if seen + numel - hi < k:
            break
        lo = hi
    order = np.argsort(thresholds, kind="stable")
    v = thresholds[order]
    counts = np.zeros(v.size + 1, dtype=np.int64)
    answer = np.zeros(v.size, dtype=bool)
    for lo in range(0, numel, CHUNK):
        hi = min(numel, lo + CHUNK)
        # r = number of thresholds strictly below each value; value > v_j  <=>  j < r.
        r = np.searchsorted(v, chunks(lo, hi), side="left")
        counts += np.bincount(r, minlength=v.size + 1)
        above = np.cumsum(counts[::-1])[::-1][1:]
        answer = above >= k
        if (answer | (above + numel - hi < k)).all():
            break
    out = np.empty_like(answer)
    out[order] = answer
    return out


def min_abs(rows: list[np.ndarray]) -> Callable[[int, int], np.ndarray]:
    """``chunks(lo, hi)`` of ``min_i |row_i|`` over the given rows."""

    def chunk(lo: int, hi: int) -> np.ndarray:
        a = np.abs(rows[0][lo:hi])
        for row in rows[1:]:
            np.minimum(a, np.abs(row[lo:hi]), out=a)
        return a

    return chunk


def bound_decisions(
    rows: list[np.ndarray], idx: np.ndarray, sigma: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Settle ``count(L_i > L_j) < k`` for elements ``idx`` from bounds on the window.

    ``rows`` are the window's terms, oldest first, the current latent last. For every element
    ``(m+1)·ℓ(min|x|) <= L <= ℓ(min|x|)``: a candidate is surely held back when ``k``
    elements' lower bounds beat its ``L``, surely let through when fewer than ``k`` upper
    bounds do. Returns ``(decided, allowed)``; the undecided go to the exact count.
    """
    n, terms = rows[0].size, len(rows)
    log_c = window_log([row[idx] for row in rows], sigma)
    chunks = min_abs(rows)
    decided = count_above(chunks, n, abs_for_log(log_c / terms, sigma) * (1 + MARGIN), k)
    allowed = np.zeros(idx.size, dtype=bool)
    open_ = np.flatnonzero(~decided)
    if open_.size:
        allow_at = abs_for_log(log_c[open_], sigma) * (1 - MARGIN)
        sure = ~count_above(chunks, n, allow_at, k)
        allowed[open_[sure]] = True
        decided[open_[sure]] = True
    return decided, allowed
