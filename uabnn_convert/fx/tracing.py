"""Trace one module's *own* forward with torch.fx, leaving everything else live.

Tracing whole models is fragile (control flow, shape asserts, third-party wrappers) and bakes
Python values into the graph. A BNN's weight sign sits in the forward of the layer that owns
the weight, so each module is traced on its own with every child kept as a call. Further
choices keep the original behaviour intact:

* ``autograd.Function.apply`` is recorded as one call (:class:`FunctionCall`), not inlined:
  symbolic tracing would otherwise run the Function's forward on proxies and drop its custom
  backward (IR-Net's EDE, XNOR's clipped STE), leaving the weights without their gradient.
* Tensors are read live: parameters, buffers (``proxy_buffer_attributes``: a ``tau`` buffer
  used in arithmetic stays a graph input instead of a number computed at patch time) and plain
  tensor attributes (IR-Net's ``k``/``t``, reassigned every epoch by its trainer).
* Python values the forward reads from ``self`` (a float, a tuple of sizes, an epoch counter)
  are recorded while tracing and become *guards*: the installed forward compares them on every
  call and, when one has changed, traces the module again (:func:`refresh`), so an
  epoch-gated branch still runs when its epoch comes. ``self.training`` branches are traced
  both ways up front, and only for classes whose forward reads ``training``.
* What a trace cannot record faithfully is refused, never baked silently: a forward that
  assigns attributes (``self.R1 = …``, ``w.data = …``), builds modules, branches on tensor
  values or shapes, or whose generated code would refer to a name it cannot see. Such modules
  are left to the run-time capture (:mod:`.intercept`).

Installed forwards live on a per-instance subclass (``isinstance`` stays true, ``torch.fx`` /
``torch.export`` / dynamo read ``type(module).forward``); the subclass pickles as the original
class plus its graphs, so ``torch.save(model)`` and ``copy.deepcopy`` work.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dis
import functools
import inspect
import itertools
import operator
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

_CONST_PREFIX = "_uabnn_const"
_PLAIN = (bool, int, float, str, type(None), np.generic)
_SHAPE_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "is_floating_point"})
MODULE_MACHINERY = frozenset(vars(nn.Module()))


class TraceRefused(fx.proxy.TraceError):
    """A trace that would not reproduce the forward faithfully."""


class FunctionCall:
    """A picklable stand-in for ``Function.apply`` that fx records as one call."""

    def __init__(self, cls: type[torch.autograd.Function]) -> None:
        self.autograd_function = cls
        self.__name__ = self.__qualname__ = f"{cls.__name__}_apply"
        self.__module__ = __name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.autograd_function.apply(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return function_call, (self.autograd_function,)

    def __repr__(self) -> str:
        return f"{self.autograd_function.__name__}.apply"


@functools.cache
def function_call(cls: type[torch.autograd.Function]) -> FunctionCall:
    """The one :class:`FunctionCall` of a Function class."""
    return FunctionCall(cls)


def autograd_function_of(target: object) -> type[torch.autograd.Function] | None:
    return getattr(target, "autograd_function", None) if isinstance(target, FunctionCall) else None


def plain_value(value: object) -> bool:
    """A value a guard can compare: a number, a string, None, or a tuple of those."""
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, tuple) and all(plain_value(v) for v in value)


class _OwnProxy(fx.Proxy):
    """A proxy that answers the shape of weight-only values with numbers, records item
    assignment (``bw[mask] = w.sign()[mask]``) as the in-place op it is, lets NumPy scalars
    on the left of an operator defer to it, and refuses writes of attributes (``w.data = …``):
    fx would drop them silently."""

    __array_ufunc__ = None  # ``np.float64(2) * proxy`` -> ``proxy.__rmul__``

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __getattr__(self, name: str) -> Any:
        if name in _SHAPE_ATTRS:
            value = self.tracer.concrete(self.node, name)
            if value is not None:
                return value
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("node", "tracer"):
            object.__setattr__(self, name, value)
            return
        raise TraceRefused(f"the forward assigns the attribute .{name} of a traced value")


class OwnForwardTracer(fx.Tracer):
    """Records a module's own forward: children stay calls, Functions stay single calls."""

    proxy_buffer_attributes = True

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, Any] = {}
        self.tensor_proxies: dict[str, fx.Proxy] = {}
        self.answered = False  # a size, shape, dtype or device was answered with a value

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _OwnProxy(node, self)

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
            with self._functions_as_calls(), _recording(module, self):
                graph = self.trace(module, concrete_args=concrete or None)
        finally:
            _ACTIVE.pop()
        return graph

    def create_arg(self, a: Any) -> Any:
        # fx cannot record NumPy scalars (and would print them as ``np.float64(…)``): use the
        # Python scalars they equal.
        if isinstance(a, np.generic):
            a = a.item()
        return super().create_arg(a)

    def read(self, module: nn.Module, name: str, value: Any) -> Any:
        """Called for every attribute the traced module reads from its own ``__dict__``."""
        if name in MODULE_MACHINERY and name != "training":
            return value
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            proxy = self.tensor_proxies.get(name)
            if proxy is None:
                proxy = self.tensor_proxies[name] = self.create_proxy("get_attr", name, (), {})
            return proxy
        if plain_value(value):
            self.reads.setdefault(name, value)
        return value

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *a, **k):
        """Sizes of weight-only values are answered with numbers, not proxies.

        A weight's shape is fixed for the module, so ``torch.tensor([2] * bw.size(0))`` (the
        official IR-Net spelling) traces instead of failing on a proxy.
        """
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *a, **k)
        node = proxy.node
        if kind == "call_method" and target in ("size", "dim", "numel"):
            value = self._concrete_node(node)
            if value is not None:
                self.graph.erase_node(node)
                return value
        return proxy

    def concrete(self, node: fx.Node, attr: str) -> Any:
        """``getattr(value_of(node), attr)`` when ``node`` is weight-only, else None."""
        if _depends_on_input_or_module(node):
            return None
        try:
            with torch.no_grad():
                value = getattr(evaluate(node, self.root, {}), attr)
        except Exception:
            return None
        self.answered = True
        return value

    def _concrete_node(self, node: fx.Node) -> object | None:
        if _depends_on_input_or_module(node):
            return None
        try:
            with torch.no_grad():
                value = evaluate(node, self.root, {})
        except Exception:
            return None
        self.answered = True
        return value

    def to_bool(self, obj: fx.Proxy) -> bool:
        raise TraceRefused("the forward branches on a tensor value or an input's shape")

    def iter(self, obj: fx.Proxy) -> Iterator:
        raise TraceRefused("the forward iterates over a traced value")


