"""Find the weight-sign sites of a model: one data-flow rule, then a label for the report.

The rule: a sign op (``torch.sign``, ``Tensor.sign``, an ``autograd.Function`` or a child module
whose forward calls sign exactly once) is a *weight* site when its input is computed from the
module's parameters, buffers and constants only — no placeholder (model input) among its
ancestors. Activation signs depend on the input and are left alone.

Labels are only labels (the rewrite does the same thing for every site). ``pattern`` says what
was seen around the sign — how the latent is prepared (centred, standardised, clamped), how the
gradient passes (a Function, an STE by ``.detach()`` arithmetic with or without a clip, none),
how the result is scaled. ``family`` names a method only when the pattern identifies it:
``irnet`` (a Function on the mean-centred, std-normalised weight, power-of-two scale), ``recu``
(a standardised, clamped weight), ``bitnet`` (the sign of the mean-centred weight), ``xnor`` (a
Function computing ``mean|W|·sign(W)``), ``bireal/reactnet`` (Bi-Real's binarizer: detached
``mean|W|`` scale and a clipped STE — ReActNet reuses it unchanged, so the two cannot be told
apart from the weight path), else ``generic``.

Every module that owns parameters and cannot be traced faithfully is reported with the reason
(:class:`Skipped`), except a binarizer child whose parent's site already covers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core import CSign
from ..core.site import SIGN_FUNCS
from .names import site_name
from .tracing import (
    MODULE_MACHINERY,
    OwnGraphs,
    ancestors,
    autograd_function_of,
    copy_graphs,
    evaluate_args,
    fetch_attr,
    original_class,
    plain_value,
    shared_trace_patches,
    trace_module,
)


@dataclass
class FoundSite:
    """One weight-sign op in one module's graph."""

    name: str  # attribute name of the site under its owner, e.g. "weight_csign"
    op: Callable[..., torch.Tensor] | None
    op_label: str
    family: str
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    source: str  # parameter or buffer the latent is computed from
    pattern: str = ""


@dataclass
class ModuleSites:
    """The weight-sign sites of one module and the graphs they were found in."""

    owner: str
    module: nn.Module
    graphs: OwnGraphs
    sites: list[FoundSite]
    nodes: dict[fx.Node, str] = field(default_factory=dict)  # site node -> site name


@dataclass
class Skipped:
    """A module the trace could not capture (or a site it could not convert), and why."""

    module: str
    reason: str
    target: nn.Module | None = None
    kind: str = "trace"  # "trace": the module was not captured; "site": one site was not


