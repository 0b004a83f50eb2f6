"""The CUDA benchmark cases (``python -m benchmarks --device cuda``): one GPU, one command.

Without CUDA, :func:`skip_reason` gives the one line the command prints before it exits 0.

With CUDA, for ``bireal_resnet18`` at 224x224, batch 256, bf16 autocast, SGD step:

* **Share of a training step spent in c-sign, eager** — by instrumentation: a pair of
  ``torch.cuda.Event`` is recorded in a forward pre-hook and post-hook of every site, and a
  pair around the whole step; after ``torch.cuda.synchronize()`` at the end of the step the
  sites' intervals are summed and divided by the step's. Events measure stream time, so a
  site's interval is the time the GPU spent from the site's first op to its last (including
  any gap while it waited for the host to launch the next op). A ratio-method figure
  (``1 - sign step / c-sign step``, interleaved, medians) is printed next to it as a cross-check.
* **Share under ``torch.compile``** — hooks do not fire inside a compiled graph and inductor's
  fused kernels carry no module names, so kernel time cannot be attributed to the sites by
  name. The figure is therefore the ratio method, labelled as such: the c-sign model and the
  unconverted sign model are each compiled once (default inductor backend), warmed up, then
  their steps are timed interleaved with CUDA events; share = ``1 - sign / c-sign``.
* **Host syncs per steady-state step**, eager and compiled, c-sign and sign: the warnings that
  ``torch.cuda.set_sync_debug_mode("warn")`` issues for every synchronizing operation are
  caught with ``warnings.catch_warnings(record=True)`` and counted.
* **Update / copy_ at 11M elements** on the GPU, through a site's forward (the dense path,
  which ``path="auto"`` takes on CUDA), CUDA events, medians; each call starts on an idle
  device, so this is the latency of one update, launch gaps included.
* **Order statistic** of 11M float64 values (the threshold ``Δ_t``): ``sort`` (what the
  package uses off the CPU) against ``topk`` and ``kthvalue``; the three must agree.

Each case is wrapped so that one failure (a compile error, say) is recorded in the JSON file
and shown in the table while the other cases still run. Nothing here needs more set-up than
``bash scripts/setup.sh``.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .instrument import ForwardHooks

SKIP_NO_CUDA = "skipped: no CUDA device (torch.cuda.is_available() is False)"


def skip_reason() -> str | None:
    """The one-line reason to skip the CUDA cases, or None when a CUDA device is usable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA build without a driver warns here
        available = torch.cuda.is_available()
    return None if available else SKIP_NO_CUDA


# --------------------------------------------------------------------------------- instruments


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def cuda_interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 25,
    warmup: int = 1,
    before: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median stream seconds per call (CUDA events), the candidates taking turns; the device
    is idle when each call starts (``before`` runs, then a synchronize, untimed)."""
    before = before or {}
    for _ in range(warmup):
        for name, fn in candidates.items():
            if name in before:
                before[name]()
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if name in before:
                before[name]()
            torch.cuda.synchronize()
            start, end = _event(), _event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


class CudaSiteClock(ForwardHooks):
    """CUDA event pairs recorded in forward pre/post hooks of the given modules."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._open: list[torch.cuda.Event] = []
        super().__init__(modules)

    def _pre(self, module: nn.Module, args: Any) -> None:
        event = _event()
        event.record()
        self._open.append(event)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        event = _event()
        event.record()
        self.pairs.append((self._open.pop(), event))

    def reset(self) -> None:
        self.pairs.clear()
        self._open.clear()

    def seconds(self) -> float:
        """Summed stream seconds of the recorded pairs (call after a synchronize)."""
        return sum(start.elapsed_time(end) for start, end in self.pairs) / 1e3


def count_syncs(fn: Callable[[], object], calls: int = 2) -> tuple[float, list[str]]:
    """Synchronizing operations per call of ``fn``, as ``set_sync_debug_mode("warn")`` reports
    them, and the first few distinct messages (where they came from)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(calls):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    found = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = sorted({f"{w.filename}:{w.lineno}: {w.message}" for w in found})
    return len(found) / calls, where[:3]


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one case; on failure return its error instead of raising. Adds its wall seconds
    (``wall_s``: bookkeeping for the time budget of a device session, not a result)."""
    started = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # a failed case must not hide the others
        out = {
            "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
            "traceback": traceback.format_exc(limit=8),
        }
    out["wall_s"] = time.perf_counter() - started
    return out


