"""Trace one module's *own* forward with torch.fx, leaving everything else live.

Tracing whole models is fragile (control flow, shape asserts, third-party wrappers) and bakes
Python values into the graph. A BNN's weight sign sits in the forward of the layer that owns
the weight, so each module is traced on its own with every child kept as a call. Two further
choices keep the original behaviour intact:

* ``autograd.Function.apply`` is recorded as one call, not inlined: symbolic tracing would
  otherwise run the Function's forward on proxies and drop its custom backward (IR-Net's EDE,
  XNOR's clipped STE), leaving the weights without the gradient the method defines.
* The forward is traced once in training and once in eval mode; if the two graphs differ
  (a ``self.training`` branch) the installed forward dispatches on ``self.training`` at run
  time, so the branch still follows the mode.

Limit: Python scalars read from ``self`` (a float attribute, a tuple of sizes) are baked into
the graph at patch time, as in any fx trace. Tensors (parameters, buffers, plain tensor
attributes such as IR-Net's ``k``/``t``) are read live.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

_CONST_PREFIX = "_uabnn_const"


@functools.cache
def function_call(cls: type[torch.autograd.Function]) -> Callable:
    """A named, stable stand-in for ``cls.apply`` that fx can record and generate code for."""

    def call(*args, **kwargs):
        return cls.apply(*args, **kwargs)

    call.__name__ = call.__qualname__ = f"{cls.__name__}_apply"
    call.__module__ = __name__
    call.autograd_function = cls
    return call


def autograd_function_of(target: object) -> type[torch.autograd.Function] | None:
    return getattr(target, "autograd_function", None)


class OwnForwardTracer(fx.Tracer):
    """Records a module's own forward: children stay calls, Functions stay single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    @contextlib.contextmanager
    def _functions_as_calls(self) -> Iterator[None]:
        original = torch.autograd.Function.__dict__["apply"]
        tracer = self

        def apply(cls, *args, **kwargs):
            flat = [*args, *kwargs.values()]
            if any(isinstance(a, fx.Proxy) for a in flat):
                return tracer.create_proxy("call_function", function_call(cls), args, kwargs)
            return original.__get__(None, cls)(*args, **kwargs)

        torch.autograd.Function.apply = classmethod(apply)
        try:
            yield
        finally:
            torch.autograd.Function.apply = original

    def trace_own(self, module: nn.Module, concrete: dict[str, None] | None = None) -> fx.Graph:
        self.parameter_proxies: dict[str, fx.Proxy] = {}
        _ACTIVE.append(self)
        try:
            with self._functions_as_calls():
                return self.trace(module, concrete_args=concrete or None)
        finally:
            _ACTIVE.pop()

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *a, **k):
        """Sizes of weight-only values are answered with numbers, not proxies.

        A weight's shape is fixed for the module, so ``torch.tensor([2] * bw.size(0))`` (the
        official IR-Net spelling) traces instead of failing on a proxy.
        """
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *a, **k)
        node = proxy.node
        if kind == "call_method" and target in ("size", "dim", "numel"):
            inputs = ancestors(node.all_input_nodes)
            if not any(n.op == "placeholder" for n in inputs):
                value = _concrete(node, self.root)
                if value is not None:
                    self.graph.erase_node(node)
                    return value
        return proxy


_ACTIVE: list[OwnForwardTracer] = []


