"""The benchmark cases. Each returns a dict of plain numbers (ratios first, raw medians kept
for the JSON file) so the report is computed as data and rendered separately."""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import warnings
from typing import Any

import timm
import torch
from torch import nn

import uabnn_convert as uc
import uabnn_convert.zoo
from uabnn_convert.core import CSign

from .timing import interleaved


def _cycle(items: list[Any]):
    state = {"i": 0}

    def take() -> Any:
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return item

    return take


def csign_update(numel: int, repeats: int = 9, m: int = 2, delta: float = 0.1) -> dict:
    """One c-sign update (steady state, t > m + 1) against ``clone()`` of the same tensor."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(numel, generator=gen) * 0.05
    step = torch.randn(numel, generator=gen) * 0.05e-3
    unit = CSign((numel,), m=m, delta=delta).train()
    for i in range(m + 2):
        unit.advance(base + step * i)
    latents = [base + step * (m + 2 + i) for i in range(repeats + 1)]
    next_update, next_clone = _cycle(latents), _cycle(latents)
    times = interleaved(
        {"update": lambda: unit.advance(next_update()), "clone": lambda: next_clone().clone()},
        repeats=repeats,
    )
    # Per-element buffers (window, held state); the handful of scalars are a fixed overhead.
    state_bytes = sum(b.numel() * b.element_size() for b in unit.buffers() if b.dim())
    return {
        "elements": numel,
        "update_vs_clone": times["update"] / times["clone"],
        "state_bytes_per_element": state_bytes / numel,
        "update_s": times["update"],
        "clone_s": times["clone"],
        "flips_last_update": int(unit.last_flips),
        "vetoed_last_update": int(unit.last_vetoed),
    }


def patch_time(arch: str = "bireal_resnet18", repeats: int = 7) -> dict:
    """``uc.patch`` against ``torch.fx.symbolic_trace`` of the same model and against torch.ao's
    ``prepare_fx`` on torchvision's ResNet-18 (a model of the same size)."""
    import torchvision
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    model = timm.create_model(arch, num_classes=1000)
    copies = [copy.deepcopy(model) for _ in range(repeats + 1)]
    next_copy = _cycle(copies)
    reference = torchvision.models.resnet18().eval()
    next_reference = _cycle([copy.deepcopy(reference) for _ in range(repeats + 1)])
    example = (torch.randn(1, 3, 224, 224),)
    qconfig = get_default_qconfig_mapping()

    def prepare() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare_fx(next_reference(), qconfig, example)

    times = interleaved(
        {
            "patch": lambda: uc.patch(next_copy()),
            "symbolic_trace": lambda: torch.fx.symbolic_trace(model),
            "prepare_fx": prepare,
        },
        repeats=repeats,
    )
    return {
        "model": arch,
        "patch_vs_symbolic_trace": times["patch"] / times["symbolic_trace"],
        "patch_vs_prepare_fx": times["patch"] / times["prepare_fx"],
        **{f"{k}_s": v for k, v in times.items()},
    }


def train_step(arch: str, batch: int, size: int, repeats: int = 7, **kwargs: Any) -> dict:
    """Forward + backward + SGD step with c-sign against the same model with plain sign."""
    torch.manual_seed(0)
    sign_model = timm.create_model(arch, **kwargs).train()
    csign_model = uc.patch(copy.deepcopy(sign_model)).train()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, kwargs.get("num_classes", 10), (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def stepper(model: nn.Module):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        return step

    times = interleaved(
        {"csign": stepper(csign_model), "sign": stepper(sign_model)}, repeats=repeats
    )
    return {
        "model": arch,
        "batch": batch,
        "input": f"{size}x{size}",
        "csign_vs_sign": times["csign"] / times["sign"],
        "csign_s": times["csign"],
        "sign_s": times["sign"],
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
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, kwargs.get("num_classes", 10), (batch,))
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_growth_kib": peak - before}


def peak_memory(arch: str, batch: int, size: int, **kwargs: Any) -> dict:
    """Peak memory of a training step with c-sign against sign, each in its own process."""
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