# --------------------------------------------------------------------------------- cases


def gpu_update(
    numel: int = 11_000_000,
    repeats: int = 25,
    m: int = 2,
    delta: float = 0.1,
    device: str = "cuda",
) -> dict[str, Any]:
    """One c-sign update through a site's forward on CUDA against ``dst.copy_(src)``."""
    from .cases import DriftingLatent, new_site

    latents = {name: DriftingLatent(numel, device=device) for name in ("update", "copy")}
    site = new_site(numel, m, delta, device=device)
    for _ in range(m + 2):
        latents["update"].step()
        site(latents["update"].tensor)
    dst = torch.empty(numel, device=device)
    src = latents["copy"].plain
    before = int(site.num_updates)
    warmup = 1
    times = cuda_interleaved(
        {"update": lambda: site(latents["update"].tensor), "copy": lambda: dst.copy_(src)},
        repeats=repeats,
        warmup=warmup,
        before={name: latent.step for name, latent in latents.items()},
    )
    updates = (int(site.num_updates) - before) / (repeats + warmup)

    def one_update() -> None:
        latents["update"].step()
        site(latents["update"].tensor)

    syncs, where = count_syncs(one_update)
    return {
        "elements": numel,
        "update_vs_copy": times["update"] / times["copy"],
        "path_is_dense": float(site._dense(latents["update"].tensor)),
        "updates_per_call": updates,
        "syncs_per_update": syncs,
        "sync_sources": where,
        "update_s": times["update"],
        "copy_s": times["copy"],
    }


def order_statistics(
    numel: int = 11_000_000,
    repeats: int = 25,
    delta: float = 0.1,
    device: str = "cuda",
    budget_s: float = 30.0,
) -> dict[str, Any]:
    """The threshold's order statistic of ``numel`` float64 values: sort, topk, kthvalue.
    Fewer rounds than ``repeats`` (at least 3) when one round would not fit ``budget_s``."""
    gen = torch.Generator(device=device).manual_seed(0)
    values = torch.randn(numel, dtype=torch.float64, device=device, generator=gen)
    k = min(numel, max(1, math.ceil(delta * numel)))
    rank = numel - k + 1  # the k-th largest is the rank-th smallest
    picks = {
        "sort": lambda: torch.sort(values).values[rank - 1],
        "topk": lambda: torch.topk(values, k).values[k - 1],
        "kthvalue": lambda: torch.kthvalue(values, rank).values,
    }
    torch.cuda.synchronize()
    started = time.perf_counter()
    agree = len({float(fn()) for fn in picks.values()}) == 1
    once = time.perf_counter() - started  # one call of each (kthvalue can be slow on CUDA)
    rounds = max(3, min(repeats, int(budget_s / max(once, 1e-6))))
    dst, src = torch.empty(numel, device=device), torch.randn(numel, device=device)
    times = cuda_interleaved({**picks, "copy": lambda: dst.copy_(src)}, repeats=rounds)
    return {
        "elements": numel,
        "agree": float(agree),
        "rounds": rounds,
        "topk_vs_sort": times["topk"] / times["sort"],
        "kthvalue_vs_sort": times["kthvalue"] / times["sort"],
        "sort_vs_copy": times["sort"] / times["copy"],
        **{f"{name}_s": seconds for name, seconds in times.items()},
    }


class _Trainer:
    """A model (eager or compiled) with its own SGD optimizer and bf16-autocast step."""

    def __init__(self, module: nn.Module, call: Callable[..., Any], x, y) -> None:
        self.module = module
        self.call = call
        self.opt = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
        self.x, self.y = x, y

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(self.call(self.x), self.y)
        loss.backward()
        self.opt.step()


def _updates(sites: list[nn.Module]) -> int:
    return sum(int(site.num_updates) for site in sites)