@contextlib.contextmanager
def shared_trace_patches() -> Iterator[None]:
    """Patch fx's global machinery once for many traces, not once per trace.

    Each ``Tracer.trace`` re-assigns ``nn.Module.__getattr__``/``__call__`` (and hundreds of
    wrapped functions) and reverts them afterwards. Assigning to ``nn.Module`` invalidates the
    type caches of every module class loaded — thousands with timm and torchvision imported —
    so over the few dozen small traces of a model this dominated ``patch``. Inside this context
    the patches are made once: ``nn.Module`` gets dispatchers that route to whichever
    :class:`OwnForwardTracer` is tracing (and behave normally otherwise), and fx's own
    per-trace patching sees them as already applied and skips the work. It relies on private
    fx helpers; if they are missing, tracing runs at its ordinary cost.
    """
    st = getattr(torch.fx, "_symbolic_trace", None)
    needed = (
        "_new_patcher",
        "_patch_wrapped_functions",
        "_orig_module_getattr",
        "_orig_module_call",
    )
    if st is None or not all(hasattr(st, n) for n in needed):
        yield
        return
    orig_getattr, orig_call = st._orig_module_getattr, st._orig_module_call

    def module_getattr(mod: nn.Module, attr: str):
        value = orig_getattr(mod, attr)
        if not _ACTIVE:
            return value
        tracer = _ACTIVE[-1]
        return tracer.getattr(attr, value, tracer.parameter_proxies)

    def module_call(mod: nn.Module, *args, **kwargs):
        if not _ACTIVE:
            return orig_call(mod, *args, **kwargs)

        def forward(*a, **k):
            return orig_call(mod, *a, **k)

        return _ACTIVE[-1].call_module(mod, forward, args, kwargs)

    for fn in (module_getattr, module_call):
        # The mark fx's per-trace patching checks before it re-assigns (set by name here:
        # fx's own assignment inside a class body is name-mangled and never matches).
        setattr(fn, "__fx_already_patched", True)
    wrapped = st._patch_wrapped_functions
    with st._new_patcher() as patcher:
        wrapped(patcher)
        patcher.patch_method(nn.Module, "__getattr__", module_getattr)
        patcher.patch_method(nn.Module, "__call__", module_call)
        st._patch_wrapped_functions = lambda _patcher: None
        try:
            yield
        finally:
            st._patch_wrapped_functions = wrapped


# Optional arguments (default None) are traced both ways, up to this many of them.
_MAX_OPTIONAL = 2


@dataclass
class OwnGraphs:
    """The traced forward of one module, one graph per variant.

    A variant is ``(training, which optional arguments are None)``. Python-level branches on
    ``self.training`` and on ``arg is None`` are decided at trace time, so each combination
    is traced and the installed forward picks the matching graph at run time. Variants whose
    code is identical share one graph.
    """

    variants: dict[tuple, fx.Graph]
    optional: tuple[str, ...] = ()
    signature: inspect.Signature | None = None

    def graphs(self) -> list[fx.Graph]:
        unique: dict[int, fx.Graph] = {}
        for graph in self.variants.values():
            unique.setdefault(id(graph), graph)
        return list(unique.values())


def _optional_arguments(module: nn.Module) -> tuple[inspect.Signature | None, tuple[str, ...]]:
    try:
        sig = inspect.signature(type(module).forward)
    except (TypeError, ValueError):
        return None, ()
    names = tuple(
        p.name
        for p in list(sig.parameters.values())[1:]
        if p.default is None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )
    return sig, names[:_MAX_OPTIONAL]


def trace_module(module: nn.Module) -> OwnGraphs:
    """Trace ``module``'s own forward in every variant, without changing the module.

    Constants fx stows on the traced module are kept in ``node.meta`` and removed from the
    module again; :func:`adopt_constants` gives them a home only when a graph is installed.
    """
    sig, optional = _optional_arguments(module)
    was_training = module.training
    before = set(vars(module))
    variants: dict[tuple, fx.Graph] = {}
    by_code: dict[str, fx.Graph] = {}
    try:
        for mode in (True, False):
            object.__setattr__(module, "training", mode)
            for nones in itertools.product((False, True), repeat=len(optional)):
                concrete = {name: None for name, none in zip(optional, nones, strict=True) if none}
                graph = _trace_with_constants(module, concrete)
                graph = by_code.setdefault(_code(graph), graph)
                variants[(mode, nones)] = graph
    finally:
        object.__setattr__(module, "training", was_training)
        for name in set(vars(module)) - before:
            delattr(module, name)
    return OwnGraphs(variants, optional, sig)


def _trace_with_constants(module: nn.Module, concrete: dict[str, None]) -> fx.Graph:
    """Trace and keep each stowed constant's value on the graph (``node.meta``)."""
    tracer = OwnForwardTracer()
    graph = tracer.trace_own(module, concrete)
    for node in graph.nodes:
        if node.op == "get_attr" and node.target.startswith("_tensor_constant"):
            node.meta["uabnn_constant"] = getattr(module, node.target)
    return graph


def ancestors(nodes: Iterable[fx.Node]) -> list[fx.Node]:
    """The given nodes and every node they are computed from."""
    seen: dict[fx.Node, None] = {}
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen[n] = None
            stack.extend(n.all_input_nodes)
    return list(seen)


def _concrete(node: fx.Node, root: nn.Module) -> object | None:
    """Evaluate a weight-only ``size``/``dim``/``numel`` node on the real tensors.

    Chains through a child module are left symbolic: calling a module while tracing would
    be traced again.
    """
    if any(n.op == "call_module" for n in ancestors(node.all_input_nodes)):
        return None
    try:
        with torch.no_grad():
            return evaluate(node, root, {})
    except Exception:
        return None


