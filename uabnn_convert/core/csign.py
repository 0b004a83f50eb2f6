"""The certainty-sign (c-sign) of one weight-sign site: its maths, its state, and when it advances.

The rule (SPEC section 2, paper Eq. 3-5) is evaluated exactly rather than literally:

* The window comparison ``f̂_t <= f̂_{t-1}`` is decided on ``|x|`` (paper Eq. 6) whenever both
  sides have the same number of terms. ``f`` is strictly decreasing in ``|x|``, so this is the
  exact answer in any precision, and it needs no ``exp``/``log`` at all.
* Where the window has a different number of terms on both sides (the single update
  ``t = m + 1``) and for the threshold ``Δ_t``, the comparison is done in log space,
  ``L = Σ log(1 - f(x_i))`` with ``f̂ = 1 - exp(L)``, in float64 with a stable ``log1mexp``.
  A float32 ``1 - Π(1 - f)`` rounds near-zero weights (``f ≈ 1``) together and decides wrongly.
* ``Δ_t`` only matters for a flip the window test vetoes. Such flips are few and sit near zero,
  far from the ``delta`` most certain weights; bounds on each weight's window settle them
  (``(m+1)·ℓ(min|x|) <= L <= ℓ(min|x|)``) and an exact count of larger ``L`` is the fallback.
  Nothing sorts or selects over the whole site, so the size of the layer is not limited.

State lives in registered buffers so ``state_dict``, ``.to()``, ``deepcopy`` and DDP treat it
like any other buffer. The held binary state is an ``int8`` buffer: utilities that average float
buffers (model EMA) copy it unchanged, so an averaged model still holds a valid binary state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .settings import SiteSettings

# Elements processed at once by the full-site scans (bounded temporary memory for any size).
_CHUNK = 1 << 20
_SMALL_CHUNK = 1 << 16
# Relative safety margin for the bound tests: a borderline element goes to the exact fallback.
_MARGIN = 1e-9


def log1mexp(z: Tensor) -> Tensor:
    """``log(1 - exp(-z))`` for ``z >= 0``, accurate for tiny and for large ``z``."""
    small = z < math.log(2.0)
    return torch.where(small, torch.log(-torch.expm1(-z)), torch.log1p(-torch.exp(-z)))


def log_certainty(x: Tensor, sigma: float) -> Tensor:
    """``ℓ(x) = log(1 - f(x))`` for the peak-normalised Gaussian ``f``, in float64."""
    x = x.to(torch.float64)
    return log1mexp(x * x / (2.0 * sigma * sigma))


def window_log(terms: Sequence[Tensor], sigma: float) -> Tensor:
    """``L = Σ ℓ(x_i)`` over window terms, oldest first, always summed in the same order.

    The same order everywhere makes an element's ``L`` bit-identical whether it is computed for
    a few candidates or for a chunk of the site, so an element never outranks itself.
    """
    total = log_certainty(terms[0], sigma)
    for v in terms[1:]:
        total = total + log_certainty(v, sigma)
    return total


def _abs_for_log(v: Tensor, sigma: float) -> Tensor:
    """Inverse of ``ℓ`` on ``|x|``: the magnitudes whose ``ℓ`` equals ``v`` (``v <= 0``).

    ``ℓ(a) = log(1 - exp(-a²/2σ²))`` gives ``a = σ·sqrt(-2·log(1 - exp(v)))``, and
    ``log(1 - exp(v))`` is ``log1mexp(-v)``; ``-inf`` maps to 0 and 0 to ``inf``.
    """
    v = v.to(torch.float64)
    return sigma * torch.sqrt(-2.0 * log1mexp(-v))


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
    for lo in range(0, numel, _SMALL_CHUNK):
        hi = min(numel, lo + _SMALL_CHUNK)
        seen += int((chunks(lo, hi) > top).sum())
        if seen >= k:
            return torch.ones_like(thresholds, dtype=torch.bool)
        if seen + numel - hi < k:
            break
    order = torch.argsort(thresholds)
    v = thresholds[order]
    counts = torch.zeros(v.numel() + 1, dtype=torch.int64, device=v.device)
    done = torch.zeros(v.numel(), dtype=torch.bool, device=v.device)
    answer = torch.zeros(v.numel(), dtype=torch.bool, device=v.device)
    for lo in range(0, numel, _CHUNK):
        hi = min(numel, lo + _CHUNK)
        vals = chunks(lo, hi).to(v.dtype)
        # r = number of thresholds strictly below each value; value > v_j  <=>  j < r.
        r = torch.searchsorted(v, vals, side="left")
        counts += torch.bincount(r, minlength=v.numel() + 1)
        above = counts.flip(0).cumsum(0).flip(0)[1:]
        remaining = numel - hi
        answer = above >= k
        done = answer | (above + remaining < k)
        if bool(done.all()):
            break
    out = torch.empty_like(answer)
    out[order] = answer
    return out


class _SignLikeGrad(torch.autograd.Function):
    """Return a precomputed binary value with the gradient ``torch.sign`` has (zeros)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, value: Tensor) -> Tensor:
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return torch.zeros_like(grad), None


