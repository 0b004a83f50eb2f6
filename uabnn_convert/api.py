"""The public Python API: a thin layer over the pass (:mod:`.fx`) and one config object.

``patch`` resolves a :class:`~uabnn_convert.config.ConvertConfig`, scans the model, selects the
sites the config asks for and applies :class:`~uabnn_convert.fx.ConvertSigns`, all or nothing;
the other calls read or undo what it did. Files live one layer up (:mod:`.files`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .config import ConvertConfig
from .core import CSignSite
from .errors import ConversionError
from .fx import (
    ConvertSigns,
    FreezeSigns,
    InterceptSigns,
    RemoveSites,
    SiteRecord,
    capture_names,
    discover,
    freeze_and_fold,
    is_captured,
    is_rewritten,
    original_class,
    release,
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
    *,
    example_inputs: Any = None,
    **settings: Any,
) -> nn.Module:
    """Replace every weight sign of ``model`` by a stateful c-sign, in place; return ``model``.

    ``config`` is a :class:`~uabnn_convert.config.ConvertConfig` (or its ``to_dict()`` form);
    keyword ``settings`` (``m``, ``delta``, ``sigma``, ``uncertainty``, ``threshold``,
    ``include``, ``exclude``, ``overrides``) replace the config's fields.

    Each module's own forward is traced; a module the trace cannot capture faithfully (one
    that builds modules, branches on its input's shape, writes ``weight.data``, …) is captured
    at run time instead, which needs ``example_inputs`` (a tensor or a tuple of the model's
    positional inputs): the model runs once on them, on a copy, to learn which weight signs
    those modules make. Without them such modules are named in a :class:`ConversionError`.
    With them, the converted model's eval outputs are also checked against the original's.
    Either every selected site is converted or, on any error, the model is left as it was.
    """
    _check_module(model, "patch")
    cfg = ConvertConfig.coerce(config)
    if settings:
        cfg = cfg.replace(**settings)
    if any(is_rewritten(mod) or is_captured(mod) for mod in model.modules()):
        raise ConversionError(
            f"{model_name(model)} is already converted (or frozen); "
            "call uabnn_convert.unpatch(model) first to convert it again"
        )
    found, skipped = scan(model)
    refused = {
        s.module: s for s in skipped if s.kind == "trace" and cfg.may_select(_owner(s.module))
    }
    captured: dict[str, tuple[nn.Module, list[SiteRecord], str]] = {}
    if refused:
        if example_inputs is None:
            raise ConversionError(
                f"{len(refused)} module(s) of {model_name(model)} that hold weights cannot be "
                f"traced ({_few(refused.values())}); pass example_inputs=... (the model's "
                "input; on the command line --input-size C,H,W) so that patch captures them at run "
                "time, or exclude them"
            )
        owners = {_owner(name): s.target for name, s in refused.items()}
        for owner, records in discover(model, owners, example_inputs).items():
            if records:
                captured[owner] = (owners[owner], records, refused[owner or "<root>"].reason)
    names = capture_names(captured)
    candidates = [(f.owner, s.name) for f in found for s in f.sites]
    candidates += [(owner, name) for owner, site_names in names.items() for name in site_names]
    unmatched = cfg.unmatched_patterns(candidates)
    if unmatched and candidates:
        raise ConversionError(
            f"pattern(s) {unmatched} match no weight-sign site of {model_name(model)}; "
            f"sites are: {', '.join(_join(o, s) for o, s in candidates[:8])}"
            + (" …" if len(candidates) > 8 else "")
        )
    for f in found:
        f.sites = [s for s in f.sites if cfg.selects(f.owner, s.name)]
        kept = {s.name for s in f.sites}
        f.nodes = {n: name for n, name in f.nodes.items() if name in kept}
    found = [f for f in found if f.sites]
    captured = {
        owner: entry
        for owner, entry in captured.items()
        if all(cfg.selects(owner, name) for name in names[owner])
    }
    if not found and not captured:
        detail = f"; not captured: {_few(skipped)}" if skipped else ""
        selection = " among the selected modules" if candidates else ""
        raise ConversionError(
            f"no weight-sign site found in {model_name(model)}{selection}: looked for "
            f"{LOOKED_FOR}{detail}; weights binarized outside forward (in the training loop) "
            f"can use uabnn_convert.CSign directly: {MANUAL_EXAMPLE} (see "
            "examples/binarize_outside_forward.py)"
        )
    reference = _reference_outputs(model, example_inputs)
    ConvertSigns(found, cfg.settings_for).apply(model)
    try:
        InterceptSigns(captured, _site_maker(cfg)).apply(model)
        _check_parity(model, example_inputs, reference)
    except BaseException:
        RemoveSites().apply(model)
        for module in model.modules():
            release(module)
        raise
    if example_inputs is not None:
        model.__dict__[EXAMPLE_ATTR] = input_specs(example_inputs)
    return model


EXAMPLE_ATTR = "_uabnn_example_inputs"
MANUAL_EXAMPLE = "binarize = uc.CSign(p.shape, m=2, delta=0.1); p.data = binarize(latent) * alpha"


def _owner(name: str) -> str:
    return "" if name == "<root>" else name


def _few(items: Iterable[Any], n: int = 3) -> str:
    items = list(items)
    shown = "; ".join(f"{s.module}: {s.reason}" for s in items[:n])
    return shown + (f"; and {len(items) - n} more" if len(items) > n else "")


def _site_maker(cfg: ConvertConfig) -> Callable[[str, str, SiteRecord], CSignSite]:
    def make(owner: str, name: str, record: SiteRecord) -> CSignSite:
        return CSignSite(
            torch.sign,
            record.shape,
            family="generic",
            op_label=record.op,
            pattern="run-time capture",
            dtype=record.dtype,
            device=record.device,
            site=_join(owner, name),
            **cfg.settings_for(owner, name),
        )

    return make


def input_specs(example_inputs: Any) -> list[dict[str, Any]]:
    """Shapes and dtypes of example inputs, to make equal ones again (a file records them)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_inputs must be a tensor or a tuple of tensors")
    return [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in inputs]


