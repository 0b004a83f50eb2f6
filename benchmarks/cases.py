"""The CPU benchmark cases. Each returns a dict of plain numbers (and, for breakdowns, dicts of
them): ratios and shares first, raw medians in seconds kept for the JSON file. Rendering is
separate (:mod:`benchmarks.table`), so every figure in the table is computed as data.

Decisions recorded here:

* **Update cost** (:func:`csign_update`) goes through the real forward path: a
  :class:`~uabnn_convert.core.CSignSite` in training mode, called with a leaf latent that
  requires grad and whose values changed since the last call, exactly as a training step calls
  it — change check, update and output (and the autograd wrapper of the output). Not
  ``advance()`` alone. The latent is moved by a fixed small drift before every call (about one
  element in a few thousand changes sign per call, like a small SGD step); the drift is written
  through NumPy on the tensor's memory, so that it bumps no version counter (change is
  detected by value) and adds no op to a profile. The baseline is ``dst.copy_(src)`` of the
  same number of float32 elements into a preallocated ``dst``, ``src`` drifted the same way.
  All three candidates (auto path, dense path, copy) take turns; steady state means every
  site has done ``m + 2`` updates before timing starts (``t > m + 1``).
* **Breakdown** of an update, on extra calls after the timed ones: phases by
  :class:`~benchmarks.instrument.PhaseClock` around the site's own methods and the module
  functions they call (``SPARSE_PHASES``, ``DENSE_PHASES``; inclusive times turned into self
  times, as shares of the forward call, the remainder being the output and its autograd
  wrapper), and ops by ``torch.profiler`` self CPU time
  (:func:`~benchmarks.instrument.op_shares`), where "outside torch ops" is mostly the sparse
  path's NumPy work.
* **State bytes** count per-element buffers only (buffers whose trailing shape is the site's
  shape); the few scalars are a fixed cost per site, reported separately.
* **Patch time** patches a fresh ``deepcopy`` per call (made untimed, just before the call);
  torch.ao's ``prepare_fx`` likewise gets a fresh torchvision ResNet-18 per call.
* **Share of a training step** (:func:`csign_share_step`) is instrumentation, not a difference
  of two separately timed steps: hooks on every site sum the seconds inside the sites during
  one step, divided by that step's seconds; median over steps. The hooks' own cost is measured
  on a trivial module and reported as a share of the step too.
* **stats cost** times ``uc.stats`` interleaved with training steps of the same model.
* **CLI start-up** runs ``python -m uabnn_convert --help`` and ``python -c "import torch"`` as
  subprocesses, interleaved; it also checks with ``-X importtime`` whether ``--help`` imports
  torch at all.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

import uabnn_convert as uc
import uabnn_convert.zoo  # registers the zoo with timm
from uabnn_convert.core import CSign, CSignSite
from uabnn_convert.core import csign as csign_module
from uabnn_convert.core import rule as rule_module
from uabnn_convert.core import sparse as sparse_module

from .instrument import HostSiteClock, PhaseClock, hook_overhead_per_call, op_shares
from .timing import interleaved

# --------------------------------------------------------------------------------- helpers


class DriftingLatent:
    """A leaf latent that requires grad, moved by a fixed small drift on each :meth:`step`.

    The drift is applied through a NumPy view of the CPU tensor's memory: no torch op (nothing
    for a profiler to count) and no version-counter bump (c-sign detects change by value).
    """

    def __init__(self, numel: int, seed: int = 0, device: str = "cpu") -> None:
        gen = torch.Generator().manual_seed(seed)
        base = torch.randn(numel, generator=gen) * 0.05
        self.drift = torch.randn(numel, generator=gen) * 0.05e-3
        self.tensor = nn.Parameter(base.to(device))
        self.plain = torch.empty_like(base).copy_(base)  # a plain (no-grad) copy, for copy_
        if self.tensor.device.type == "cpu":
            self._views = [
                (self.tensor.detach().numpy(), self.drift.numpy()),
                (self.plain.numpy(), self.drift.numpy()),
            ]
        else:
            self.drift = self.drift.to(device)
            self.plain = self.plain.to(device)
            self._views = []

    def step(self) -> None:
        if self._views:
            for values, drift in self._views:
                np.add(values, drift, out=values)
        else:
            with torch.no_grad():
                self.tensor.add_(self.drift)
                self.plain.add_(self.drift)


def new_site(numel: int, m: int, delta: float, path: str = "auto", device: str = "cpu") -> CSign:
    """A c-sign site of ``numel`` elements standing in for ``torch.sign``, in training mode."""
    site = CSignSite(torch.sign, torch.Size([numel]), m=m, delta=delta, device=device).train()
    if path != "auto":
        site.path = path
    return site


def per_element_state_bytes(site: CSign) -> tuple[int, int]:
    """(bytes of per-element buffers, bytes of every other buffer) of one site."""
    per_element = fixed = 0
    ndim = len(site.shape)
    for buf in site.buffers():
        nbytes = buf.numel() * buf.element_size()
        if buf.dim() >= ndim and tuple(buf.shape[buf.dim() - ndim :]) == tuple(site.shape):
            per_element += nbytes
        else:
            fixed += nbytes
    return per_element, fixed


# Phases of one update: name -> (where the callable lives, its attribute, the phase it runs
# inside or None for directly inside the site's forward). "site" stands for the site object.
SPARSE_PHASES: dict[str, tuple[Any, str, str | None]] = {
    "check": ("site", "check", None),  # a dense update's recorded refusal (a host read)
    "_changed": ("site", "_changed", None),  # change check: latent vs the newest window row
    "_same_values": (csign_module, "_same_values", "_changed"),
    "_update_sparse": ("site", "_update_sparse", None),  # sign, index copies, window write
    "_all_finite": (csign_module, "_all_finite", "_update_sparse"),
    "sign_changes": (sparse_module, "sign_changes", "_update_sparse"),  # the candidates
    "_decide_sparse": ("site", "_decide_sparse", "_update_sparse"),  # the rule for them
    "_within_threshold": ("site", "_within_threshold", "_decide_sparse"),  # order statistic
}
DENSE_PHASES: dict[str, tuple[Any, str, str | None]] = {
    "_update_dense": ("site", "_update_dense", None),
    "_allowed_gaussian": ("site", "_allowed_gaussian", "_update_dense"),  # the rule
    "order_statistic": (rule_module, "order_statistic", "_allowed_gaussian"),  # kthvalue
}
REST = "rest of forward (output, autograd wrapper)"


def _exclusive(
    inclusive: dict[str, float], phases: dict[str, tuple[Any, str, str | None]], total: float
) -> dict[str, float]:
    """Exclusive shares of ``total`` from inclusive phase seconds."""
    exclusive = dict(inclusive)
    for name, (_, _, parent) in phases.items():
        if parent is not None:
            exclusive[parent] -= inclusive[name]
    shares = {name: seconds / total for name, seconds in exclusive.items()}
    top_level = sum(inclusive[name] for name, (_, _, parent) in phases.items() if parent is None)
    shares[REST] = 1.0 - top_level / total
    return shares


def update_breakdown(site: CSign, latent: DriftingLatent, calls: int = 5) -> dict[str, Any]:
    """Phase shares and op shares of ``calls`` more updates of ``site`` (already warm)."""
    phases = SPARSE_PHASES if not site._dense(latent.tensor) else DENSE_PHASES
    clock = PhaseClock(
        {
            name: (site if owner == "site" else owner, attr)
            for name, (owner, attr, _) in phases.items()
        }
    )
    total = 0.0
    try:
        for _ in range(calls):
            latent.step()
            start = time.perf_counter()
            site(latent.tensor)
            total += time.perf_counter() - start
        inclusive = dict(clock.seconds)
    finally:
        clock.remove()
    ops = op_shares(lambda: site(latent.tensor), calls=calls, before=latent.step)
    return {"phases": _exclusive(inclusive, phases, total), "ops": ops}


# --------------------------------------------------------------------------------- cases


def csign_update(
    numel: int,
    repeats: int = 7,
    m: int = 2,
    delta: float = 0.1,
    breakdown_calls: int = 5,
) -> dict[str, Any]:
    """One c-sign update through a site's forward, auto path and dense path, against a
    preallocated ``copy_`` of the same number of float32 elements (steady state)."""
    latents = {name: DriftingLatent(numel) for name in ("auto", "dense", "copy")}
    sites = {"auto": new_site(numel, m, delta), "dense": new_site(numel, m, delta, "dense")}
    for name, site in sites.items():
        for _ in range(m + 2):
            latents[name].step()
            site(latents[name].tensor)
    dst = torch.empty(numel)
    src = latents["copy"].plain
    before_updates = {name: int(site.num_updates) for name, site in sites.items()}
    warmup = 1
    times = interleaved(
        {
            "auto": lambda: sites["auto"](latents["auto"].tensor),
            "dense": lambda: sites["dense"](latents["dense"].tensor),
            "copy": lambda: dst.copy_(src),
        },
        repeats=repeats,
        warmup=warmup,
        before={name: latent.step for name, latent in latents.items()},
    )
    calls = repeats + warmup
    updates_per_call = {
        name: (int(site.num_updates) - before_updates[name]) / calls for name, site in sites.items()
    }
    auto = sites["auto"]
    data: dict[str, Any] = {
        "elements": numel,
        "m": m,
        "delta": delta,
        "auto_vs_copy": times["auto"] / times["copy"],
        "dense_vs_copy": times["dense"] / times["copy"],
        "auto_path_is_sparse": float(not auto._dense(latents["auto"].tensor)),
        "auto_updates_per_call": updates_per_call["auto"],
        "dense_updates_per_call": updates_per_call["dense"],
        "flip_rate_last_update": int(auto.last_flips) / numel,
        "vetoed_rate_last_update": int(auto.last_vetoed) / numel,
        "auto_s": times["auto"],
        "dense_s": times["dense"],
        "copy_s": times["copy"],
    }
    if breakdown_calls:
        data["breakdown"] = {
            name: update_breakdown(site, latents[name], breakdown_calls)
            for name, site in sites.items()
        }
    return data


def state_bytes(numel: int = 1_000_000, m: int = 2) -> dict[str, Any]:
    """Bytes of c-sign state per latent element (per-element buffers only) at window ``m``."""
    site = new_site(numel, m, 0.1)
    per_element, fixed = per_element_state_bytes(site)
    return {
        "elements": numel,
        "m": m,
        "bytes_per_element": per_element / numel,
        "fixed_bytes_per_site": fixed,
    }


def patch_time(
    arch: str = "bireal_resnet18",
    reference: str = "resnet18",
    repeats: int = 7,
    num_classes: int = 1000,
) -> dict[str, Any]:
    """``uc.patch`` against ``torch.fx.symbolic_trace`` of the same model and against torch.ao's
    ``prepare_fx`` on a torchvision model of the same size (ResNet-18 for bireal_resnet18)."""
    import torchvision
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    model = timm.create_model(arch, num_classes=num_classes)
    ref_model = getattr(torchvision.models, reference)(num_classes=num_classes).eval()
    example = (torch.randn(1, 3, 224, 224),)
    qconfig = get_default_qconfig_mapping()
    fresh: dict[str, nn.Module] = {}

    def copy_model() -> None:
        fresh["patch"] = copy.deepcopy(model)

    def copy_reference() -> None:
        fresh["prepare"] = copy.deepcopy(ref_model)

    def prepare() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare_fx(fresh["prepare"], qconfig, example)

    times = interleaved(
        {
            "patch": lambda: uc.patch(fresh["patch"]),
            "symbolic_trace": lambda: torch.fx.symbolic_trace(model),
            "prepare_fx": prepare,
        },
        repeats=repeats,
        before={"patch": copy_model, "prepare_fx": copy_reference},
    )
    return {
        "model": arch,
        "reference": reference,
        "patch_vs_prepare_fx": times["patch"] / times["prepare_fx"],
        "patch_vs_symbolic_trace": times["patch"] / times["symbolic_trace"],
        **{f"{name}_s": seconds for name, seconds in times.items()},
    }


def _training(arch: str, batch: int, size: int | None, num_classes: int, seed: int = 0):
    """A patched model in training mode, its SGD step as a closure, and its sites."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=num_classes)
    channels, *hw = model.pretrained_cfg["input_size"]
    size = size or hw[-1]
    uc.patch(model).train()
    sites = [site for _, site in uc.sites(model)]
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, num_classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return model, step, sites, size


