"""Find the weight-sign sites of a model: one data-flow rule, then a family name for the report.

The rule: a sign op (``torch.sign``, ``Tensor.sign``, or an ``autograd.Function`` whose forward
calls sign exactly once) is a *weight* site when its input is computed from the module's
parameters, buffers and constants only — no placeholder (model input) among its ancestors.
Activation signs depend on the input and are left alone. The family (bireal, reactnet, irnet,
bonn, xnor, generic) is read from the ops around the site and is only a label: the rewrite
does the same thing for every family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core import CSign
from ..core.site import SIGN_FUNCS
from .tracing import (
    OwnGraphs,
    ancestors,
    autograd_function_of,
    evaluate_args,
    fetch_attr,
    original_class,
    shared_trace_patches,
    trace_module,
)


@dataclass
class FoundSite:
    """One weight-sign op in one module's graph."""

    name: str  # attribute name of the site under its owner, e.g. "weight_csign"
    op: Callable[..., torch.Tensor]
    op_label: str
    family: str
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    source: str  # parameter or buffer the latent is computed from


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
    module: str
    reason: str


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


# Family rules, first match wins. Each reads a small context of op names around the site.
FAMILY_RULES: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
    ("irnet", lambda c: "std" in c["before"]),
    ("bonn", lambda c: c["learned_scale"]),
    ("reactnet", lambda c: c["flattened"] and "clamp" in c["after"]),
    ("bireal", lambda c: "clamp" in c["after"]),
    ("xnor", lambda c: {"mean", "abs"} <= (c["inside"] | c["after"])),
)


def family_of(context: dict[str, Any]) -> str:
    for name, rule in FAMILY_RULES:
        if rule(context):
            return name
    return "generic"


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


def _learned_scale(node: fx.Node, module: nn.Module, source: str) -> bool:
    for user in descendants(node, depth=5):
        if op_name(user) not in ("mul", "__mul__", "mul_"):
            continue
        for arg in user.all_input_nodes:
            if arg.op == "get_attr" and arg.target != source:
                attr = fetch_attr(module, arg.target)
                if isinstance(attr, nn.Parameter):
                    return True
    return False


def find_sites(owner: str, module: nn.Module, graphs: OwnGraphs) -> tuple[list[FoundSite], dict]:
    """The weight-sign sites in ``module``'s graphs; same site names across both modes."""
    sites: dict[str, FoundSite] = {}
    node_names: dict[fx.Node, str] = {}
    problems: list[str] = []
    for graph in graphs.graphs():
        used: dict[str, int] = {}
        for node, kind in candidates(graph, module):
            found = _describe(owner, module, node, kind, problems)
            if found is None:
                continue
            found.name = _free_name(module, f"{found.source.replace('.', '_')}_csign", used)
            prior = sites.get(found.name)
            if prior is not None and (prior.shape, prior.op) != (found.shape, found.op):
                problems.append(f"site {found.name} differs between training and eval mode")
                continue
            sites.setdefault(found.name, found)
            node_names[node] = found.name
    return list(sites.values()), {"nodes": node_names, "problems": problems}


def _free_name(module: nn.Module, base: str, used: dict[str, int]) -> str:
    """``base``, ``base_1``, … in the order sites appear, skipping names the module already
    has (other than c-sign sites, which are this site's own state in a patched model)."""
    count = used.get(base, 0)
    while True:
        name = base if count == 0 else f"{base}_{count}"
        count += 1
        taken = hasattr(module, name) and not isinstance(getattr(module, name), CSign)
        if not taken:
            used[base] = count
            return name


def _describe(
    owner: str, module: nn.Module, node: fx.Node, kind: str, problems: list[str]
) -> FoundSite | None:
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
    source_value = fetch_attr(module, source) if source != "const" else latent
    context = {
        "before": {op_name(n) for n in ancestors(inputs)},
        "after": {op_name(a) for d in descendants(node) for a in [d, *d.all_input_nodes]},
        "inside": inside,
        "flattened": isinstance(source_value, torch.Tensor) and source_value.dim() < latent.dim(),
        "learned_scale": _learned_scale(node, module, source),
    }
    return FoundSite(
        name="",
        op=op,
        op_label=label,
        family=family_of(context),
        shape=latent.shape,
        dtype=latent.dtype,
        device=latent.device,
        source=source,
    )