class CSign(nn.Module):
    """Stateful c-sign of one site: call it with the latent tensor, get the binary value.

    In training mode each call whose latent differs from the newest one in the window is one
    update (SPEC section 3). Change is detected by comparing values, not ``_version``: old BNN
    code writes ``p.data.add_()`` / ``p.data.clamp_()``, which does not bump the version counter,
    and the newest latent is already kept for the window, so the check needs no extra copy.
    Gradient-accumulation micro-batches, a checkpoint recompute or a second forward before
    ``optimizer.step()`` see an unchanged latent and do not advance.
    """

    def __init__(
        self,
        shape: Sequence[int] | torch.Size,
        *,
        m: int = SiteSettings.m,
        delta: float = SiteSettings.delta,
        sigma: str | float = SiteSettings.sigma,
        uncertainty: str = SiteSettings.uncertainty,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        site: str = "c-sign site",
    ) -> None:
        super().__init__()
        settings = SiteSettings(m, delta, sigma, uncertainty)
        if not dtype.is_floating_point:
            raise ValueError(f"{site}: the latent dtype must be floating point, got {dtype}")
        self.shape = torch.Size(shape)
        self.m = settings.m
        self.delta = settings.delta
        self.sigma = settings.sigma
        self.uncertainty = settings.uncertainty
        self.site = site
        self.register_buffer(
            "window", torch.zeros(self.m + 1, *self.shape, dtype=dtype, device=device)
        )
        self.register_buffer("held", torch.zeros(self.shape, dtype=torch.int8, device=device))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("sigma_value", torch.zeros((), dtype=torch.float64, device=device))
        self.register_buffer("last_flips", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("last_vetoed", torch.zeros((), dtype=torch.int64, device=device))

    # ----------------------------------------------------------------- public surface
    @property
    def numel(self) -> int:
        return self.held.numel()

    @property
    def k(self) -> int:
        """How many of the most certain elements may always flip (``ceil(delta · N)``)."""
        n = self.numel
        return min(n, max(1, math.ceil(self.delta * n)))

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.shape)}, m={self.m}, delta={self.delta}, sigma={self.sigma!r}"
            + (f", uncertainty={self.uncertainty!r}" if self.uncertainty != "gaussian" else "")
        )

    def settings(self) -> dict[str, Any]:
        return SiteSettings(self.m, self.delta, self.sigma, self.uncertainty).to_dict()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape != self.shape:
            raise RuntimeError(
                f"{self.site}: latent shape {tuple(x.shape)} differs from the shape "
                f"{tuple(self.shape)} this c-sign state was built for"
            )
        if self.training and self._changed(x):
            self.advance(x)
        value = self.binary(x)
        if x.requires_grad and torch.is_grad_enabled():
            return _SignLikeGrad.apply(x, value)
        return value

    def binary(self, x: Tensor | None = None) -> Tensor:
        """The current binary value: the held state, or ``sign(x)`` before the first update."""
        if int(self.num_updates) == 0:
            if x is None:
                raise RuntimeError(f"{self.site}: no update yet, so no held state to read")
            return torch.sign(x.detach())
        dtype = x.dtype if x is not None else self.window.dtype
        return self.held.to(dtype)

    def uncertainty_sum(self) -> float:
        """Σ f̂_t over the site at the last update: the paper's "uncertainty of the network"."""
        t = int(self.num_updates)
        if t == 0:
            return 0.0
        if self.uncertainty == "density":
            return float(self._literal_fhat(t).sum())
        sigma = float(self.sigma_value)
        total = 0.0
        for lo, hi in _ranges(self.numel):
            total += float((-torch.expm1(self._log_window(t, lo, hi, sigma))).sum())
        return total

    @torch.no_grad()
    def advance(self, x: Tensor) -> None:
        """Perform one update with latent ``x`` (normally called from ``forward``)."""
        t = int(self.num_updates) + 1
        xd = x.detach().to(self.window.dtype)
        if not _all_finite(xd):
            raise FloatingPointError(
                f"{self.site}: non-finite latent values at update {t}; "
                "the c-sign state is left as it was"
            )
        m1 = self.m + 1
        slot = (t - 1) % m1
        if t == 1:
            sigma = self._resolve_sigma(xd)
            self.held.copy_(torch.sign(xd).to(torch.int8))
            self.window[slot].copy_(xd)
            self.sigma_value.fill_(sigma)
            self.last_flips.zero_()
            self.last_vetoed.zero_()
            self.num_updates.fill_(1)
            return
        flat = xd.reshape(-1)
        held = self.held.reshape(-1)
        cand = _sign_changes(flat, held)
        allowed = self._decide(t, slot, flat, cand)
        flips = cand[allowed]
        held.index_copy_(0, flips, torch.sign(flat.index_select(0, flips)).to(torch.int8))
        self.window[slot].copy_(xd)
        self.last_flips.fill_(flips.numel())
        self.last_vetoed.fill_(cand.numel() - flips.numel())
        self.num_updates.fill_(t)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
    ):
        # A state_dict saved before conversion has no c-sign keys: that means a fresh state.
        keys = [prefix + name for name in self._buffers]
        if not any(k in state_dict for k in keys):
            for name, buf in self._buffers.items():
                state_dict[prefix + name] = torch.zeros_like(buf)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing, unexpected, errors
        )

    # ----------------------------------------------------------------- internals
    def _changed(self, x: Tensor) -> bool:
        t = int(self.num_updates)
        if t == 0:
            return True
        newest = self.window[(t - 1) % (self.m + 1)]
        return not torch.equal(x.detach().to(newest.dtype), newest)

    def _resolve_sigma(self, x: Tensor) -> float:
        if not isinstance(self.sigma, str):
            return self.sigma
        xd = x.to(torch.float64)
        spread = float(xd.std(unbiased=False)) if xd.numel() > 1 else 0.0
        value = spread if self.sigma == "std" else spread * spread
        if value <= 0.0 or not math.isfinite(value):
            value = float(xd.abs().mean())
        if value <= 0.0:
            raise ValueError(
                f"{self.site}: sigma={self.sigma!r} resolves to 0 at update 1 (the latent is all "
                "zeros); give sigma as a positive number"
            )
        return value

    def _slot_of(self, t: int, i: int) -> int:
        """Ring-buffer slot holding ``x_i`` (valid for ``t - m <= i <= t``)."""
        return (i - 1) % (self.m + 1)

    def _window_terms(self, t: int, lo: int, hi: int) -> list[Tensor]:
        """Latent values ``x_i`` in the window of update ``t``, for elements ``lo..hi-1``."""
        first = max(1, t - self.m) if t > self.m else t
        return [self.window[self._slot_of(t, i)].reshape(-1)[lo:hi] for i in range(first, t + 1)]

    def _log_window(self, t: int, lo: int, hi: int, sigma: float) -> Tensor:
        """``L_t = log(1 - f̂_t)`` of elements ``lo..hi-1`` from the stored window."""
        return window_log(self._window_terms(t, lo, hi), sigma)

    def _decide(self, t: int, slot: int, flat: Tensor, cand: Tensor) -> Tensor:
        """Which candidate flips the rule allows at update ``t`` (before the window is written)."""
        if cand.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=flat.device)
        if self.uncertainty == "density":
            return self._literal_decide(t, slot, flat, cand)
        m, sigma = self.m, float(self.sigma_value)
        xc = flat.index_select(0, cand)
        win = self.window.reshape(self.m + 1, -1)
        if t <= m or m == 0:
            prev = win[(t - 2) % (m + 1)].index_select(0, cand)
            allowed = xc.abs() >= prev.abs()
        elif t == m + 1:
            terms = [win[i].index_select(0, cand) for i in range(m)] + [xc]
            allowed = window_log(terms, sigma) >= log_certainty(terms[m - 1], sigma)
        else:
            oldest = win[slot].index_select(0, cand)
            allowed = xc.abs() >= oldest.abs()
            for i in range(m + 1):
                if i != slot:
                    allowed |= win[i].index_select(0, cand) == 0
        pending = (~allowed).nonzero().squeeze(1)
        if pending.numel() and self.k < self.numel:
            allowed[pending] = self._within_threshold(t, slot, flat, cand.index_select(0, pending))
        elif pending.numel():
            allowed[pending] = True
        return allowed

    def _within_threshold(self, t: int, slot: int, flat: Tensor, idx: Tensor) -> Tensor:
        """``f̂_t <= Δ_t`` for elements ``idx``: fewer than ``k`` elements are more certain."""
        k, n, sigma, m = self.k, self.numel, float(self.sigma_value), self.m
        if t <= m or m == 0:
            # A single term: L is ordered like |x_t|, so count larger magnitudes exactly.
            absx = flat.abs()
            more = count_above(lambda lo, hi: absx[lo:hi], n, absx.index_select(0, idx), k)
            return ~more
        win = self.window.reshape(m + 1, -1)
        # The window of update t, oldest first: x_{t-m} .. x_{t-1} from the ring, then x_t.
        others = [win[self._slot_of(t, i)] for i in range(t - m, t)]

        def min_abs(lo: int, hi: int) -> Tensor:
            a = flat[lo:hi].abs()
            for w in others:
                a = torch.minimum(a, w[lo:hi].abs())
            return a

        terms = [w.index_select(0, idx) for w in others] + [flat.index_select(0, idx)]
        log_c = window_log(terms, sigma)
        decided = torch.zeros(idx.numel(), dtype=torch.bool, device=flat.device)
        result = torch.zeros(idx.numel(), dtype=torch.bool, device=flat.device)
        # Sure veto: k elements whose lower bound (m+1)·ℓ(min|x|) already beats L_j.
        veto_at = _abs_for_log(log_c / (m + 1), sigma) * (1 + _MARGIN)
        sure_veto = count_above(min_abs, n, veto_at, k)
        decided |= sure_veto
        # Sure allow: fewer than k elements whose upper bound ℓ(min|x|) beats L_j.
        open_ = (~decided).nonzero().squeeze(1)
        if open_.numel():
            allow_at = _abs_for_log(log_c[open_], sigma) * (1 - _MARGIN)
            sure_allow = ~count_above(min_abs, n, allow_at, k)
            result[open_[sure_allow]] = True
            decided[open_[sure_allow]] = True
        open_ = (~decided).nonzero().squeeze(1)
        if open_.numel():
            # Exact fallback: L of every element, counted in chunks.
            def log_all(lo: int, hi: int) -> Tensor:
                return window_log([w[lo:hi] for w in others] + [flat[lo:hi]], sigma)

            result[open_] = ~count_above(log_all, n, log_c[open_], k)
        return result

    # The literal density form is an opt-in for experiments; it is evaluated as written.
    def _literal_f(self, x: Tensor, sigma: float) -> Tensor:
        x = x.to(torch.float64)
        return torch.exp(-x * x / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)

    def _literal_fhat_terms(self, terms: list[Tensor], sigma: float) -> Tensor:
        if len(terms) == 1:
            return self._literal_f(terms[0], sigma)
        prod = torch.ones_like(terms[0], dtype=torch.float64)
        for v in terms:
            prod = prod * (1 - self._literal_f(v, sigma))
        return 1 - prod

    def _literal_fhat(self, t: int) -> Tensor:
        return self._literal_fhat_terms(
            self._window_terms(t, 0, self.numel), float(self.sigma_value)
        )

    def _literal_decide(self, t: int, slot: int, flat: Tensor, cand: Tensor) -> Tensor:
        sigma, m = float(self.sigma_value), self.m
        win = self.window.reshape(m + 1, -1)
        cur = [win[self._slot_of(t, i)] for i in range(max(1, t - m), t)] + [flat]
        cur = cur[-1:] if t <= m else cur
        fhat_t = self._literal_fhat_terms(cur, sigma)
        prev = self._literal_fhat(t - 1).reshape(-1)
        delta_t = torch.kthvalue(fhat_t.cpu(), self.k).values.to(fhat_t.device)
        ok = fhat_t <= torch.maximum(prev, delta_t)
        return ok.index_select(0, cand)