def csign_share_step(
    arch: str,
    batch: int,
    size: int | None = None,
    num_classes: int = 10,
    repeats: int = 7,
    overhead_calls: int = 2000,
) -> dict[str, Any]:
    """Share of a training step's wall time (forward + backward + SGD step) spent inside the
    c-sign sites, by instrumentation; median over ``repeats`` steady-state steps."""
    _, step, sites, size = _training(arch, batch, size, num_classes)
    m = max(site.m for site in sites)
    for _ in range(m + 2):  # steady state: t > m + 1 at every measured step
        step()
    clock = HostSiteClock(sites)
    shares, steps, inside, calls, updates = [], [], [], [], []
    try:
        for _ in range(repeats):
            before = sum(int(site.num_updates) for site in sites)
            clock.reset()
            start = time.perf_counter()
            step()
            seconds = time.perf_counter() - start
            shares.append(clock.seconds / seconds)
            steps.append(seconds)
            inside.append(clock.seconds)
            calls.append(clock.calls)
            updates.append((sum(int(site.num_updates) for site in sites) - before) / len(sites))
    finally:
        clock.remove()
    step_s = statistics.median(steps)
    per_call = hook_overhead_per_call(calls=overhead_calls)
    elements = sum(site.numel for site in sites)
    return {
        "model": arch,
        "batch": batch,
        "input": f"{size}x{size}",
        "sites": len(sites),
        "elements": elements,
        "share": statistics.median(shares),
        "share_min": min(shares),
        "share_max": max(shares),
        "site_calls_per_step": statistics.median(calls),
        "updates_per_site_per_step": statistics.median(updates),
        "hook_overhead_share": per_call * statistics.median(calls) / step_s,
        "flip_rate_last_step": sum(int(site.last_flips) for site in sites) / elements,
        "step_s": step_s,
        "inside_sites_s": statistics.median(inside),
        "hook_overhead_per_call_s": per_call,
    }