def scan(model: nn.Module, *, traced_class: Callable[[nn.Module], type] = original_class):
    """Trace every candidate module once and collect its weight-sign sites.

    Built-in ``torch.nn`` layers are skipped (they never sign their weights), and a class whose
    forward has no sign op at all is traced only once. Returns ``(found, skipped)``.
    """
    found: list[ModuleSites] = []
    skipped: list[Skipped] = []
    sign_free: set[tuple] = set()
    with shared_trace_patches():
        for owner, module in model.named_modules():
            _scan_one(owner, module, traced_class, sign_free, found, skipped)
    return found, skipped


def _scan_one(
    owner: str,
    module: nn.Module,
    traced_class: Callable[[nn.Module], type],
    sign_free: set[tuple],
    found: list[ModuleSites],
    skipped: list[Skipped],
) -> None:
    """Trace one module and record its sites (or why it could not be traced)."""
    cls = traced_class(module)
    key = trace_key(cls, module)
    if cls.__module__.startswith("torch.") or key in sign_free or isinstance(module, CSign):
        return
    try:
        with _as_class(module, cls):
            graphs = trace_module(module)
    except Exception as exc:  # any trace failure is reported, never fatal
        if _mentions_sign(cls):
            skipped.append(Skipped(owner or "<root>", _one_line(exc)))
        return
    if not any(candidates(g, module) for g in graphs.graphs()):
        sign_free.add(key)
        return
    sites, info = find_sites(owner, module, graphs)
    for problem in info["problems"]:
        skipped.append(Skipped(owner or "<root>", problem))
    if sites:
        found.append(ModuleSites(owner, module, graphs, sites, info["nodes"]))


class _as_class:
    """Temporarily give ``module`` another class (to trace its original forward)."""

    def __init__(self, module: nn.Module, cls: type) -> None:
        self.module, self.cls, self.prev = module, cls, type(module)

    def __enter__(self) -> None:
        if self.cls is not self.prev:
            self.module.__class__ = self.cls

    def __exit__(self, *exc: object) -> None:
        self.module.__class__ = self.prev


_MODULE_MACHINERY = frozenset(vars(nn.Module()))
_PLAIN = (bool, int, float, str, type(None))


def _plain_value(value: object) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, tuple) and all(_plain_value(v) for v in value)


def trace_key(cls: type, module: nn.Module) -> tuple:
    """What a trace of ``module``'s own forward depends on besides tensor values.

    Its class; every attribute of its own that is not ``nn.Module`` machinery — plain values
    (numbers, strings, tuples of them) by value, tensors by shape and dtype, anything else
    (a function, a list, an object) by identity; the class of each child (the graph calls
    children, and a binarizing child is a site); and the shapes of its parameters and buffers.
    Modules with equal keys trace to the same graph.
    """
    attrs = []
    for key, value in sorted(vars(module).items()):
        if key in _MODULE_MACHINERY:
            continue
        if _plain_value(value):
            attrs.append((key, repr(value)))
        elif isinstance(value, torch.Tensor):
            attrs.append((key, "tensor", tuple(value.shape), value.dtype))
        else:
            attrs.append((key, "object", id(value)))
    children = tuple((k, type(c)) for k, c in module._modules.items())
    tensors = tuple(
        (k, tuple(t.shape), t.dtype)
        for k, t in [*module._parameters.items(), *module._buffers.items()]
        if t is not None
    )
    return cls, tuple(attrs), children, tensors


def _mentions_sign(cls: type) -> bool:
    """Whether a class that failed to trace is worth reporting: its source (any method, any
    base class of the model's own code) binarizes something or calls a Function."""
    import inspect

    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.") or klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if any(word in source for word in ("sign", ".apply(", "binar")):
            return True
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