_ACTIVE: list[OwnForwardTracer] = []


def _depends_on_input_or_module(node: fx.Node) -> bool:
    """Whether a node is computed from the forward's inputs or through a child module call
    (which cannot be evaluated while tracing: calling a module would be traced again)."""
    return any(n.op in ("placeholder", "call_module") for n in ancestors([node]))


@contextlib.contextmanager
def _recording(module: nn.Module, tracer: OwnForwardTracer) -> Iterator[None]:
    """Trace ``module`` as an instance of a subclass that reports every attribute it reads
    from its own ``__dict__`` and refuses attribute assignment (a side effect of forward)."""
    cls = type(module)

    def getattribute(self: nn.Module, name: str) -> Any:
        value = object.__getattribute__(self, name)
        active = self is module and _ACTIVE and _ACTIVE[-1] is tracer
        if active and name in object.__getattribute__(self, "__dict__"):
            return tracer.read(self, name, value)
        return value

    def setattr_(self: nn.Module, name: str, value: Any) -> None:
        stowing = name.startswith("_tensor_constant")  # fx keeps constants on the root
        if self is module and _ACTIVE and _ACTIVE[-1] is tracer and not stowing:
            raise TraceRefused(f"the forward assigns self.{name}")
        nn.Module.__setattr__(self, name, value)

    recorder = type(
        cls.__name__, (cls,), {"__getattribute__": getattribute, "__setattr__": setattr_}
    )
    recorder.__module__ = cls.__module__
    recorder.__qualname__ = cls.__qualname__
    object.__setattr__(module, "__class__", recorder)
    try:
        yield
    finally:
        object.__setattr__(module, "__class__", cls)


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
    code is identical share one graph. ``guards`` are the Python values read from the module
    while tracing; the graphs hold for as long as the module still has them.
    """

    variants: dict[tuple, fx.Graph]
    optional: tuple[str, ...] = ()
    guards: dict[str, Any] = field(default_factory=dict)
    # Whether the graphs hold only for the traced module's tensor shapes: the tracer answered
    # a weight-only size, shape, dtype or device with a value (``[2] * bw.size(0)``). When it
    # did not, an instance whose tensors differ only in shape traces to the same graphs.
    shape_bound: bool = True

    def graphs(self) -> list[fx.Graph]:
        unique: dict[int, fx.Graph] = {}
        for graph in self.variants.values():
            unique.setdefault(id(graph), graph)
        return list(unique.values())


def _optional_arguments(cls: type) -> tuple[inspect.Signature | None, tuple[str, ...]]:
    try:
        sig = inspect.signature(cls.forward)
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

    The eval-mode variants are traced only when the training-mode trace read ``training``.
    Constants fx stows on the traced module are kept in ``node.meta`` and removed from the
    module again; :func:`adopt_constants` gives them a home only when a graph is installed.
    Raises :class:`TraceRefused` (or fx's own error) when the forward cannot be captured.
    """
    _, optional = _optional_arguments(type(module))
    was_training = module.training
    before = dict(vars(module))
    variants: dict[tuple, fx.Graph] = {}
    by_code: dict[str, tuple[fx.Graph, Any]] = {}  # generated source -> (graph, its code)
    guards: dict[str, Any] = {}
    answered = False
    try:
        for mode in (True, False):
            if not mode and "training" not in guards:
                variants.update({(False, *key[1:]): g for key, g in list(variants.items())})
                break
            object.__setattr__(module, "training", mode)
            for nones in itertools.product((False, True), repeat=len(optional)):
                concrete = {name: None for name, none in zip(optional, nones, strict=True) if none}
                graph, tracer = _trace_with_constants(module, concrete)
                answered |= tracer.answered
                for key, value in tracer.reads.items():
                    guards.setdefault(key, value)
                code = graph.python_code(root_module="self")
                graph, _ = by_code.setdefault(code.src, (graph, code))
                variants[(mode, nones)] = graph
    finally:
        object.__setattr__(module, "training", was_training)
        for name in set(vars(module)) - set(before):
            delattr(module, name)
    guards.pop("training", None)
    for graph, code in by_code.values():
        check_generated(graph, type(module).__name__, code)
    return OwnGraphs(variants, optional, guards, shape_bound=answered)