def stats_cost(
    arch: str = "bireal_resnet18",
    batch: int = 32,
    size: int | None = 224,
    num_classes: int = 1000,
    repeats: int = 7,
) -> dict[str, Any]:
    """``uc.stats(model)`` and ``uc.stats(model, uncertainty=True)`` as shares of one training
    step of the same model, interleaved with it (after ``m + 2`` steps, every site holds a
    full window)."""
    model, step, sites, size = _training(arch, batch, size, num_classes)
    for _ in range(max(site.m for site in sites) + 2):
        step()
    times = interleaved(
        {
            "step": step,
            "stats": lambda: uc.stats(model),
            "stats_uncertainty": lambda: uc.stats(model, uncertainty=True),
        },
        repeats=repeats,
    )
    return {
        "model": arch,
        "batch": batch,
        "input": f"{size}x{size}",
        "stats_share": times["stats"] / times["step"],
        "stats_uncertainty_share": times["stats_uncertainty"] / times["step"],
        **{f"{name}_s": seconds for name, seconds in times.items()},
    }


def _run(argv: list[str]) -> Callable[[], None]:
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}

    def go() -> None:
        subprocess.run(argv, check=True, capture_output=True, env=env)

    return go


def cli_startup(repeats: int = 7, warmup: int = 1) -> dict[str, Any]:
    """``uabnn-convert --help`` (as ``python -m uabnn_convert --help``) against
    ``python -c "import torch"``, each in a fresh interpreter, interleaved."""
    help_argv = [sys.executable, "-m", "uabnn_convert", "--help"]
    times = interleaved(
        {
            "help": _run(help_argv),
            "import_torch": _run([sys.executable, "-c", "import torch"]),
            "python": _run([sys.executable, "-c", "pass"]),
        },
        repeats=repeats,
        warmup=warmup,
    )
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", *help_argv[1:]],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in trace.stderr.splitlines() if "|" in line
    }
    return {
        "help_vs_import_torch": times["help"] / times["import_torch"],
        "help_imports_torch": float("torch" in imported),
        "help_modules_imported": float(len(imported)),
        **{f"{name}_s": seconds for name, seconds in times.items()},
    }


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_memory_child(arch: str, variant: str, batch: int, size: int, kwargs: dict) -> dict:
    """Run in a fresh process: peak RSS growth of two training steps (model included)."""
    before = _rss_kib()
    torch.manual_seed(0)
    model = timm.create_model(arch, **kwargs).train()
    if variant == "csign":
        uc.patch(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    channels = model.pretrained_cfg["input_size"][0]
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, kwargs.get("num_classes", 10), (batch,))
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_growth_kib": peak - before}


