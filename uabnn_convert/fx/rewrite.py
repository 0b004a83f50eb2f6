"""Graph rewrites over the sites :mod:`.detect` found. One transform = one small class.

Each transform rewrites the site nodes of a module's own graph in place, lints the graph and
installs it on that module (:func:`.tracing.install_forward`). Nothing else in the model is
touched, and every original parameter and buffer keeps its name.

* :class:`ConvertSigns` — each site becomes a :class:`~uabnn_convert.core.CSignSite` submodule
  of its owner, called where the sign op was (``patch``); all modules or none.
* :class:`FreezeSigns` — each site becomes a constant buffer holding what the site returns in
  eval mode, so no c-sign code is left (``freeze``).
* :class:`RemoveSites` — the original forwards again, sites dropped (``unpatch``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..core import CSignSite
from .detect import FoundSite, ModuleSites, as_class, find_sites, scan, sign_kind
from .intercept import freeze_captured, is_captured, plan_of, release
from .names import frozen_name
from .tracing import (
    compiled_once,
    evaluate_args,
    install_forward,
    is_rewritten,
    original_class,
    restore_class,
    shared_trace_patches,
    trace_module,
)

SettingsFor = Callable[[str, str], dict[str, Any]]


def _replace(graph: fx.Graph, node: fx.Node, make: Callable[[], fx.Node]) -> None:
    with graph.inserting_before(node):
        new = make()
    new.meta.update({k: v for k, v in node.meta.items() if k != "uabnn_constant"})
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _site_nodes(graph: fx.Graph, found: ModuleSites) -> list[tuple[fx.Node, str]]:
    return [(n, found.nodes[n]) for n in list(graph.nodes) if n in found.nodes]


class ConvertSigns:
    """Rewrite every found weight-sign op into a stateful c-sign site, all or nothing.

    ``settings_for(owner, site_name)`` gives each site's settings. If any module fails, every
    module already rewritten is restored and the error propagates.
    """

    def __init__(self, found: list[ModuleSites], settings_for: SettingsFor) -> None:
        self.found = found
        self.settings_for = settings_for
        self.sites: list[CSignSite] = []

    def apply(self, model: nn.Module) -> nn.Module:
        try:
            with compiled_once():
                for found in self.found:
                    self.sites += self._convert(found)
        except BaseException:
            for found in self.found:
                _remove_sites(found.module)
            raise
        return model

    def _convert(self, found: ModuleSites) -> list[CSignSite]:
        module = found.module
        made = []
        for spec in found.sites:
            qualname = f"{found.owner}.{spec.name}" if found.owner else spec.name
            site = _new_site(spec, qualname, self.settings_for(found.owner, spec.name))
            site.train(module.training)
            module.add_module(spec.name, site)
            made.append(site)
        _call_sites(found)
        install_forward(module, found.graphs, found.owner or "<root>", refresh_converted)
        return made


def _new_site(spec: FoundSite, qualname: str, settings: dict[str, Any]) -> CSignSite:
    return CSignSite(
        spec.op,
        spec.shape,
        family=spec.family,
        op_label=spec.op_label,
        pattern=spec.pattern,
        dtype=spec.dtype,
        device=spec.device,
        site=qualname,
        **settings,
    )


def _call_sites(found: ModuleSites) -> None:
    """Rewrite each site node of the graphs into a call of its site submodule."""
    for graph in found.graphs.graphs():
        for node, name in _site_nodes(graph, found):
            kind = sign_kind(node)
            if kind == "function":
                args, kwargs = node.args, dict(node.kwargs)
            elif kind == "module":
                with graph.inserting_before(node):
                    child = graph.get_attr(node.target)
                args, kwargs = (child, *node.args), dict(node.kwargs)
            else:
                args, kwargs = (node.args[0],), {}
            _replace(graph, node, lambda: graph.call_module(name, args, kwargs))  # noqa: B023


def refresh_converted(module: nn.Module) -> None:
    """Capture a converted module again after an attribute its graphs read has changed (an
    epoch counter, a schedule): its sites keep their state, a site the new trace finds for the
    first time gets the settings of the module's other sites."""
    existing = {n: c for n, c in module.named_children() if isinstance(c, CSignSite)}
    base = original_class(module)
    with shared_trace_patches(), as_class(module, base):
        graphs = trace_module(module)
    sites, info = find_sites("", module, graphs)
    settings = next(iter(existing.values())).settings() if existing else {}
    for spec in sites:
        if spec.name not in existing:
            site = _new_site(spec, f"{base.__name__}.{spec.name}", settings)
            site.train(module.training)
            module.add_module(spec.name, site)
    found = ModuleSites("", module, graphs, sites, info["nodes"])
    _call_sites(found)
    install_forward(module, graphs, base.__name__, refresh_converted)


class FreezeSigns:
    """Rewrite every site into the constant it holds: a deployable, c-sign-free model.

    After :meth:`apply`, :attr:`frozen` lists the frozen modules with their rewritten graphs
    (:class:`~.fold.FoldConstants` folds them further).
    """

    def __init__(self) -> None:
        self.frozen: list[ModuleSites] = []
        self.captured: dict[str, list[str]] = {}  # constant key -> site it came from

    def apply(self, model: nn.Module) -> nn.Module:
        for owner, module in model.named_modules():
            if is_captured(module):
                sites = plan_of(module).sites
                for site, buffer in zip(sites, freeze_captured(module), strict=True):
                    if buffer is not None:
                        self.captured[_join(owner, buffer)] = [_join(owner, site)]
        found, _ = scan(model)
        for f in found:
            f.sites = [s for s in f.sites if isinstance(getattr(f.module, s.name, None), CSignSite)]
            names = {s.name for s in f.sites}
            f.nodes = {n: name for n, name in f.nodes.items() if name in names}
            if f.sites:
                self._freeze(f)
                self.frozen.append(f)
        leftover = [name for name, m in model.named_modules() if isinstance(m, CSignSite)]
        if leftover:
            raise RuntimeError(f"could not freeze c-sign site(s) {leftover}")
        return model

    def _freeze(self, found: ModuleSites) -> None:
        module = found.module
        for graph in found.graphs.graphs():
            cache: dict[fx.Node, Any] = {}
            for node, name in _site_nodes(graph, found):
                site = module.get_submodule(name)
                with torch.no_grad():
                    args, kwargs = evaluate_args(node, module, cache)
                    if sign_kind(node) == "module":
                        args = (module.get_submodule(node.target), *args)
                    value = site.frozen_value(*args, **kwargs)
                buffer = frozen_name(name)
                if buffer not in module._buffers:
                    module.register_buffer(buffer, value)
                _replace(graph, node, lambda: graph.get_attr(buffer))  # noqa: B023
        for spec in found.sites:
            delattr(module, spec.name)
        install_forward(module, found.graphs, found.owner or "<root>")


class RemoveSites:
    """Undo the conversion of every module: original forwards, no sites, no capture hooks."""

    def apply(self, model: nn.Module) -> nn.Module:
        for module in list(model.modules()):
            if is_rewritten(module):
                _remove_sites(module)
            release(module)
        return model


def _join(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def _remove_sites(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, CSignSite):
            delattr(module, name)
    restore_class(module)
