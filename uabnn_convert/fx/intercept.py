"""The run-time capture: weight signs answered while a module's own forward runs, unchanged.

For modules the trace refuses (:mod:`.tracing`) — a forward that builds modules, branches on
an input's shape, writes ``weight.data``, updates buffers on an epoch condition — the module
keeps its own forward and runs it as written, so everything stays live. A per-instance subclass
(as for traced modules: ``isinstance`` holds, it pickles as the original class, restoring
``__class__`` undoes it) puts a :class:`~torch.overrides.TorchFunctionMode` around that forward
that follows data flow:

* every tensor computed from the forward's inputs is *tainted*; every tensor computed from the
  module's parameters, buffers or tensor attributes (and nothing tainted) carries those
  *sources*. Each op passes its arguments' marks to its results (in-place ops to the tensor
  they write), so ``self.weight.data``, ``w - w.mean()``, a latent kept in ``weight.org``
  or written by slice assignment are all followed;
* a ``sign`` / ``sign_`` whose input carries sources and no taint is a weight sign (the
  paper's site); one on tainted values is an activation sign and is left alone. A weight sign
  is known by where the forward makes it — the source line that calls it, and how many times
  that line has called it in this forward — so another control-flow path (an eval branch, an
  epoch-gated update) does not shift which site answers which sign. Each known one is answered
  by its c-sign site (a :class:`~uabnn_convert.core.CSignSite` child, so its state is in the
  state_dict like any traced site's).

Which weight signs a module makes is learnt by running the model once on example inputs
(:func:`discover`, on a copy when the model can be copied), so this capture needs
``patch(model, example_inputs=...)``. A weight sign made where the capture saw none (a path the
example inputs did not take, RBNN's once-an-epoch rotation solver) is computed as written, with
a warning the first time. The cost is a Python call per op inside captured modules only.
``torch.compile`` runs a captured module eagerly between two graphs (its forward is
``torch.compiler.disable``-d; traced through, dynamo answered the first module's weight signs
as written, measured on BinaryNet's and three other fixtures); ``fullgraph=True`` refuses it.
"""

from __future__ import annotations

import copy
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from ..core import CSignSite
from ..core.csign import inside_csign
from .names import frozen_name, site_name

SIGN_OPS = {torch.sign: "torch.sign", Tensor.sign: "Tensor.sign", Tensor.sign_: "Tensor.sign_"}
_TAINT = "<input>"
_state = threading.local()


@dataclass
class SiteRecord:
    """One weight sign a captured forward made, as discovery saw it."""

    source: str
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    op: str
    where: tuple[str, int, int]  # file, line, occurrence of that line in one forward


@dataclass
class InterceptPlan:
    """What a captured module's interceptor answers: the weight sign made at ``where[i]``
    with site ``sites[i]`` (a child module), or, once frozen, with buffer ``frozen[i]``."""

    sites: list[str]
    where: list[tuple[str, int, int]]
    reason: str = ""
    frozen: list[str | None] = field(default_factory=list)
    warned: set[tuple[str, int, int]] = field(default_factory=set)

    def index(self, where: tuple[str, int, int]) -> int | None:
        try:
            return self.where.index(where)
        except ValueError:
            return None


PLAN_ATTR = "_uabnn_intercept"


def plan_of(module: nn.Module) -> InterceptPlan | None:
    return module.__dict__.get(PLAN_ATTR)


class _Tracker(TorchFunctionMode):
    """Follows taint and sources through one forward call of ``owner``; ``on_sign`` decides
    what a weight sign returns (``None``: compute it as written)."""

    def __init__(
        self,
        owner: nn.Module,
        inputs: Any,
        on_sign: Callable[[tuple[str, int, int], str, str, Tensor], Tensor | None],
    ) -> None:
        super().__init__()
        self.marks: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.on_sign = on_sign
        self.lines: dict[tuple[str, int], int] = {}
        self.rank: dict[str, tuple] = {}
        for name, t in _named_tensors(owner):
            self.marks[t] = frozenset({name})
            self.rank[name] = (not isinstance(t, nn.Parameter), -t.numel(), name)
        for t in tree_leaves(inputs):
            if isinstance(t, Tensor):
                self.marks[t] = frozenset({_TAINT})

    def _mark(self, values: Sequence[Any]) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for v in values:
            if isinstance(v, Tensor):
                out = out | self.marks.get(v, frozenset())
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if inside_csign():
            return func(*args, **kwargs)
        leaves = tree_leaves((args, kwargs))
        mark = self._mark(leaves)
        op = SIGN_OPS.get(func)
        if op is not None and mark and _TAINT not in mark and args[0].is_floating_point():
            caller = sys._getframe(1)
            line = (caller.f_code.co_filename, caller.f_lineno)
            occurrence = self.lines.get(line, 0)
            self.lines[line] = occurrence + 1
            source = min(mark, key=lambda n: self.rank.get(n, (True, 0, n)))
            value = self.on_sign((*line, occurrence), source, op, args[0])
            if value is not None:
                if op == "Tensor.sign_":
                    with torch.no_grad():
                        args[0].copy_(value.detach())
                    value = args[0]
                self.marks[value] = mark
                return value
        result = func(*args, **kwargs)
        if mark:
            for t in tree_leaves(result):
                if isinstance(t, Tensor):
                    self.marks[t] = self.marks.get(t, frozenset()) | mark
            name = getattr(func, "__name__", "")
            if args and isinstance(args[0], Tensor) and (name.endswith("_") or name in _WRITES):
                self.marks[args[0]] = self.marks.get(args[0], frozenset()) | mark
        return result