def evaluate(node: fx.Node, module: nn.Module, cache: dict[fx.Node, Any]) -> Any:
    """Concrete value of a node whose ancestors are all parameters, buffers or constants."""
    if node in cache:
        return cache[node]
    args, kwargs = evaluate_args(node, module, cache)
    if node.op == "get_attr":
        out = node.meta.get("uabnn_constant")
        if out is None:
            out = fetch_attr(module, node.target)
    elif node.op == "call_function":
        out = node.target(*args, **kwargs)
    elif node.op == "call_method":
        self_, *rest = args
        out = getattr(self_, node.target)(*rest, **kwargs)
    elif node.op == "call_module":
        out = module.get_submodule(node.target)(*args, **kwargs)
    else:
        raise RuntimeError(f"cannot evaluate {node.op} node {node.name}")
    cache[node] = out
    return out


def evaluate_args(node: fx.Node, module: nn.Module, cache: dict[fx.Node, Any]) -> tuple:
    """Concrete ``(args, kwargs)`` of a weight-only node."""

    def value(n: fx.Node) -> Any:
        return evaluate(n, module, cache)

    return fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value)


def fetch_attr(module: nn.Module, target: str) -> Any:
    """The attribute at a dotted path, read from the module's own dicts first: while a trace
    is running ``nn.Module.__getattr__`` is patched to return proxies, not tensors."""
    obj: Any = module
    for part in target.split("."):
        if isinstance(obj, nn.Module):
            for store in ("_parameters", "_buffers", "_modules"):
                found = obj.__dict__.get(store, {})
                if part in found:
                    obj = found[part]
                    break
            else:
                obj = getattr(obj, part)
        else:
            obj = getattr(obj, part)
    return obj


def _code(graph: fx.Graph) -> str:
    return graph.python_code(root_module="self").src


def adopt_constants(module: nn.Module, graph: fx.Graph) -> None:
    """Give the constants a graph captured a home on the module (non-persistent buffers)."""
    for node in graph.nodes:
        value = node.meta.get("uabnn_constant")
        if value is None:
            continue
        index = 0
        while hasattr(module, f"{_CONST_PREFIX}{index}"):
            index += 1
        name = f"{_CONST_PREFIX}{index}"
        module.register_buffer(name, value, persistent=False)
        node.target = name
        del node.meta["uabnn_constant"]


def compile_forward(graph: fx.Graph, label: str) -> Callable:
    """Python function ``forward(self, ...)`` generated from ``graph``."""
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<uabnn_convert forward of {label}>", "exec"), namespace)
    return namespace["forward"]


def install_forward(module: nn.Module, graphs: OwnGraphs, label: str) -> None:
    """Run ``module`` through its rewritten graph(s) via a per-instance subclass.

    A subclass (rather than an instance attribute) keeps ``isinstance`` true, is what
    ``torch.fx``/``torch.export`` look up (they read ``type(root).forward``), and is undone by
    restoring ``__class__``.
    """
    compiled: dict[int, Callable] = {}
    for graph in graphs.graphs():
        adopt_constants(module, graph)
        graph.lint()
        compiled[id(graph)] = compile_forward(graph, label)
    table = {key: compiled[id(graph)] for key, graph in graphs.variants.items()}
    if len(compiled) == 1:
        forward = next(iter(compiled.values()))
    elif not graphs.optional:

        def forward(self, *args, **kwargs):
            return table[(self.training, ())](self, *args, **kwargs)

    else:
        sig, optional = graphs.signature, graphs.optional

        def forward(self, *args, **kwargs):
            bound = sig.bind(self, *args, **kwargs).arguments
            nones = tuple(bound.get(name) is None for name in optional)
            return table[(self.training, nones)](self, *args, **kwargs)

    base = original_class(module)
    module.__class__ = type(
        base.__name__,
        (base,),
        {"forward": forward, "__module__": base.__module__, "_uabnn_base": base},
    )


def original_class(module: nn.Module) -> type[nn.Module]:
    return getattr(type(module), "_uabnn_base", type(module))


def is_rewritten(module: nn.Module) -> bool:
    return "_uabnn_base" in type(module).__dict__


def restore_class(module: nn.Module) -> None:
    """Undo :func:`install_forward`: the module runs its class's own forward again."""
    if is_rewritten(module):
        module.__class__ = original_class(module)
    for name in [n for n in module._buffers if n.startswith(_CONST_PREFIX)]:
        del module._buffers[name]