def peak_memory(arch: str, batch: int, size: int, **kwargs: Any) -> dict[str, Any]:
    """Peak memory of two training steps with c-sign against sign, each in a fresh process
    (whole-process RSS growth: model, state, activations, optimizer).

    A coarse figure: at batch 128 the activations (about 3.6 GB for wrn22_64) dominate, the
    c-sign state is about 1.5 % of that (13 B x 4.3M elements, its pages touched only as
    updates write them), and the C allocator's reuse of freed activation memory moves the
    peak by more than that from run to run. It bounds a regression, it does not resolve the
    state's own size (``state_bytes`` does)."""
    out = {}
    for variant in ("sign", "csign"):
        spec = json.dumps(
            {"arch": arch, "variant": variant, "batch": batch, "size": size, "kwargs": kwargs}
        )
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory_child", spec],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_growth_kib"]
    return {
        "model": arch,
        "batch": batch,
        "input": f"{size}x{size}",
        "csign_vs_sign": out["csign"] / out["sign"],
        "sign_peak_growth_mib": out["sign"] / 1024,
        "csign_peak_growth_mib": out["csign"] / 1024,
    }


def finite_numbers(data: Any) -> bool:
    """Whether every number in a (nested) result is finite; strings are allowed."""
    if isinstance(data, dict):
        return all(finite_numbers(v) for v in data.values())
    if isinstance(data, list):
        return all(finite_numbers(v) for v in data)
    if isinstance(data, (int, float)):
        return math.isfinite(data)
    return isinstance(data, str)