_WRITES = {"__setitem__", "__set__", "copy_"}


def _named_tensors(owner: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Parameters, buffers and tensor attributes of ``owner`` and its children, and tensors
    kept as attributes of its parameters (BinaryNet's ``weight.org``)."""
    for prefix, module in owner.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, t in [*module._parameters.items(), *module._buffers.items()]:
            if t is None:
                continue
            yield f"{dot}{name}", t
            for attr, value in vars(t).items():
                if isinstance(value, Tensor):
                    yield f"{dot}{name}.{attr}", value
        for attr, value in vars(module).items():
            if isinstance(value, Tensor):
                yield f"{dot}{attr}", value


# ------------------------------------------------------------------------------- discovery
def discover(
    model: nn.Module, owners: dict[str, nn.Module], example_inputs: Any
) -> dict[str, list[SiteRecord]]:
    """Run ``model`` once (training mode, no gradient) and record, for each module named in
    ``owners``, the weight signs its forward makes.

    The run uses a deep copy when the model can be copied, so the forward's side effects
    (BatchNorm statistics, BinaryNet's ``weight.data`` writes, RBNN's rotation updates) stay
    off the user's model; otherwise it runs on the model with every parameter and buffer
    restored afterwards.
    """
    try:
        target = copy.deepcopy(model)
        restore = None
    except Exception:
        target = model
        restore = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    found: dict[str, list[SiteRecord]] = {name: [] for name in owners}
    seen: dict[str, bool] = {}
    modules = dict(target.named_modules())
    handles = []
    for name in owners:
        module = modules[name]

        def record(where, source: str, op: str, x: Tensor, name: str = name) -> None:
            if not seen.get(name):
                found[name].append(SiteRecord(source, x.shape, x.dtype, x.device, op, where))
            return None

        def enter(mod, args, kwargs, name=name, record=record):
            tracker = _Tracker(mod, (args, kwargs), record)
            _stack().append(tracker)
            tracker.__enter__()

        def leave(mod, args, kwargs, output, name=name):
            _stack().pop().__exit__(None, None, None)
            seen[name] = True

        handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(module.register_forward_hook(leave, with_kwargs=True, always_call=True))
    was = target.training
    try:
        target.train()
        with torch.no_grad():
            target(*_as_args(example_inputs))
    finally:
        for handle in handles:
            handle.remove()
        target.train(was)
        if restore is not None:
            with torch.no_grad():
                for key, value in model.state_dict(keep_vars=True).items():
                    value.copy_(restore[key])
    return found


def _as_args(example_inputs: Any) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _stack() -> list[_Tracker]:
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    return stack


# ------------------------------------------------------------------------------- run time
def _answer(module: nn.Module, plan: InterceptPlan):
    def answer(where: tuple[str, int, int], source: str, op: str, x: Tensor) -> Tensor | None:
        index = plan.index(where)
        if index is None:
            if where not in plan.warned:
                plan.warned.add(where)
                warnings.warn(
                    f"{type(module).__name__} made a weight sign at {where[0]}:{where[1]} that "
                    "the capture did not see (a path its example inputs did not take); it is "
                    "computed as written, not by c-sign",
                    stacklevel=2,
                )
            return None
        frozen = plan.frozen[index] if plan.frozen else None
        if plan.frozen:
            if frozen is None:
                return torch.sign(x.detach())
            return module.get_buffer(frozen).to(x.dtype)
        return module.get_submodule(plan.sites[index])(x)

    return answer


def _captured_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The forward of a captured module: its class's own forward, followed by a tracker.

    Disabled for ``torch.compile``: dynamo would trace the tracker's ``__torch_function__``
    with its own frames (so the call-site keys would not match) and answer the weight signs
    of the first captured module as written. Disabled, the module runs eagerly between two
    graphs, exactly as without compile; ``fullgraph=True`` refuses it.
    """
    base = type(self).__dict__["_uabnn_base"]
    plan = plan_of(self)
    if plan is None:
        return base.forward(self, *args, **kwargs)
    tracker = _Tracker(self, (args, kwargs), _answer(self, plan))
    with tracker:
        return base.forward(self, *args, **kwargs)


_captured_forward = torch.compiler.disable(_captured_forward)
_CAPTURED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _captured_class(base: type[nn.Module]) -> type[nn.Module]:
    """One subclass per original class (``isinstance`` holds; restoring ``__class__`` undoes
    it); it pickles as the original class with the module's state, plan included."""
    cls = _CAPTURED_CLASSES.get(base)
    if cls is None:

        def __reduce_ex__(self: nn.Module, protocol: int) -> Any:
            return _new_captured, (base,), self.__getstate__()

        cls = type(
            base.__name__,
            (base,),
            {
                "forward": _captured_forward,
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__reduce_ex__": __reduce_ex__,
                "_uabnn_base": base,
            },
        )
        _CAPTURED_CLASSES[base] = cls
    return cls


def _new_captured(base: type[nn.Module]) -> nn.Module:
    """Unpickle a captured module: a bare instance (``__setstate__`` sets the state)."""
    cls = _captured_class(base)
    return cls.__new__(cls)


Captured = dict[str, tuple[nn.Module, list[SiteRecord], str]]


def capture_names(captured: Captured) -> dict[str, list[str]]:
    """The site names each captured module will get (``weight_csign``, ``weight_csign_1``…)."""
    out = {}
    for owner, (module, records, _) in captured.items():
        used: dict[str, int] = {}
        out[owner] = [site_name(module, r.source, used) for r in records]
    return out


class InterceptSigns:
    """Capture modules at run time: sites as children, a plan, and the capturing subclass."""

    def __init__(
        self, captured: Captured, make_site: Callable[[str, str, SiteRecord], CSignSite]
    ) -> None:
        self.captured = captured
        self.make_site = make_site
        self.sites: list[CSignSite] = []

    def apply(self, model: nn.Module) -> nn.Module:
        done: list[nn.Module] = []
        names_of = capture_names(self.captured)
        try:
            for owner, (module, records, reason) in self.captured.items():
                names = names_of[owner]
                for name, record in zip(names, records, strict=True):
                    site = self.make_site(owner, name, record)
                    site.train(module.training)
                    module.add_module(name, site)
                    self.sites.append(site)
                where = [r.where for r in records]
                module.__dict__[PLAN_ATTR] = InterceptPlan(names, where, reason)
                module.__class__ = _captured_class(type(module))
                done.append(module)
        except BaseException:
            for module in done + [entry[0] for entry in self.captured.values()]:
                release(module)
            raise
        return model


def release(module: nn.Module) -> None:
    """Undo the capture of one module: its class, plan and sites (or frozen buffers)."""
    plan = module.__dict__.pop(PLAN_ATTR, None)
    base = type(module).__dict__.get("_uabnn_base")
    if base is not None and type(module) is _CAPTURED_CLASSES.get(base):
        module.__class__ = base
    if plan is not None:
        for name in plan.sites:
            if isinstance(module._modules.get(name), CSignSite):
                del module._modules[name]
        for name in plan.frozen:
            if name is not None:
                module._buffers.pop(name, None)


def is_captured(module: nn.Module) -> bool:
    return plan_of(module) is not None


def freeze_captured(module: nn.Module) -> list[str | None]:
    """Replace a captured module's sites by the binary values they hold (buffers); a site that
    holds no state yet answers with the sign of its latent (``None``). Returns the buffer
    names, aligned with the sites."""
    plan = plan_of(module)
    assert plan is not None
    frozen: list[str | None] = []
    for name in plan.sites:
        site = module.get_submodule(name)
        buffer = frozen_name(name)
        if int(site.num_updates) > 0:
            module.register_buffer(buffer, site.held.detach().clone())
            frozen.append(buffer)
        else:
            frozen.append(None)
        del module._modules[name]
    plan.frozen = frozen
    return frozen