def example_from_specs(
    specs: Sequence[Mapping[str, Any]], seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Inputs of the recorded shapes and dtypes (seeded noise: a capture needs their shapes)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        dtype = getattr(torch, spec["dtype"])
        shape = [int(d) for d in spec["shape"]]
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        else:
            out.append(torch.zeros(shape, dtype=dtype))
    return tuple(out)


def _reference_outputs(model: nn.Module, example_inputs: Any) -> Any:
    if example_inputs is None:
        return None
    return _eval_outputs(model, example_inputs)


def _eval_outputs(model: nn.Module, example_inputs: Any) -> Any:
    modes = {m: m.training for m in model.modules()}
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        model.eval()
        with torch.no_grad():
            return model(*inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _check_parity(model: nn.Module, example_inputs: Any, reference: Any) -> None:
    """Before any update a converted model computes exactly what the original did."""
    if example_inputs is None:
        return
    want, got = tree_leaves(reference), tree_leaves(_eval_outputs(model, example_inputs))
    if len(want) != len(got) or not all(
        torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        for a, b in zip(want, got, strict=True)
    ):
        raise ConversionError(
            f"the converted {model_name(model)} does not reproduce the original's outputs on "
            "example_inputs before any update; it was left unconverted"
        )


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


def stats(model: nn.Module, *, uncertainty: bool = False) -> Report:
    """Per site and in total: updates, flips and vetoed flips at the last update, flip rate and
    vetoed rate — scalar reads, cheap enough for every step. ``uncertainty=True`` adds Σ f̂,
    the paper's "uncertainty of the network", which costs a pass over every site's window."""
    rows = []
    for name, s in sites(model):
        s.check()
        n = s.numel
        flips, vetoed = int(s.last_flips), int(s.last_vetoed)
        row = {
            "site": name,
            "elements": n,
            "updates": int(s.num_updates),
            "flips": flips,
            "vetoed": vetoed,
            "flip_rate": flips / n,
            "vetoed_rate": vetoed / n,
        }
        if uncertainty:
            row["uncertainty"] = s.uncertainty_sum()
        rows.append(row)
    if not rows:
        raise ConversionError(f"{model_name(model)} has no c-sign site; call patch() first")
    n_all = sum(r["elements"] for r in rows)
    extra = {
        "updates": max(r["updates"] for r in rows),
        "flip_rate": sum(r["flips"] for r in rows) / n_all,
        "vetoed_rate": sum(r["vetoed"] for r in rows) / n_all,
    }
    sums = ["elements", "flips", "vetoed", *(["uncertainty"] if uncertainty else [])]
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
    if not any(is_rewritten(mod) or is_captured(mod) for mod in model.modules()):
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
