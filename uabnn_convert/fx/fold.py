"""Fold the weight-only part of frozen modules into constant buffers (a transform of its own).

``FreezeSigns`` replaces each site by the binary value it holds, but the frozen forward still
reads the float latent weight: Bi-Real/ReActNet compute ``mean|W|`` from it every call, IR-Net
its power-of-two scale, and the straight-through arithmetic
``(s·b).detach() - clamp(W).detach() + clamp(W)`` is evaluated in eval mode too. That last one
is not an identity in floating point (measured on Bi-Real layers: 0.2–8 % of the effective
weights differ from ``s·b`` by 1–4 ulp), so storing ±1 bits and a scale would change outputs.

The mechanism is general rather than per family: in each frozen module's eval graph, every
value computed from parameters and buffers alone is evaluated once, at the point where it
meets an activation, and becomes a buffer. What is left is exactly what the layer multiplies
activations by — Bi-Real's effective weight, ReActNet's ±1 kernel and per-channel scale,
IR-Net's ``b·2^round(log2 mean|w|)``, XNOR's ``b·alpha`` — and latent weights nothing reads any
more are dropped. The folded values are computed by the same ops on the same tensors as the
frozen forward computes them, so outputs are unchanged bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .detect import ModuleSites
from .names import frozen_name
from .rewrite import FreezeSigns
from .tracing import evaluate, install_forward

FOLDED_PREFIX = "folded_"


class FoldConstants:
    """Fold the weight-only subgraphs of modules that :class:`~.rewrite.FreezeSigns` froze.

    After :meth:`apply`, :attr:`derived` maps every state_dict key whose tensor a site's binary
    value flows into to the qualified names of those sites (the tensors a packed export stores
    as bits).
    """

    def __init__(self, frozen: list[ModuleSites]) -> None:
        self.frozen = frozen
        self.derived: dict[str, list[str]] = {}

    def apply(self, model: nn.Module) -> nn.Module:
        for found in self.frozen:
            for name, site_names in _fold_module(found).items():
                key = f"{found.owner}.{name}" if found.owner else name
                self.derived[key] = site_names
        return model


def _fold_module(found: ModuleSites) -> dict[str, list[str]]:
    """Fold one frozen module's eval graph(s) and install them for both modes.

    A node is constant when it reads only attributes (no input, no submodule call); a constant
    node used by a non-constant one is evaluated once and becomes a buffer. Direct parameters
    and buffers the eval graphs no longer read are removed (a ``None`` slot such as an absent
    bias stays: other code reads it).
    """
    module, owner, graphs = found.module, found.owner, found.graphs
    binary = {frozen_name(s.name): f"{owner}.{s.name}" if owner else s.name for s in found.sites}
    evals: dict[int, fx.Graph] = {}
    for (training, *_), graph in graphs.variants.items():
        if not training:
            evals.setdefault(id(graph), graph)
    derived: dict[str, list[str]] = {}
    for index, graph in enumerate(evals.values()):
        prefix = FOLDED_PREFIX if index == 0 else f"{FOLDED_PREFIX}{index}_"
        derived.update(_fold_graph(module, graph, binary, prefix))
    variants = {key: graphs.variants[(False, *key[1:])] for key in graphs.variants}
    install_forward(module, dataclasses.replace(graphs, variants=variants), owner or "<root>")
    used = {
        str(n.target).split(".")[0] for g in evals.values() for n in g.nodes if n.op == "get_attr"
    }
    for table in (module._parameters, module._buffers):
        for key in [k for k, v in table.items() if k not in used and v is not None]:
            del table[key]
    module._non_persistent_buffers_set &= set(module._buffers)
    return derived


def _fold_graph(
    module: nn.Module, graph: fx.Graph, binary: Mapping[str, str], prefix: str
) -> dict[str, list[str]]:
    const: dict[fx.Node, bool] = {}
    origin: dict[fx.Node, set[str]] = {}
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "get_attr":
            const[node] = True
            origin[node] = {binary[node.target]} if node.target in binary else set()
        else:
            const[node] = (
                node.op in ("call_function", "call_method")
                and bool(inputs)
                and all(const[i] for i in inputs)
            )
            origin[node] = set().union(*(origin[i] for i in inputs)) if inputs else set()
    cache: dict[fx.Node, Any] = {}
    derived: dict[str, list[str]] = {}
    for node in list(graph.nodes):
        if not const[node] or all(const[u] for u in node.users):
            continue
        if node.op == "get_attr":
            if origin[node]:
                derived[str(node.target)] = sorted(origin[node])
            continue
        with torch.no_grad():
            value = evaluate(node, module, cache)
        if not isinstance(value, Tensor):
            continue  # a Python value: its inputs stay, as they are
        name = f"{prefix}{node.name}"
        module.register_buffer(name, value.detach().clone())
        with graph.inserting_before(node):
            new = graph.get_attr(name)
        node.replace_all_uses_with(new)
        if origin[node]:
            derived[name] = sorted(origin[node])
    graph.eliminate_dead_code(is_impure_node=_impure)
    return derived


def freeze_and_fold(model: nn.Module) -> tuple[nn.Module, dict[str, list[str]]]:
    """Freeze every site of ``model`` in place, then fold: the deployable model.

    Returns the model (in eval mode) and :attr:`FoldConstants.derived` (which state_dict
    tensors each site's binary value flows into).
    """
    freezer = FreezeSigns()
    freezer.apply(model.eval())
    folder = FoldConstants(freezer.frozen)
    folder.apply(model)
    return model, {**freezer.captured, **folder.derived}


def _impure(node: fx.Node) -> bool:
    """Keep calls of child modules (they may have side effects; a standalone graph cannot ask
    them) and whatever fx itself calls impure."""
    return node.op == "call_module" or node.is_impure()