def _trace_with_constants(
    module: nn.Module, concrete: dict[str, None]
) -> tuple[fx.Graph, OwnForwardTracer]:
    """Trace and keep each stowed constant's value on the graph (``node.meta``)."""
    tracer = OwnForwardTracer()
    graph = tracer.trace_own(module, concrete)
    for node in graph.nodes:
        if node.op == "get_attr" and node.target.startswith("_tensor_constant"):
            node.meta["uabnn_constant"] = getattr(module, node.target)
    return graph, tracer


def check_generated(graph: fx.Graph, label: str, code: Any = None) -> None:
    """Refuse a graph whose generated code does not compile or names a global it cannot see
    (``code``: the graph's ``python_code``, when the caller has it already)."""
    code = code if code is not None else graph.python_code(root_module="self")
    try:
        compiled = compile(code.src, f"<uabnn_convert forward of {label}>", "exec")
    except SyntaxError as e:
        raise TraceRefused(f"the traced code does not compile ({e.msg})") from e
    namespace = dict(code.globals)
    exec(compiled, namespace)
    missing = sorted(
        {
            ins.argval
            for ins in dis.get_instructions(namespace["forward"])
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")
            and ins.argval not in namespace
            and not hasattr(builtins, ins.argval)
        }
    )
    if missing:
        raise TraceRefused(f"the traced code refers to {', '.join(missing)}, which it cannot see")


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
                obj = obj.__dict__[part] if part in obj.__dict__ else getattr(obj, part)
        else:
            obj = getattr(obj, part)
    return obj


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


_COMPILED: list[dict[tuple, tuple[Callable, Any]]] = []


@contextlib.contextmanager
def compiled_once() -> Iterator[None]:
    """Inside, graphs that generate the same code over the same globals share one compiled
    code object: the instances of a class converted alike (a ResNet's sixteen binary convs)
    compile once, each under its own name in tracebacks. Scoped to one conversion, so
    nothing outlives the call that made it."""
    _COMPILED.append({})
    try:
        yield
    finally:
        _COMPILED.pop()


def copy_graphs(graphs: OwnGraphs) -> OwnGraphs:
    """A deep copy of another instance's graphs, each marked with the graph it copies, so that
    :func:`compile_forward` can recognise equal code without generating it again."""
    copied = copy.deepcopy(graphs)
    for old, new in zip(graphs.graphs(), copied.graphs(), strict=True):
        new._uabnn_origin = getattr(old, "_uabnn_origin", old)  # fx's deepcopy drops it
    return copied


def _structure(graph: fx.Graph) -> tuple:
    """Every node's name, op, target and arguments: between copies of one graph, equal
    structure means equal generated code (a rewrite changes targets, nodes or arguments)."""

    def target(t: Any) -> Any:
        return t if isinstance(t, str) else id(t)

    return tuple(
        (n.name, n.op, target(n.target), repr(fx.node.map_arg((n.args, n.kwargs), str)))
        for n in graph.nodes
    )