def gpu_training(
    arch: str = "bireal_resnet18",
    batch: int = 256,
    size: int = 224,
    num_classes: int = 1000,
    steps: int = 10,
    compile: bool = True,
    device: str = "cuda",
) -> dict[str, Any]:
    """c-sign share of a training step and host syncs per step, eager and compiled."""
    import timm

    import uabnn_convert as uc
    import uabnn_convert.zoo  # registers the zoo with timm

    torch.manual_seed(0)
    original = timm.create_model(arch, num_classes=num_classes)
    sign_model = copy.deepcopy(original).to(device).train()
    csign_model = uc.patch(original).to(device).train()
    sites = [site for _, site in uc.sites(csign_model)]
    channels = original.pretrained_cfg["input_size"][0]
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    out: dict[str, Any] = {"model": arch, "batch": batch, "input": f"{size}x{size}"}

    csign, sign = _Trainer(csign_model, csign_model, x, y), _Trainer(sign_model, sign_model, x, y)
    m = max(site.m for site in sites)
    for _ in range(m + 2):  # steady state
        csign.step()
        sign.step()
    torch.cuda.synchronize()

    def eager_share() -> dict[str, Any]:
        clock = CudaSiteClock(sites)
        shares, calls, updates = [], [], []
        try:
            for _ in range(steps):
                before = _updates(sites)
                clock.reset()
                start, end = _event(), _event()
                start.record()
                csign.step()
                end.record()
                torch.cuda.synchronize()
                shares.append(clock.seconds() / (start.elapsed_time(end) / 1e3))
                calls.append(len(clock.pairs))
                updates.append((_updates(sites) - before) / len(sites))
        finally:
            clock.remove()
        times = cuda_interleaved({"csign": csign.step, "sign": sign.step}, repeats=steps)
        syncs, where = count_syncs(csign.step)
        sign_syncs, sign_where = count_syncs(sign.step)
        return {
            "share": statistics.median(shares),
            "share_min": min(shares),
            "share_max": max(shares),
            "site_calls_per_step": statistics.median(calls),
            "updates_per_site_per_step": statistics.median(updates),
            "ratio_share": 1.0 - times["sign"] / times["csign"],
            "syncs_per_step": syncs,
            "sign_syncs_per_step": sign_syncs,
            "sync_sources": where + sign_where,
            "csign_step_s": times["csign"],
            "sign_step_s": times["sign"],
        }

    def compiled_share() -> dict[str, Any]:
        csign_c = _Trainer(csign_model, torch.compile(csign_model), x, y)
        sign_c = _Trainer(sign_model, torch.compile(sign_model), x, y)
        started = time.perf_counter()
        for _ in range(3):  # compile (first call), then settle
            csign_c.step()
            sign_c.step()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - started
        before = _updates(sites)
        times = cuda_interleaved({"csign": csign_c.step, "sign": sign_c.step}, repeats=steps)
        updates = (_updates(sites) - before) / len(sites) / (steps + 1)
        syncs, where = count_syncs(csign_c.step)
        sign_syncs, sign_where = count_syncs(sign_c.step)
        return {
            "ratio_share": 1.0 - times["sign"] / times["csign"],
            "csign_vs_sign": times["csign"] / times["sign"],
            "updates_per_site_per_step": updates,
            "syncs_per_step": syncs,
            "sign_syncs_per_step": sign_syncs,
            "sync_sources": where + sign_where,
            "csign_step_s": times["csign"],
            "sign_step_s": times["sign"],
            "compile_and_warmup_s": compile_s,
        }

    out["eager"] = _guarded(eager_share)
    if compile:
        out["compiled"] = _guarded(compiled_share)
    return out


def run_all(
    repeats: int = 25,
    steps: int = 10,
    *,
    compile: bool = True,
    numel: int = 11_000_000,
    train: dict[str, Any] | None = None,
    device: str = "cuda",
) -> dict[str, dict]:
    """Every CUDA case, each guarded; cheap ones first. ``train`` overrides the training
    case's model and sizes, ``device`` exists for the CPU smoke test (fake events)."""
    train = {
        "arch": "bireal_resnet18",
        "batch": 256,
        "size": 224,
        "num_classes": 1000,
        **(train or {}),
    }
    return {
        "update_11M": _guarded(lambda: gpu_update(numel, repeats=repeats, device=device)),
        "order_statistic_11M": _guarded(
            lambda: order_statistics(numel, repeats=repeats, device=device)
        ),
        "train_bireal_resnet18": _guarded(
            lambda: gpu_training(**train, steps=steps, compile=compile, device=device)
        ),
    }
