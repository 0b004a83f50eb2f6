"""The public Python API: a thin layer over the detection pass and the rewrites."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from .config import ConvertConfig
from .detect import scan
from .report import Report
from .rewrite import ConvertSigns, freeze_modules, remove_sites
from .site import CSignSite
from .tracing import is_rewritten

LOOKED_FOR = (
    "a torch.sign / Tensor.sign call, or an autograd.Function whose forward calls sign once, "
    "whose input is computed from the model's parameters and buffers only (a weight sign)"
)


class ConversionError(RuntimeError):
    """The model cannot be converted as asked (no site, a bad pattern, already converted)."""


def _check_module(model: Any, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} expects a torch.nn.Module, got {type(model).__name__}")


def _model_name(model: nn.Module) -> str:
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and type(model).__name__ in (
        "DataParallel",
        "DistributedDataParallel",
    ):
        return f"{type(model).__name__}({type(inner).__name__})"
    return type(model).__name__


def patch(
    model: nn.Module,
    m: int = 2,
    delta: float = 0.1,
    sigma: str | float = "std",
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    uncertainty: str = "gaussian",
) -> nn.Module:
    """Replace every weight sign of ``model`` by a stateful c-sign, in place; return ``model``.

    Either every selected site is converted or, on any error, the model is left as it was.
    ``overrides`` maps module-name globs to per-site settings (see :mod:`.config`).
    """
    _check_module(model, "patch")
    config = ConvertConfig(m, delta, sigma, uncertainty, include, exclude, overrides or {})
    if any(is_rewritten(mod) for mod in model.modules()):
        raise ConversionError(
            f"{_model_name(model)} is already converted (or frozen); "
            "call uabnn_convert.unpatch(model) first to convert it again"
        )
    found, skipped = scan(model)
    candidates = [(f.owner, s.name) for f in found for s in f.sites]
    unmatched = config.unmatched_patterns(candidates)
    if unmatched and candidates:
        raise ConversionError(
            f"pattern(s) {unmatched} match no weight-sign site of {_model_name(model)}; "
            f"sites are: {', '.join(_join(o, s) for o, s in candidates[:8])}"
            + (" …" if len(candidates) > 8 else "")
        )
    for f in found:
        f.sites = [s for s in f.sites if config.selects(f.owner, s.name)]
        f.nodes = {n: name for n, name in f.nodes.items() if name in {s.name for s in f.sites}}
    found = [f for f in found if f.sites]
    if not found:
        detail = f"; not traceable: {skipped[0].module}: {skipped[0].reason}" if skipped else ""
        selection = " among the selected modules" if candidates else ""
        raise ConversionError(
            f"no weight-sign site found in {_model_name(model)}{selection}: looked for "
            f"{LOOKED_FOR}{detail}"
        )
    transform = ConvertSigns(config.settings_for)
    done = []
    try:
        for f in found:
            transform.apply(f)
            done.append(f.module)
    except BaseException:
        for module in [f.module for f in found]:
            remove_sites(module)
        raise
    return model


def _join(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def sites(model: nn.Module) -> Iterator[tuple[str, CSignSite]]:
    """``(qualified_name, site)`` for every converted site, in module order."""
    _check_module(model, "sites")
    return ((n, m) for n, m in model.named_modules() if isinstance(m, CSignSite))


def inspect(model: nn.Module) -> Report:
    """Dry run: the sites ``patch`` would convert, or the sites a converted model has."""
    _check_module(model, "inspect")
    converted = list(sites(model))
    columns = ["site", "family", "op", "shape", "elements"]
    if converted:
        rows = [
            {
                "site": name,
                "family": s.family,
                "op": s.op_label,
                "shape": tuple(s.shape),
                "elements": s.numel,
                "m": s.m,
                "delta": s.delta,
                "sigma": s.sigma,
                "updates": int(s.num_updates),
            }
            for name, s in converted
        ]
        columns += ["m", "delta", "sigma", "updates"]
        title = f"c-sign sites of {_model_name(model)} (converted)"
        notes: list[str] = []
    else:
        found, skipped = scan(model)
        rows = [
            {
                "site": _join(f.owner, s.name),
                "family": s.family,
                "op": s.op_label,
                "shape": tuple(s.shape),
                "elements": s.shape.numel(),
            }
            for f in found
            for s in f.sites
        ]
        title = f"weight-sign sites of {_model_name(model)} (dry run)"
        notes = [f"not converted: {s.module}: {s.reason}" for s in skipped]
    total = {"site": f"{len(rows)} sites", "elements": sum(r["elements"] for r in rows)}
    return Report(title, columns, rows, total, notes)


def stats(model: nn.Module) -> Report:
    """Per site and in total: updates, flips and vetoed flips at the last update, flip rate,
    vetoed rate, and Σ f̂ (the paper's uncertainty of the network)."""
    rows = []
    for name, s in sites(model):
        n = s.numel
        flips, vetoed = int(s.last_flips), int(s.last_vetoed)
        rows.append(
            {
                "site": name,
                "elements": n,
                "updates": int(s.num_updates),
                "flips": flips,
                "vetoed": vetoed,
                "flip_rate": flips / n,
                "vetoed_rate": vetoed / n,
                "uncertainty": s.uncertainty_sum(),
            }
        )
    if not rows:
        raise ConversionError(f"{_model_name(model)} has no c-sign site; call patch() first")
    n_all = sum(r["elements"] for r in rows)
    flips = sum(r["flips"] for r in rows)
    vetoed = sum(r["vetoed"] for r in rows)
    total = {
        "site": "total",
        "elements": n_all,
        "updates": max(r["updates"] for r in rows),
        "flips": flips,
        "vetoed": vetoed,
        "flip_rate": flips / n_all,
        "vetoed_rate": vetoed / n_all,
        "uncertainty": sum(r["uncertainty"] for r in rows),
    }
    columns = list(rows[0])
    return Report(f"c-sign statistics of {_model_name(model)}", columns, rows, total)


def unpatch(model: nn.Module) -> nn.Module:
    """Back to plain sign, in place: original forwards, c-sign state dropped."""
    _check_module(model, "unpatch")
    if not any(is_rewritten(mod) for mod in model.modules()):
        raise ConversionError(f"{_model_name(model)} is not converted; nothing to unpatch")
    for module in list(model.modules()):
        if is_rewritten(module):
            remove_sites(module)
    return model


def freeze(model: nn.Module) -> nn.Module:
    """A deployable copy: every site replaced by the binary value it holds, as a constant.

    The copy is in eval mode; its eval outputs equal the converted model's. It contains no
    c-sign module or code and traces with ``torch.fx`` and ``torch.export``.
    """
    _check_module(model, "freeze")
    if not any(True for _ in sites(model)):
        raise ConversionError(f"{_model_name(model)} has no c-sign site; call patch() first")
    frozen = copy.deepcopy(model).eval()
    freeze_modules(frozen)
    return frozen
