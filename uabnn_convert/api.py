"""The public Python API: a thin layer over the pass (:mod:`.fx`) and one config object.

``patch`` resolves a :class:`~uabnn_convert.config.ConvertConfig`, scans the model, selects the
sites the config asks for and applies :class:`~uabnn_convert.fx.ConvertSigns`, all or nothing;
the other calls read or undo what it did. Files live one layer up (:mod:`.files`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from .config import ConvertConfig
from .core import CSignSite
from .errors import ConversionError
from .fx import (
    ConvertSigns,
    FreezeSigns,
    RemoveSites,
    freeze_and_fold,
    is_rewritten,
    original_class,
    scan,
)
from .report import Report

__all__ = ["ConversionError", "freeze", "inspect", "patch", "sites", "stats", "unpatch"]

LOOKED_FOR = (
    "a torch.sign / Tensor.sign call, or an autograd.Function whose forward calls sign once, "
    "whose input is computed from the model's parameters and buffers only (a weight sign)"
)


def _check_module(model: Any, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} expects a torch.nn.Module, got {type(model).__name__}")


def model_name(model: nn.Module) -> str:
    """The model's class name for messages (``DistributedDataParallel(BiRealNet)``)."""
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and type(model).__name__ in (
        "DataParallel",
        "DistributedDataParallel",
    ):
        return f"{type(model).__name__}({original_class(inner).__name__})"
    return original_class(model).__name__


def _join(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def patch(
    model: nn.Module,
    config: ConvertConfig | Mapping[str, Any] | None = None,
    **settings: Any,
) -> nn.Module:
    """Replace every weight sign of ``model`` by a stateful c-sign, in place; return ``model``.

    ``config`` is a :class:`~uabnn_convert.config.ConvertConfig` (or its ``to_dict()`` form);
    keyword ``settings`` (``m``, ``delta``, ``sigma``, ``uncertainty``, ``include``,
    ``exclude``, ``overrides``) replace the config's fields. Either every selected site is
    converted or, on any error, the model is left as it was.
    """
    _check_module(model, "patch")
    cfg = ConvertConfig.coerce(config)
    if settings:
        cfg = cfg.replace(**settings)
    if any(is_rewritten(mod) for mod in model.modules()):
        raise ConversionError(
            f"{model_name(model)} is already converted (or frozen); "
            "call uabnn_convert.unpatch(model) first to convert it again"
        )
    found, skipped = scan(model)
    candidates = [(f.owner, s.name) for f in found for s in f.sites]
    unmatched = cfg.unmatched_patterns(candidates)
    if unmatched and candidates:
        raise ConversionError(
            f"pattern(s) {unmatched} match no weight-sign site of {model_name(model)}; "
            f"sites are: {', '.join(_join(o, s) for o, s in candidates[:8])}"
            + (" …" if len(candidates) > 8 else "")
        )
    for f in found:
        f.sites = [s for s in f.sites if cfg.selects(f.owner, s.name)]
        names = {s.name for s in f.sites}
        f.nodes = {n: name for n, name in f.nodes.items() if name in names}
    found = [f for f in found if f.sites]
    if not found:
        detail = f"; not traceable: {skipped[0].module}: {skipped[0].reason}" if skipped else ""
        selection = " among the selected modules" if candidates else ""
        raise ConversionError(
            f"no weight-sign site found in {model_name(model)}{selection}: looked for "
            f"{LOOKED_FOR}{detail}"
        )
    ConvertSigns(found, cfg.settings_for).apply(model)
    return model


def sites(model: nn.Module) -> Iterator[tuple[str, CSignSite]]:
    """``(qualified_name, site)`` for every converted site, in module order."""
    _check_module(model, "sites")
    return ((n, m) for n, m in model.named_modules() if isinstance(m, CSignSite))


def inspect(model: nn.Module) -> Report:
    """Dry run: the sites ``patch`` would convert, or the sites a converted model has."""
    _check_module(model, "inspect")
    converted = list(sites(model))
    columns = ["site", "family", "pattern", "shape", "elements"]
    notes: list[str] = []
    if converted:
        rows = [
            {
                "site": name,
                "family": s.family,
                "pattern": s.pattern,
                "op": s.op_label,
                "shape": tuple(s.shape),
                "elements": s.numel,
                **s.settings(),
                "updates": int(s.num_updates),
            }
            for name, s in converted
        ]
        columns += ["m", "delta", "sigma", "updates"]
        title = f"c-sign sites of {model_name(model)} (converted)"
    else:
        found, skipped = scan(model)
        rows = [
            {
                "site": _join(f.owner, s.name),
                "family": s.family,
                "pattern": s.pattern,
                "op": s.op_label,
                "shape": tuple(s.shape),
                "elements": s.shape.numel(),
            }
            for f in found
            for s in f.sites
        ]
        title = f"weight-sign sites of {model_name(model)} (dry run)"
        notes = [f"not converted: {s.module}: {s.reason}" for s in skipped]
    return Report.totalled(
        title,
        columns,
        rows,
        label=("site", f"{len(rows)} sites"),
        sums=["elements"],
        notes=notes,
    )


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
        raise ConversionError(f"{model_name(model)} has no c-sign site; call patch() first")
    sums = ["elements", "flips", "vetoed", "uncertainty"]
    n_all = sum(r["elements"] for r in rows)
    extra = {
        "updates": max(r["updates"] for r in rows),
        "flip_rate": sum(r["flips"] for r in rows) / n_all,
        "vetoed_rate": sum(r["vetoed"] for r in rows) / n_all,
    }
    return Report.totalled(
        f"c-sign statistics of {model_name(model)}",
        list(rows[0]),
        rows,
        label=("site", "total"),
        sums=sums,
        extra=extra,
    )


def unpatch(model: nn.Module) -> nn.Module:
    """Back to plain sign, in place: original forwards, c-sign state dropped."""
    _check_module(model, "unpatch")
    if not any(is_rewritten(mod) for mod in model.modules()):
        raise ConversionError(f"{model_name(model)} is not converted; nothing to unpatch")
    return RemoveSites().apply(model)


def freeze(model: nn.Module, *, inplace: bool = False, fold: bool = False) -> nn.Module:
    """A deployable model: every site replaced by the binary value it holds, as a constant.

    The result is in eval mode; its eval outputs equal the converted model's bit for bit. It
    contains no c-sign module or code and traces with ``torch.fx`` and ``torch.export``.
    ``fold=True`` also evaluates what each binarizing layer computes from its weights alone
    (scales, straight-through arithmetic) into constants and drops the latent weights nothing
    reads any more: the smallest float model, as the command line's ``freeze`` writes it.
    By default the model is copied (``copy.deepcopy``) and left as it is; ``inplace=True``
    freezes ``model`` itself, for models that cannot be copied.
    """
    _check_module(model, "freeze")
    if not any(True for _ in sites(model)):
        raise ConversionError(f"{model_name(model)} has no c-sign site; call patch() first")
    if inplace:
        target = model
    else:
        try:
            target = copy.deepcopy(model)
        except Exception as e:
            raise ConversionError(
                f"cannot copy {model_name(model)} to freeze it ({type(e).__name__}: "
                f"{_first_line(e)}); freeze it in place with freeze(model, inplace=True)"
            ) from e
    if fold:
        return freeze_and_fold(target)[0]
    return FreezeSigns().apply(target.eval())


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else ""
