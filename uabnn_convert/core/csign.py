"""The certainty-sign (c-sign) of one weight-sign site: its state, and when and how it advances.

The rule (SPEC section 2, paper Eq. 3-5) is evaluated exactly rather than literally
(:mod:`.rule`):

* The window comparison ``f̂_t <= f̂_{t-1}`` is decided on ``|x|`` (paper Eq. 6) whenever both
  sides have the same number of terms: ``f`` is strictly decreasing in ``|x|``, so this is exact
  in any precision and needs no ``exp``/``log``. At the single update ``t = m + 1`` (one term
  against ``m + 1``) and for the threshold ``Δ_t`` the comparison is made in log space,
  ``L = Σ log(1 - f(x_i))`` in float64 with a stable ``log1mexp``; a float32 ``1 - Π(1 - f)``
  rounds the near-zero weights c-sign exists for together and decides wrongly.
* ``Δ_t`` is an order statistic of the site (the ``k``-th smallest ``f̂``, or the ``k``-th
  largest with ``threshold="uncertain"``); an element passes it when its value is at least the
  statistic of ``|x|`` (one term) or of ``L`` (a window).

Two update paths make the same decisions, bit for bit (a test drives both over a random walk):

* **dense** — every element through the whole rule as tensor operations, with no data-dependent
  Python control flow and no host read: chosen under ``torch.compile`` / ``torch.export`` and
  on any device but the CPU (on CUDA, no host sync in any update, the first included). A
  latent that cannot be used (non-finite, or all zeros at the first update) leaves the state as
  it was and is recorded; the error is raised at the next host read (:meth:`CSign.check`,
  ``uc.stats``, an eager CPU forward).
* **sparse** — eager on the CPU: only the few elements whose sign changed can change the
  state, so they are found from packed sign words and the rule is evaluated for them; bounds on
  each candidate's window settle the threshold (``(m+1)·ℓ(min|x|) <= L <= ℓ(min|x|)``), and the
  exact fallback uses the very arrays the dense path uses. The new binary value is the sign of
  the latent computed during the scan, with the vetoed positions set back to the held state,
  so the output costs no extra pass.

When it advances (SPEC section 3): in training mode, once per change of the latent. Change is
detected by value, not ``_version`` (old BNN code writes ``p.data.add_()``, which does not bump
the version counter); the newest latent is already kept in the window, so the check needs no
extra copy. Gradient-accumulation micro-batches, a checkpoint recompute or a second forward
before ``optimizer.step()`` see an unchanged latent and do not advance.

State lives in registered buffers so ``state_dict``, ``.to()``, ``deepcopy`` and DDP treat it
like any other buffer. The held binary state is an ``int8`` buffer: utilities that average float
buffers (model EMA) copy it unchanged, so an averaged model still holds a valid binary state.
The window and the held state are allocated uninitialised (``torch.empty``: no page is touched
until an update writes it), nothing reads a slot before an update has written it, and a
``state_dict`` shows unwritten slots as zeros. A state_dict that lacks them describes a fresh
site (the package's file writer leaves them out until they hold data).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import rule, sparse
from .settings import SiteSettings

PATHS = ("auto", "dense", "sparse")
REFUSED_NONFINITE = 1
REFUSED_ZERO_SIGMA = 2
STATE_BUFFERS = ("window", "held", "num_updates", "sigma_value", "last_flips", "last_vetoed")
"""The persistent state of a site, in ``state_dict`` order."""
DATA_BUFFERS = ("window", "held")
"""The per-element buffers: a state without them is a fresh state."""


_INSIDE = threading.local()


def inside_csign() -> bool:
    """Whether a c-sign computation is running (its own ops are no model ops: a run-time
    capture around it must not take them for the model's)."""
    return getattr(_INSIDE, "depth", 0) > 0


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

    Usable on its own where a training loop binarizes weights outside ``forward``::

        binarize = uc.CSign(p.shape, m=2, delta=0.1)
        p.data = binarize(latent) * alpha

    ``path`` (``"auto"``, ``"dense"`` or ``"sparse"``) picks the update; ``"auto"`` takes the
    sparse one in eager CPU code and the dense one otherwise. Both decide the same.
    """

    path: str = "auto"

    def __init__(
        self,
        shape: Sequence[int] | torch.Size,
        *,
        m: int = SiteSettings.m,
        delta: float = SiteSettings.delta,
        sigma: str | float = SiteSettings.sigma,
        uncertainty: str = SiteSettings.uncertainty,
        threshold: str = SiteSettings.threshold,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        site: str = "c-sign site",
    ) -> None:
        super().__init__()
        settings = SiteSettings(m, delta, sigma, uncertainty, threshold)
        if not dtype.is_floating_point:
            raise ValueError(f"{site}: the latent dtype must be floating point, got {dtype}")
        self.shape = torch.Size(shape)
        self.m = settings.m
        self.delta = settings.delta
        self.sigma = settings.sigma
        self.uncertainty = settings.uncertainty
        self.threshold = settings.threshold
        self.site = site
        opts = {"device": device}
        self.register_buffer("window", torch.empty(self.m + 1, *self.shape, dtype=dtype, **opts))
        self.register_buffer("held", torch.empty(self.shape, dtype=torch.int8, **opts))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64, **opts))
        self.register_buffer("sigma_value", torch.zeros((), dtype=torch.float64, **opts))
        self.register_buffer("last_flips", torch.zeros((), dtype=torch.int64, **opts))
        self.register_buffer("last_vetoed", torch.zeros((), dtype=torch.int64, **opts))
        # A dense update that refused its latent: why (REFUSED_*) and at which update.
        self.register_buffer("refused", torch.zeros(2, dtype=torch.int64, **opts), persistent=False)

    # ----------------------------------------------------------------- public surface
    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def k(self) -> int:
        """``ceil(delta · N)``, at least 1 and at most ``N`` (SPEC section 2)."""
        n = self.numel
        return min(n, max(1, math.ceil(self.delta * n)))

    @property
    def pass_count(self) -> int:
        """``K``: an element passes the threshold when fewer than ``K`` elements are strictly
        more certain (``k`` for the default reading, ``N - k + 1`` for the uncertain one)."""
        return self.k if self.threshold == "certain" else self.numel - self.k + 1

    def extra_repr(self) -> str:
        text = f"shape={tuple(self.shape)}, m={self.m}, delta={self.delta}, sigma={self.sigma!r}"
        if self.uncertainty != SiteSettings.uncertainty:
            text += f", uncertainty={self.uncertainty!r}"
        if self.threshold != SiteSettings.threshold:
            text += f", threshold={self.threshold!r}"
        return text

    def settings(self) -> dict[str, Any]:
        return SiteSettings(
            self.m, self.delta, self.sigma, self.uncertainty, self.threshold
        ).to_dict()

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return self._forward(x)
        _INSIDE.depth = getattr(_INSIDE, "depth", 0) + 1
        try:
            return self._forward(x)
        finally:
            _INSIDE.depth -= 1

    def _forward(self, x: Tensor) -> Tensor:
        if x.shape != self.shape:
            raise RuntimeError(
                f"{self.site}: latent shape {tuple(x.shape)} differs from the shape "
                f"{tuple(self.shape)} this c-sign state was built for"
            )
        if self._dense(x):
            if self.training:
                self._update_dense(x)
            xd = x.detach()
            value = torch.where(self.num_updates > 0, self.held.to(xd.dtype), torch.sign(xd))
        else:
            self.check()
            value = None
            if self.training and self._changed(x):
                value = self._update_sparse(x)
            if value is None:
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

    @torch.no_grad()
    def advance(self, x: Tensor) -> None:
        """Perform one update with latent ``x`` (normally called from ``forward``)."""
        if self._dense(x):
            self._update_dense(x, force=True)
        else:
            self.check()
            self._update_sparse(x)

    def check(self) -> None:
        """Raise the error a dense update recorded instead of raising (a host read)."""
        why, at = (int(v) for v in self.refused.tolist())
        if why:
            self.refused.zero_()
            raise self._refusal(why, at)

    def uncertainty_sum(self) -> float:
        """Σ f̂_t over the site at the last update: the paper's "uncertainty of the network"."""
        t = int(self.num_updates)
        if t == 0:
            return 0.0
        m1 = self.m + 1
        win = self.window.reshape(m1, -1)
        first = max(1, t - self.m) if t > self.m else t
        rows = [win[(i - 1) % m1] for i in range(first, t + 1)]
        sigma = float(self.sigma_value)
        if self.uncertainty == "density":
            return float(rule.density_fhat(rows, sigma).sum())
        total = 0.0
        for lo in range(0, self.numel, rule.CHUNK):
            hi = min(self.numel, lo + rule.CHUNK)
            total += float((-torch.expm1(rule.window_log([r[lo:hi] for r in rows], sigma))).sum())
        return total

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # Slots no update has written yet hold whatever the allocation held: save zeros there,
        # so that a state_dict is a deterministic function of the updates (hashes, equality).
        super()._save_to_state_dict(destination, prefix, keep_vars)
        t = int(self.num_updates)
        if t == 0:
            destination[prefix + "held"] = torch.zeros_like(self.held)
        if t <= self.m:
            window = self.window.detach().clone()
            window[t:] = 0
            destination[prefix + "window"] = window

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
    ):
        # A state_dict saved before conversion has no c-sign keys: that means a fresh state. One
        # written for a site that held nothing yet has its scalars but not the per-element
        # buffers; nothing reads those before the first update, so they are left as they are.
        present = [name for name in STATE_BUFFERS if prefix + name in state_dict]
        fresh = not present or int(state_dict.get(prefix + "num_updates", 0)) == 0
        for name in STATE_BUFFERS:
            key = prefix + name
            if key in state_dict:
                continue
            if name in DATA_BUFFERS and present and not fresh:
                errors.append(
                    f"{key} is missing while {prefix}num_updates says the site holds a state"
                )
                return
            state_dict[key] = self._buffers[name] if name in DATA_BUFFERS else torch.zeros(())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing, unexpected, errors
        )

    # ----------------------------------------------------------------- shared
    def _dense(self, x: Tensor) -> bool:
        if self.path != "auto":
            if self.path not in PATHS:
                raise ValueError(f"{self.site}: path={self.path!r}; use one of {PATHS}")
            return self.path == "dense"
        return torch.compiler.is_compiling() or x.device.type != "cpu"

    def _refusal(self, why: int, at: int) -> Exception:
        if why == REFUSED_ZERO_SIGMA:
            return ValueError(
                f"{self.site}: sigma={self.sigma!r} resolves to 0 at update {at} (the latent is "
                "all zeros); give sigma as a positive number"
            )
        return FloatingPointError(
            f"{self.site}: non-finite latent values at update {at}; "
            "the c-sign state is left as it was"
        )

    def _sigma_of(self, x: Tensor) -> Tensor:
        """σ resolved from the latent at the first update (float64, 0 when it cannot be)."""
        if not isinstance(self.sigma, str):
            return torch.full((), self.sigma, dtype=torch.float64, device=x.device)
        xd = x.to(torch.float64)
        if xd.numel() > 1:
            spread = xd.std(unbiased=False)
        else:
            spread = torch.zeros((), dtype=torch.float64, device=x.device)
        value = spread if self.sigma == "std" else spread * spread
        usable = (value > 0) & torch.isfinite(value)
        return torch.where(usable, value, xd.abs().mean())

    # ----------------------------------------------------------------- dense update
    @torch.no_grad()
    def _update_dense(self, x: Tensor, *, force: bool = False) -> None:
        """One update as tensor operations only: no host read, every branch a ``where``."""
        m1 = self.m + 1
        flat = x.detach().to(self.window.dtype).reshape(-1)
        win = self.window.view(m1, -1)
        held = self.held.view(-1)
        t0 = self.num_updates
        first = t0 == 0
        newest = win.index_select(0, torch.remainder(t0 - 1, m1).reshape(1))[0]
        changed = first | (flat != newest).any() if not force else torch.ones_like(first)
        finite = torch.isfinite(flat).all()
        sigma = torch.where(first, self._sigma_of(flat), self.sigma_value)
        usable = finite & (sigma > 0)
        do = changed & usable
        signs = torch.sign(flat).to(torch.int8)
        cand = (signs != held) & ~first
        if self.uncertainty == "density":
            allowed = self._allowed_density(flat, win, t0, sigma)
        else:
            allowed = self._allowed_gaussian(flat, win, t0, newest, sigma)
        flip = cand & allowed
        held.copy_(torch.where(do & (first | flip), signs, held))
        slot = torch.remainder(t0, m1).reshape(1)
        old = win.index_select(0, slot)[0]
        win.index_copy_(0, slot, torch.where(do, flat, old).unsqueeze(0))
        self.sigma_value.copy_(torch.where(do, sigma, self.sigma_value))
        self.last_flips.copy_(torch.where(do, flip.sum(), self.last_flips))
        self.last_vetoed.copy_(torch.where(do, (cand & ~allowed).sum(), self.last_vetoed))
        why = torch.where(finite, REFUSED_ZERO_SIGMA, REFUSED_NONFINITE)
        refused = changed & ~usable
        self.refused.copy_(torch.where(refused, torch.stack([why, t0 + 1]), self.refused))
        self.num_updates.add_(do.to(torch.int64))

    def _allowed_gaussian(
        self, flat: Tensor, win: Tensor, t0: Tensor, newest: Tensor, sigma: Tensor
    ) -> Tensor:
        """Which elements the rule lets take the sign of ``flat`` at update ``t0 + 1``."""
        m, m1, n = self.m, self.m + 1, self.numel
        t = t0 + 1
        absx = flat.abs()
        single = absx >= newest.abs()
        rank = n - self.pass_count + 1
        if m == 0:
            return single | (absx >= rule.order_statistic(absx, rank))
        rows = rule.window_rows(win, t0, m)
        log_t = rule.window_log([*rows, flat], sigma)
        oldest = win.index_select(0, torch.remainder(t0, m1).reshape(1))[0]
        zero_shared = torch.zeros_like(single)
        for row in rows:
            zero_shared |= row == 0
        long = (absx >= oldest.abs()) | zero_shared
        middle = log_t >= rule.log_certainty(newest, sigma)
        window_ok = torch.where(t <= m, single, torch.where(t == m1, middle, long))
        # One order statistic: of |x| while the window has one term, of L after.
        values = torch.where(t <= m, absx.to(torch.float64), log_t)
        return window_ok | (values >= rule.order_statistic(values, rank))

    def _allowed_density(self, flat: Tensor, win: Tensor, t0: Tensor, sigma: Tensor) -> Tensor:
        """The literal-density rule, evaluated as written (an opt-in for experiments)."""
        m, m1, n = self.m, self.m + 1, self.numel
        t = t0 + 1
        newest = win.index_select(0, torch.remainder(t0 - 1, m1).reshape(1))[0]
        oldest = win.index_select(0, torch.remainder(t0, m1).reshape(1))[0]
        rows = rule.window_rows(win, t0, m)
        now = torch.where(
            t <= m, rule.density(flat, sigma), rule.density_fhat([*rows, flat], sigma)
        )
        before = torch.where(
            t - 1 <= m, rule.density(newest, sigma), rule.density_fhat([oldest, *rows], sigma)
        )
        rank = self.k if self.threshold == "certain" else n - self.k + 1
        return now <= torch.maximum(before, rule.order_statistic(now, rank))

    # ----------------------------------------------------------------- sparse update
    def _changed(self, x: Tensor) -> bool:
        t = int(self.num_updates)
        if t == 0:
            return True
        newest = self.window[(t - 1) % (self.m + 1)]
        return not _same_values(x.detach().to(newest.dtype), newest)

    @torch.no_grad()
    def _update_sparse(self, x: Tensor) -> Tensor:
        """One update, evaluated for the elements whose sign changed; returns the new value."""
        t = int(self.num_updates) + 1
        xd = x.detach().to(self.window.dtype)
        if not _all_finite(xd):
            raise self._refusal(REFUSED_NONFINITE, t)
        slot = (t - 1) % (self.m + 1)
        flat = xd.reshape(-1)
        value = torch.sign(xd.contiguous())  # returned whole, not as a view: callers may
        out = value.view(-1)  # modify it in place (BNN code does)
        held = self.held.view(-1)
        if t == 1:
            sigma = float(self._sigma_of(flat))
            if sigma <= 0:
                raise self._refusal(REFUSED_ZERO_SIGMA, t)
            held.copy_(out)
            self.sigma_value.fill_(sigma)
            flips = vetoed = 0
        else:
            cand = sparse.sign_changes(out, held)
            allowed = self._decide_sparse(t, flat, cand)
            flips_at, vetoed_at = torch.from_numpy(cand[allowed]), torch.from_numpy(cand[~allowed])
            held.index_copy_(0, flips_at, out.index_select(0, flips_at).to(torch.int8))
            out.index_copy_(0, vetoed_at, held.index_select(0, vetoed_at).to(out.dtype))
            flips, vetoed = flips_at.numel(), vetoed_at.numel()
        self.window[slot].copy_(xd)
        self.last_flips.fill_(flips)
        self.last_vetoed.fill_(vetoed)
        self.num_updates.fill_(t)
        return value

    def _decide_sparse(self, t: int, flat: Tensor, cand: np.ndarray) -> np.ndarray:
        """Which candidate flips the rule allows at update ``t`` (before the window is written)."""
        if cand.size == 0:
            return np.zeros(0, dtype=bool)
        m, m1, t0 = self.m, self.m + 1, t - 1
        win = self.window.view(m1, -1)
        if self.uncertainty == "density":
            allowed = self._allowed_density(flat, win, torch.tensor(t0), self.sigma_value)
            return allowed.numpy()[cand]
        x, rows = sparse.host(flat), sparse.host(win)
        newest = rows[(t0 - 1) % m1]
        if t <= m or m == 0:
            allowed = np.abs(x[cand]) >= np.abs(newest[cand])
        elif t == m1:
            # Once per run: the full arrays, as the dense path computes them.
            log_t = rule.window_L(win, t0, m, flat, self.sigma_value)
            middle = log_t >= rule.log_certainty(win[(t0 - 1) % m1], self.sigma_value)
            allowed = middle.numpy()[cand]
        else:
            allowed = np.abs(x[cand]) >= np.abs(rows[t0 % m1][cand])
            for i in range(1, m1):
                allowed |= rows[(t0 + i) % m1][cand] == 0
        pending = np.flatnonzero(~allowed)
        if pending.size == 0:
            return allowed
        if self.pass_count >= self.numel:
            allowed[pending] = True
        else:
            allowed[pending] = self._within_threshold(t, flat, cand[pending])
        return allowed

    def _within_threshold(self, t: int, flat: Tensor, idx: np.ndarray) -> np.ndarray:
        """``f̂_t <= Δ_t`` for elements ``idx``: fewer than ``K`` elements are more certain."""
        K, n, m, m1, t0 = self.pass_count, self.numel, self.m, self.m + 1, t - 1
        x = sparse.host(flat)
        if t <= m or m == 0:
            # One term: L is ordered like |x_t|, so count larger magnitudes exactly.
            absx = np.abs(x)
            return ~sparse.count_above(lambda lo, hi: absx[lo:hi], n, absx[idx], K)
        win = self.window.view(m1, -1)
        rows = [sparse.host(r) for r in rule.window_rows(win, t0, m)]
        decided, allowed = sparse.bound_decisions([*rows, x], idx, float(self.sigma_value), K)
        open_ = np.flatnonzero(~decided)
        if open_.size:
            # Exact: the full-site L and its order statistic, as the dense path has them.
            log_t = rule.window_L(win, t0, m, flat, self.sigma_value)
            q = rule.order_statistic(log_t, n - K + 1)
            allowed[open_] = (log_t >= q).numpy()[idx[open_]]
        return allowed


def _same_values(a: Tensor, b: Tensor) -> bool:
    """``torch.equal`` by value. A latent an optimizer step changed almost always differs in
    its first elements: those are compared first, so a changed latent costs no full pass.
    Identical bits (the unchanged case) are compared as 64-bit words, several times faster
    than comparing floats."""
    head = min(a.numel(), _HEAD)
    if not torch.equal(a.reshape(-1)[:head], b.reshape(-1)[:head]):
        return False
    if a.is_contiguous() and b.is_contiguous() and a.element_size() * a.numel() % 8 == 0:
        try:
            if torch.equal(a.view(-1).view(torch.int64), b.view(-1).view(torch.int64)):
                return True
        except RuntimeError:  # a storage offset that is not 8-byte aligned
            pass
    return torch.equal(a, b)


_HEAD = 64


def _all_finite(x: Tensor) -> bool:
    """Cheap finiteness check: one reduction, and the exact test only if it overflows."""
    total = x.sum(dtype=torch.float32) if x.dtype != torch.float64 else x.sum()
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.isfinite(x).all())