def compile_forward(graph: fx.Graph, label: str) -> Callable:
    """Python function ``forward(self, ...)`` generated from ``graph``."""
    cache = _COMPILED[-1] if _COMPILED else {}
    origin = getattr(graph, "_uabnn_origin", graph)
    copied = ("copy of", id(origin), _structure(graph))
    filename = f"<uabnn_convert forward of {label}>"
    if copied not in cache:
        code = graph.python_code(root_module="self")
        key = (code.src, tuple((name, id(value)) for name, value in code.globals.items()))
        if key not in cache:
            namespace = dict(code.globals)
            exec(compile(code.src, filename, "exec"), namespace)
            cache[key] = (namespace["forward"], None)
        # The entries hold what their ids name (the globals, the origin graph): ids stay valid.
        cache[copied] = (cache[key][0], origin)
    fn = cache[copied][0]
    if fn.__code__.co_filename == filename:
        return fn
    # Another instance's compiled code, under this module's name in tracebacks.
    renamed = types.FunctionType(
        fn.__code__.replace(co_filename=filename), fn.__globals__, fn.__name__, fn.__defaults__
    )
    renamed.__kwdefaults__ = fn.__kwdefaults__
    return renamed


_MISSING = object()


def install_forward(
    module: nn.Module,
    graphs: OwnGraphs,
    label: str,
    refresh: Callable[[nn.Module], None] | None = None,
) -> None:
    """Run ``module`` through its rewritten graph(s) via a per-instance subclass.

    A subclass (rather than an instance attribute) keeps ``isinstance`` true, is what
    ``torch.fx``/``torch.export`` look up (they read ``type(root).forward``), and is undone by
    restoring ``__class__``. ``refresh(module)`` (a module-level function, so that it pickles)
    re-captures the module when one of the graphs' guards no longer holds.
    """
    for graph in graphs.graphs():
        adopt_constants(module, graph)
        graph.lint()
    base = original_class(module)
    module.__class__ = _rewritten_class(base, graphs, label, refresh)


def _rewritten_class(
    base: type[nn.Module],
    graphs: OwnGraphs,
    label: str,
    refresh: Callable[[nn.Module], None] | None,
) -> type[nn.Module]:
    compiled = {id(g): compile_forward(g, label) for g in graphs.graphs()}
    table = {key: compiled[id(graph)] for key, graph in graphs.variants.items()}
    sig, _ = _optional_arguments(base)
    optional = graphs.optional
    guards = tuple(graphs.guards.items())

    def forward(self, *args, **kwargs):
        if guards and _stale(self, guards):
            _refresh(self)
            return type(self).forward(self, *args, **kwargs)
        nones: tuple = ()
        if optional:
            bound = sig.bind(self, *args, **kwargs).arguments
            nones = tuple(bound.get(name) is None for name in optional)
        return table[(self.training, nones)](self, *args, **kwargs)

    def __reduce_ex__(self, protocol):
        return _rebuild, (base, graphs, label, refresh), self.__getstate__()

    return type(
        base.__name__,
        (base,),
        {
            "forward": forward,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__reduce_ex__": __reduce_ex__,
            "_uabnn_base": base,
            "_uabnn_graphs": graphs,
            "_uabnn_refresh": refresh,
        },
    )


def _stale(module: nn.Module, guards: tuple[tuple[str, Any], ...]) -> bool:
    values = module.__dict__
    return any(values.get(name, _MISSING) != value for name, value in guards)


@torch.compiler.disable
def _refresh(module: nn.Module) -> None:
    refresh = type(module).__dict__.get("_uabnn_refresh")
    guards = type(module).__dict__["_uabnn_graphs"].guards
    changed = [n for n, v in guards.items() if module.__dict__.get(n, _MISSING) != v]
    if refresh is None:
        raise RuntimeError(
            f"{type(module).__name__}: attribute(s) {changed} changed after the module was "
            "frozen; its frozen graph read the old values: freeze it again"
        )
    refresh(module)


def _rebuild(
    base: type[nn.Module],
    graphs: OwnGraphs,
    label: str,
    refresh: Callable[[nn.Module], None] | None,
) -> nn.Module:
    """Unpickle a rewritten module: a bare instance of a fresh rewritten subclass (the state
    is set afterwards by ``__setstate__``)."""
    cls = _rewritten_class(base, graphs, label, refresh)
    return cls.__new__(cls)


def installed_graphs(module: nn.Module) -> OwnGraphs | None:
    return type(module).__dict__.get("_uabnn_graphs")


def original_class(module: nn.Module) -> type[nn.Module]:
    return getattr(type(module), "_uabnn_base", type(module))


def is_rewritten(module: nn.Module) -> bool:
    """Whether ``module`` runs rewritten graphs (a captured module runs its own forward)."""
    return "_uabnn_graphs" in type(module).__dict__


def restore_class(module: nn.Module) -> None:
    """Undo :func:`install_forward`: the module runs its class's own forward again."""
    if is_rewritten(module):
        module.__class__ = original_class(module)
    for name in [n for n in module._buffers if n.startswith(_CONST_PREFIX)]:
        del module._buffers[name]
