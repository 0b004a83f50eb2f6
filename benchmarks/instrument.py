"""Instrumentation: where time goes inside one run, measured by clocks placed in the code path.

Four instruments, all host-side (the CUDA-event ones are in :mod:`benchmarks.gpu`):

* :class:`HostSiteClock` — a forward pre-hook and a forward post-hook on every c-sign site
  read ``time.perf_counter()``; the seconds between them are summed. On the CPU every op is
  synchronous, so this is the wall time the step spends inside the sites (change check, update,
  output). The share of a step is then ``site seconds / step seconds`` *of the same step*,
  which is not disturbed by the run-to-run noise that a difference of two separately timed
  steps (with and without c-sign) suffers from. What the hooks cannot see: the backward of the
  site's output (its gradient is zeros, as ``sign``'s is; in the zoo's straight-through
  layers the value is detached and its backward never runs).
* :func:`hook_overhead_per_call` — what a pair of such hooks adds to one module call, from a
  trivial module called with and without them (interleaved, median). Multiplied by the site
  calls of a step and divided by the step's time it bounds how much the instrument inflates
  the step and the sites' share.
* :class:`PhaseClock` — ``perf_counter`` around named methods of an object (shadowed by
  instance attributes) or functions of a module (its attribute replaced while installed);
  :meth:`~PhaseClock.remove` restores every owner, and no file of the package is edited.
  Used to split one c-sign update into its phases.
* :func:`op_shares` — ``torch.profiler`` over a few calls: self CPU time per op, as shares of
  the calls' wall time; the part no torch op accounts for (Python, NumPy, the profiler's own
  bookkeeping) is reported as one remainder.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .timing import interleaved_samples


class ForwardHooks:
    """A forward pre-hook (:meth:`_pre`) and post-hook (:meth:`_post`) on every given module,
    removed together: the frame of the host and the CUDA site clocks."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))

    def _pre(self, module: nn.Module, args: Any) -> None:
        raise NotImplementedError

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class HostSiteClock(ForwardHooks):
    """Seconds spent between the forward pre- and post-hooks of the given modules."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._starts: list[float] = []
        super().__init__(modules)

    def _pre(self, module: nn.Module, args: Any) -> None:
        self._starts.append(time.perf_counter())

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        self.seconds += time.perf_counter() - self._starts.pop()
        self.calls += 1

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._starts.clear()


class _Passthrough(nn.Module):
    def forward(self, x: Any) -> Any:
        return x


def hook_overhead_per_call(calls: int = 2000, repeats: int = 7) -> float:
    """Seconds a :class:`HostSiteClock` adds to one module call (median over rounds)."""
    bare, hooked = _Passthrough(), _Passthrough()
    clock = HostSiteClock([hooked])
    x = torch.zeros(1)

    def run(module: nn.Module) -> Callable[[], None]:
        def go() -> None:
            for _ in range(calls):
                module(x)

        return go

    try:
        samples = interleaved_samples(
            {"bare": run(bare), "hooked": run(hooked)},
            repeats=repeats,
            before={"hooked": clock.reset},
            collect=False,
        )
    finally:
        clock.remove()
    return (statistics.median(samples["hooked"]) - statistics.median(samples["bare"])) / calls


class PhaseClock:
    """Inclusive seconds and calls of named callables while installed.

    ``targets`` maps a phase name to ``(owner, attribute)``: a bound method of one object (the
    wrapper shadows it as an instance attribute) or a function of a module (the wrapper
    replaces the module's attribute, which is where callers look it up at call time).
    :meth:`remove` puts every owner back as it was.
    """

    def __init__(self, targets: Mapping[str, tuple[Any, str]]) -> None:
        self.seconds = dict.fromkeys(targets, 0.0)
        self.calls = dict.fromkeys(targets, 0)
        self._restore: list[tuple[Any, str, bool, Any]] = []
        for name, (owner, attr) in targets.items():
            own = attr in vars(owner)
            self._restore.append((owner, attr, own, vars(owner).get(attr)))
            object.__setattr__(owner, attr, self._wrap(name, getattr(owner, attr)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed

    def remove(self) -> None:
        for owner, attr, own, original in reversed(self._restore):
            if own:
                object.__setattr__(owner, attr, original)
            else:
                delattr(owner, attr)
        self._restore.clear()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's native library logs its start and stop (and,
    on a CUDA build without a device, a device-count error) there on every use."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def op_shares(
    fn: Callable[[], object],
    *,
    calls: int = 5,
    before: Callable[[], object] | None = None,
    top: int = 5,
) -> dict[str, float]:
    """Self CPU time of the ``top`` ops over ``calls`` calls of ``fn``, as shares of their wall
    time, plus ``"other torch ops"`` and ``"outside torch ops"`` (the remainder).

    ``before`` runs before each call inside the profiled region but outside the wall clock; it
    must not call torch ops (use NumPy views), or its ops would be counted as the call's.
    """
    from torch.profiler import ProfilerActivity, profile

    wall = 0.0
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            if before is not None:
                before()
            start = time.perf_counter()
            fn()
            wall += time.perf_counter() - start
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    ranked = sorted(self_s.items(), key=lambda kv: kv[1], reverse=True)
    shares = {name: seconds / wall for name, seconds in ranked[:top]}
    shares["other torch ops"] = sum(seconds for _, seconds in ranked[top:]) / wall
    shares["outside torch ops"] = 1.0 - sum(self_s.values()) / wall
    return shares