def _ranges(n: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, _CHUNK):
        yield lo, min(n, lo + _CHUNK)


def _sign_changes(flat: Tensor, held: Tensor) -> Tensor:
    """Indices where ``sign(x)`` differs from the held state, found chunk by chunk.

    Few elements change sign per update, so the scan is the cost. The signs are compared as
    packed words (eight int8 signs per int64), and only the few differing words are unpacked;
    small reused scratch buffers keep the scan in cache and off freshly faulted pages.
    """
    n = flat.numel()
    size = min(n, _CHUNK)
    signs = torch.empty(size, dtype=flat.dtype, device=flat.device)
    signs8 = torch.empty(size, dtype=torch.int8, device=flat.device)
    found = []
    for lo, hi in _ranges(n):
        w = hi - lo
        torch.sign(flat[lo:hi], out=signs[:w])
        signs8[:w].copy_(signs[:w])
        packed = w - w % 8
        if packed:
            words = torch.ne(
                signs8[:packed].view(torch.int64), held[lo : lo + packed].view(torch.int64)
            )
            hot = words.nonzero().squeeze(1)
            if hot.numel():
                rows = torch.ne(
                    signs8[:packed].view(-1, 8).index_select(0, hot),
                    held[lo : lo + packed].view(-1, 8).index_select(0, hot),
                ).nonzero()
                found.append(hot[rows[:, 0]] * 8 + rows[:, 1] + lo)
        if packed < w:
            tail = torch.ne(signs8[packed:w], held[lo + packed : hi]).nonzero().squeeze(1)
            found.append(tail + lo + packed)
    if not found:
        return torch.zeros(0, dtype=torch.int64, device=flat.device)
    return torch.cat(found)


def _all_finite(x: Tensor) -> bool:
    """Cheap finiteness check: one reduction, and the exact test only if it overflows."""
    total = x.sum(dtype=torch.float32) if x.dtype != torch.float64 else x.sum()
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.isfinite(x).all())