class SignRecorder(TorchFunctionMode):
    """Record the torch calls an op makes: how many signs, on what, and which other ops."""

    def __init__(self) -> None:
        super().__init__()
        self.sign_inputs: list[Tensor] = []
        self.op_names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SIGN_FUNCS:
            self.sign_inputs.append(args[0])
        self.op_names.add(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def sign_kind(node: fx.Node) -> str | None:
    """What kind of possible sign op a node is: 'torch.sign', 'Tensor.sign', 'function' (an
    autograd.Function call), 'module' (a child module call, e.g. a weight pre-processing
    binarizer), or None. Functions and modules count only if they sign their input once."""
    if node.op == "call_function" and node.target is torch.sign:
        return "torch.sign"
    if node.op == "call_method" and node.target == "sign":
        return "Tensor.sign"
    if node.op == "call_function" and autograd_function_of(node.target) is not None:
        return "function"
    if node.op == "call_module":
        return "module"
    return None


def candidates(graph: fx.Graph, module: nn.Module) -> list[tuple[fx.Node, str]]:
    """Possible weight-sign nodes: a sign-like op whose input comes from weights only."""
    out = []
    for node in graph.nodes:
        kind = sign_kind(node)
        if kind is None or not is_weight_only(node.all_input_nodes):
            continue
        if kind == "module":
            child = module.get_submodule(node.target)
            if type(child).__module__.startswith("torch.") or isinstance(child, CSign):
                continue
        out.append((node, kind))
    return out


def descendants(node: fx.Node, depth: int = 6) -> list[fx.Node]:
    out: list[fx.Node] = []
    frontier = [node]
    for _ in range(depth):
        frontier = [u for n in frontier for u in n.users if u not in out]
        out.extend(frontier)
    return out


def is_weight_only(inputs: Iterable[fx.Node]) -> bool:
    nodes = ancestors(inputs)
    return any(n.op == "get_attr" for n in nodes) and not any(n.op == "placeholder" for n in nodes)


def op_name(node: fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op in ("call_method", "get_attr"):
        return str(node.target) if node.op == "call_method" else "get_attr"
    return node.op


# ------------------------------------------------------------------------------------ labels
def label_site(context: dict[str, Any]) -> tuple[str, str]:
    """``(family, pattern)`` from the ops around a site (see the module docstring)."""
    before, after, inside = context["before"], context["after"], context["inside"]
    scale = context["scale"]
    kind = context["kind"]
    centred = "sub" in before or "__sub__" in before
    standardised = bool({"std", "var"} & before)
    clamped_before = bool({"clamp", "clip", "hardtanh"} & before)
    detach_ste = "detach" in after and bool({"add", "__add__", "sub", "__sub__"} & after)
    clipped = bool({"clamp", "clip", "hardtanh"} & after)
    absmean = {"abs", "mean"} <= (scale | inside)
    power_of_two = "pow" in scale
    prep = [
        word
        for word, seen in (
            ("centred", centred and not standardised),
            ("standardised", standardised),
            ("clamped", clamped_before),
        )
        if seen
    ]
    if kind == "function":
        grad = f"Function {context['op_label'].removesuffix('.apply')}"
    elif kind == "module":
        grad = f"module {context['op_label'].removesuffix(' (module)')}"
    elif detach_ste:
        grad = "clip STE" if clipped else "identity STE"
    else:
        grad = "plain sign (zero gradient)"
    scaled = "learned scale" if context["learned_scale"] else ""
    scaled = scaled or ("power-of-two scale" if power_of_two else "")
    scaled = scaled or ("mean|W| scale" if absmean else "")
    pattern = ", ".join(p for p in (*prep, grad, scaled) if p)
    if kind == "function" and standardised and power_of_two:
        family = "irnet"
    elif standardised and clamped_before:
        family = "recu"
    elif centred and not standardised and kind != "function" and absmean:
        family = "bitnet"
    elif kind == "function" and {"abs", "mean"} <= inside:
        family = "xnor"
    elif grad == "clip STE" and absmean and not context["learned_scale"] and not prep:
        family = "bireal/reactnet"
    else:
        family = "generic"
    return family, pattern


def _source_of(module: nn.Module, inputs: list[fx.Node]) -> str:
    """The nearest parameter the latent comes from (breadth-first), else the nearest buffer.

    Parameters come first so that IR-Net's ``BinaryQuantize.apply(bw, self.k, self.t)`` is
    named after the weight behind ``bw``, not after ``k``.
    """
    attrs = [
        n for n in _breadth_first(inputs) if n.op == "get_attr" and "uabnn_constant" not in n.meta
    ]
    for n in attrs:
        if isinstance(fetch_attr(module, n.target), nn.Parameter):
            return str(n.target)
    return str(attrs[0].target) if attrs else "const"


def _breadth_first(inputs: list[fx.Node]) -> list[fx.Node]:
    order: dict[fx.Node, None] = {}
    frontier = list(inputs)
    while frontier:
        nxt = []
        for n in frontier:
            if n not in order:
                order[n] = None
                nxt.extend(n.all_input_nodes)
        frontier = nxt
    return list(order)


_SCALING = frozenset({"mul", "__mul__", "mul_", "truediv", "__truediv__", "div"})


def _scale_context(node: fx.Node, module: nn.Module, source: str) -> tuple[set[str], bool]:
    """The ops that compute what the sign's result is multiplied (or divided) by, and whether
    a parameter other than the latent's own is among them (a learned scale)."""
    below = set(descendants(node, depth=5))
    factors = [
        arg
        for user in below
        if op_name(user) in _SCALING
        for arg in user.all_input_nodes
        if arg is not node and arg not in below
    ]
    behind = ancestors(factors)
    learned = any(
        n.op == "get_attr"
        and n.target != source
        and "uabnn_constant" not in n.meta
        and isinstance(fetch_attr(module, n.target), nn.Parameter)
        for n in behind
    )
    return {op_name(n) for n in behind}, learned


# ------------------------------------------------------------------------------------ sites
def find_sites(owner: str, module: nn.Module, graphs: OwnGraphs) -> tuple[list[FoundSite], dict]:
    """The weight-sign sites in ``module``'s graphs; same site names across both modes."""
    sites: dict[str, FoundSite] = {}
    node_names: dict[fx.Node, str] = {}
    problems: list[str] = []
    for graph in graphs.graphs():
        used: dict[str, int] = {}
        for node, kind in candidates(graph, module):
            found = _describe(module, node, kind, problems)
            if found is None:
                continue
            found.name = site_name(module, found.source, used)
            prior = sites.get(found.name)
            if prior is not None and (prior.shape, prior.op) != (found.shape, found.op):
                problems.append(f"site {found.name} differs between training and eval mode")
                continue
            sites.setdefault(found.name, found)
            node_names[node] = found.name
    return list(sites.values()), {"nodes": node_names, "problems": problems}


def _describe(module: nn.Module, node: fx.Node, kind: str, problems: list[str]) -> FoundSite | None:
    inputs = list(node.all_input_nodes)
    source = _source_of(module, inputs)
    cache: dict[fx.Node, Any] = {}
    with torch.no_grad():
        args, kwargs = evaluate_args(node, module, cache)
        if kind in ("function", "module"):
            if kind == "function":
                op = call = node.target
                label = f"{autograd_function_of(op).__name__}.apply"
            else:
                op = None  # the child module is passed to the site at run time
                call = module.get_submodule(node.target)
                label = f"{type(call).__name__} (module)"
            recorder = SignRecorder()
            with recorder:
                call(*args, **kwargs)
            if len(recorder.sign_inputs) != 1:
                if recorder.sign_inputs:
                    problems.append(
                        f"{label} calls sign {len(recorder.sign_inputs)} times on weights; "
                        "only a single sign per call is converted"
                    )
                return None
            latent = recorder.sign_inputs[0]
            inside = recorder.op_names
        else:
            latent = args[0]
            op, label, inside = torch.sign, kind, set()
    if not isinstance(latent, torch.Tensor) or not latent.is_floating_point():
        return None
    scale_ops, learned = _scale_context(node, module, source)
    context = {
        "kind": kind,
        "op_label": label,
        "before": {op_name(n) for n in ancestors(inputs)},
        "after": {op_name(a) for d in descendants(node) for a in [d, *d.all_input_nodes]},
        "scale": scale_ops,
        "inside": inside,
        "learned_scale": learned,
    }
    family, pattern = label_site(context)
    return FoundSite(
        name="",
        op=op,
        op_label=label,
        family=family,
        shape=latent.shape,
        dtype=latent.dtype,
        device=latent.device,
        source=source,
        pattern=pattern,
    )


# ------------------------------------------------------------------------------------ scan
def scan(
    model: nn.Module, *, traced_class: Callable[[nn.Module], type] = original_class
) -> tuple[list[ModuleSites], list[Skipped]]:
    """Trace every candidate module once and collect its weight-sign sites.

    Built-in ``torch.nn`` layers are skipped (they never sign their weights). Modules with
    equal :func:`trace_key` share one trace: the first is traced, the others get a copy of its
    graphs and sites. A trace is also shared by instances that differ only in what it did not
    read: plain attributes its forward never touched, and tensor shapes unless it answered a
    size with a number (a ResNet's binary convs of every width share one trace); each such
    instance has its sites described from its own weights. Returns ``(found, skipped)``: the
    modules with sites, and every module that owns parameters but could not be captured (with
    the reason).
    """
    found: list[ModuleSites] = []
    skipped: list[Skipped] = []
    cache = _TraceCache()
    with shared_trace_patches():
        for owner, module in model.named_modules():
            _scan_one(owner, module, traced_class, cache, found, skipped)
    covered = {
        id(f.module.get_submodule(node.target))
        for f in found
        for node in f.nodes
        if sign_kind(node) == "module"
    }
    return found, [s for s in skipped if id(s.target) not in covered]


@dataclass
class _TraceCache:
    """Traces already made during one scan.

    ``exact``: full :func:`trace_key` -> (the module's sites or None, the refusal or None).
    ``shared``: per class, traces other instances may reuse, each with the key it holds for.
    """

    exact: dict[tuple, tuple[ModuleSites | None, str | None]] = field(default_factory=dict)
    shared: dict[type, list[tuple[tuple, OwnGraphs]]] = field(default_factory=dict)

    def reusable(self, cls: type, module: nn.Module) -> OwnGraphs | None:
        """A copy of a trace that holds for ``module`` too, if one was made."""
        for key, graphs in self.shared.get(cls, []):
            if key == trace_key(cls, module, **_loose(graphs)):
                return copy_graphs(graphs)
        return None

    def share(self, cls: type, module: nn.Module, graphs: OwnGraphs) -> None:
        key = trace_key(cls, module, **_loose(graphs))
        self.shared.setdefault(cls, []).append((key, graphs))


def _loose(graphs: OwnGraphs) -> dict[str, Any]:
    """What a trace actually depended on: the plain values it read, and tensor shapes only
    when it answered one with a number."""
    return {"reads": frozenset(graphs.guards) | {"training"}, "shapes": graphs.shape_bound}


def _scan_one(
    owner: str,
    module: nn.Module,
    traced_class: Callable[[nn.Module], type],
    cache: _TraceCache,
    found: list[ModuleSites],
    skipped: list[Skipped],
) -> None:
    """Trace one module (or reuse the trace of an equal one) and record its sites."""
    cls = traced_class(module)
    if cls.__module__.startswith("torch.") or isinstance(module, CSign):
        return
    key = trace_key(cls, module)
    if key in cache.exact:
        template, refusal = cache.exact[key]
        if refusal is not None:
            _refused(owner, module, refusal, skipped)
        elif template is not None:
            found.append(_copy_sites(template, owner, module))
        return
    graphs = cache.reusable(cls, module)
    if graphs is None:
        try:
            with as_class(module, cls):
                graphs = trace_module(module)
        except Exception as exc:  # any trace failure is reported (for modules that own weights)
            reason = _one_line(exc)
            cache.exact[key] = (None, reason)
            _refused(owner, module, reason, skipped)
            return
        cache.share(cls, module, graphs)
    if not any(candidates(g, module) for g in graphs.graphs()):
        cache.exact[key] = (None, None)
        return
    sites, info = find_sites(owner, module, graphs)
    for problem in info["problems"]:
        skipped.append(Skipped(owner or "<root>", problem, module, "site"))
    entry = ModuleSites(owner, module, graphs, sites, info["nodes"]) if sites else None
    cache.exact[key] = (entry, None)
    if entry is not None:
        found.append(entry)


def _refused(owner: str, module: nn.Module, reason: str, skipped: list[Skipped]) -> None:
    if any(p is not None for p in module._parameters.values()):
        skipped.append(Skipped(owner or "<root>", reason, module))


def _copy_sites(template: ModuleSites, owner: str, module: nn.Module) -> ModuleSites:
    """Another instance's sites: a copy of the template's graphs with its nodes re-found by
    name (equal trace keys give equal graphs), the site specs with this module's device."""
    graphs = copy_graphs(template.graphs)
    lookup = {
        id(old): {n.name: n for n in new.nodes}
        for old, new in zip(template.graphs.graphs(), graphs.graphs(), strict=True)
    }
    nodes = {lookup[id(old.graph)][old.name]: site for old, site in template.nodes.items()}
    device = next((t.device for t in module.parameters(recurse=False)), None)
    sites = [replace(s, device=device or s.device) for s in template.sites]
    return ModuleSites(owner, module, graphs, sites, nodes)


class as_class:
    """Temporarily give ``module`` another class (to trace its original forward)."""

    def __init__(self, module: nn.Module, cls: type) -> None:
        self.module, self.cls, self.prev = module, cls, type(module)

    def __enter__(self) -> None:
        if self.cls is not self.prev:
            self.module.__class__ = self.cls

    def __exit__(self, *exc: object) -> None:
        self.module.__class__ = self.prev


def trace_key(
    cls: type,
    module: nn.Module,
    *,
    reads: Iterable[str] | None = None,
    shapes: bool = True,
) -> tuple:
    """What a trace of ``module``'s own forward depends on besides tensor values.

    Its class; every attribute of its own that is not ``nn.Module`` machinery — plain values
    (numbers, strings, tuples of them) by value, tensors by shape, dtype and device, anything
    else (a function, a list, an object) by identity; the class of each child (the graph calls
    children, and a binarizing child is a site); and the shapes of its parameters and buffers.
    Modules with equal keys trace to the same graph.

    A finished trace knows more (:func:`_loose`): ``reads`` keeps only the plain values it
    read (the others cannot have shaped it), ``shapes=False`` leaves tensor shapes out. This
    assumes that the forward reads its attributes as attributes (``self.scale``), which the
    trace records; a value fetched through ``self.__dict__`` would go unseen.
    """
    wanted = None if reads is None else frozenset(reads)

    def shape(t: Tensor) -> tuple[int, ...] | None:
        return tuple(t.shape) if shapes else None

    attrs = []
    for key, value in sorted(vars(module).items()):
        if key in MODULE_MACHINERY:
            continue
        if plain_value(value):
            if wanted is None or key in wanted:
                attrs.append((key, repr(value)))
        elif isinstance(value, torch.Tensor):
            attrs.append((key, "tensor", shape(value), value.dtype, value.device))
        else:
            attrs.append((key, "object", id(value)))
    if wanted is not None:  # a value read by the trace but absent here
        attrs += [(key, "absent") for key in sorted(wanted - set(vars(module)) - {"training"})]
    children = tuple((k, type(c)) for k, c in module._modules.items())
    tensors = tuple(
        (k, shape(t), t.dtype, t.device, isinstance(t, nn.Parameter))
        for k, t in [*module._parameters.items(), *module._buffers.items()]
        if t is not None
    )
    return cls, module.training, tuple(attrs), children, tensors


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
