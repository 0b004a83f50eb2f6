"""A binary-aware model summary in the spirit of ``larq.models.summary``.

Per layer (every module that holds tensors of its own or runs a multiply-accumulate op):
parameters by precision, memory at deployment, and multiply-accumulates (MACs) split into
binary and float. A MAC is binary — XNOR-popcount-able — when both its operands are binary,
as in larq, whose MAC precision is the larger of the input's and the weight's.

How precision is decided, for any model this package handles (an original BNN, a converted
one, ``uc.freeze``'s copy, :func:`~uabnn_convert.deploy.load_packed`'s model):

* a tensor is **1-bit** when it is what a weight-sign site binarizes (the latent weight that
  :func:`~uabnn_convert.fx.scan` finds behind each site) or a tensor a packed file stored
  as bits. A frozen model's ``*_binary`` constant repeats its latent and is not counted again.
  Every other floating-point parameter and persistent buffer (BatchNorm statistics included,
  like Keras' non-trainable weights) is **32-bit**; integer buffers are bookkeeping and
  c-sign state is training machinery, so neither is counted.
* a conv/matmul's **weight** is binary when it runs inside a module holding a 1-bit tensor
  with as many elements (Bi-Real's ``mean|W|·sign(W)`` is computed from the latent in
  ``forward``, so the operand is never the parameter itself);
* its **input** is binary when every value of it, in one eval forward of a random input, is
  ±1 (to 1e-5, which admits the straight-through arithmetic's rounding) or 0.

MACs are counted in ``aten`` ops during that forward (``convolution``, ``mm``, ``addmm``,
``bmm``, ``baddbmm``), per sample: a conv's MACs are its output elements times the weight
elements per output channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..core import CSign
from ..fx import frozen_name, original_class, scan
from ..report import Report, format_bytes
from .bits import BINARY_MARK

COLUMNS = [
    "layer",
    "type",
    "input_bits",
    "output",
    "params_1bit",
    "params_32bit",
    "memory_bytes",
    "macs_binary",
    "macs_float",
]
_BINARY_TOLERANCE = 1e-5
_aten = torch.ops.aten


def summary(model: nn.Module, input_size: Sequence[int]) -> Report:
    """Per-layer parameters by precision, deployment memory and binary/float MACs.

    ``input_size`` is one sample's shape without the batch dim, e.g. ``(3, 224, 224)``. The
    model runs one eval-mode forward on a random input under ``no_grad`` (c-sign state does not
    advance in eval mode) and its modes are restored afterwards. Returns a :class:`Report`
    whose ``total`` also holds ``float32_bytes``, ``compression_ratio``, ``macs`` and
    ``binary_mac_fraction``; print it with rich.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects a torch.nn.Module, got {type(model).__name__}")
    size = tuple(int(d) for d in input_size)
    if not size or any(d <= 0 for d in size):
        raise ValueError(f"input_size must be positive sizes without the batch dim, got {size}")
    machinery = {id(m) for c in model.modules() if isinstance(c, CSign) for m in c.modules()}
    binary, skipped = _binary_tensors(model)
    layers: dict[int, tuple[str, nn.Module, dict[str, Any]]] = {}
    seen: set[int] = set(skipped)  # a shared tensor counts once, where it first appears
    for name, module in model.named_modules():
        if id(module) not in machinery:
            layers[id(module)] = (name or "<root>", module, _count(module, binary, seen))
    run = _Run(model, {key: name for key, (name, _, _) in layers.items()}, binary)
    run.forward(size)
    rows = []
    for key, (name, module, counted) in layers.items():
        ops = run.ops.get(key)
        if not (counted["params_1bit"] or counted["params_32bit"] or ops):
            continue
        rows.append(
            {
                "layer": name,
                "type": original_class(module).__name__,
                "input_bits": ops["input_bits"] if ops else "-",
                "output": run.outputs.get(key, "-"),
                **counted,
                "macs_binary": ops["macs_binary"] if ops else 0,
                "macs_float": ops["macs_float"] if ops else 0,
            }
        )
    return _report(model, rows, size)


def _binary_tensors(model: nn.Module) -> tuple[dict[int, int], set[int]]:
    """``{id(tensor): owner module id}`` of 1-bit tensors, and ids of tensors to leave out."""
    binary: dict[int, int] = {}
    skipped: set[int] = set()
    found, _ = scan(model)
    for f in found:
        for s in f.sites:
            owner_path, _, attr = s.source.rpartition(".")
            owner = f.module.get_submodule(owner_path) if owner_path else f.module
            tensor = getattr(owner, attr, None)
            if isinstance(tensor, Tensor):
                binary[id(tensor)] = id(f.module)
            copy_ = f.module._buffers.get(frozen_name(s.name))
            if copy_ is not None:
                skipped.add(id(copy_))
    for module in model.modules():
        for name in getattr(module, BINARY_MARK, ()):
            tensor = module._buffers.get(name)
            if tensor is not None:
                binary[id(tensor)] = id(module)
    return binary, skipped


def _count(module: nn.Module, binary: dict[int, int], seen: set[int]) -> dict[str, Any]:
    """Elements and deployment bytes of the tensors ``module`` holds itself."""
    ones = floats = memory = 0
    persistent = [
        t for n, t in module._buffers.items() if n not in module._non_persistent_buffers_set
    ]
    for tensor in (*module._parameters.values(), *persistent):
        if tensor is None or not tensor.is_floating_point() or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in binary:
            ones += tensor.numel()
            memory += math.ceil(tensor.numel() / 8)
        else:
            floats += tensor.numel()
            memory += tensor.numel() * tensor.element_size()
    return {"params_1bit": ones, "params_32bit": floats, "memory_bytes": memory}


class _Run(TorchDispatchMode):
    """One eval forward: the module running each MAC op, its operands, output shapes."""

    def __init__(self, model: nn.Module, names: dict[int, str], binary: dict[int, int]) -> None:
        super().__init__()
        self.model = model
        self.names = names
        tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
        self.binary_numels: dict[int, set[int]] = {}
        for tensor_id, owner in binary.items():
            numel = tensors[tensor_id].numel()
            self.binary_numels.setdefault(owner, set()).add(numel)
        self.stack: list[int] = []
        self.ops: dict[int, dict[str, Any]] = {}
        self.outputs: dict[int, tuple[int, ...]] = {}

    def forward(self, size: tuple[int, ...]) -> None:
        modes = {m: m.training for m in self.model.modules()}
        handles = []
        for module in self.model.modules():
            if id(module) in self.names:
                handles.append(module.register_forward_pre_hook(self._enter))
                handles.append(module.register_forward_hook(self._leave))
        example = torch.randn(1, *size, dtype=_dtype(self.model), device=_device(self.model))
        try:
            self.model.eval()
            with torch.no_grad(), self:
                self.model(example)
        finally:
            for handle in handles:
                handle.remove()
            for module, mode in modes.items():
                module.training = mode

    def _enter(self, module: nn.Module, args: Any) -> None:
        self.stack.append(id(module))

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack and self.stack[-1] == id(module):
            self.stack.pop()
        if isinstance(output, Tensor) and id(module) not in self.outputs:
            self.outputs[id(module)] = tuple(output.shape[1:])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        operands = _mac_operands(func, args, out)
        if operands is not None and self.stack:
            activation, weight, macs = operands
            owner = self.stack[-1]
            weight_binary = weight.numel() in self.binary_numels.get(owner, ())
            input_binary = _is_binary(activation)
            entry = self.ops.setdefault(owner, {"macs_binary": 0, "macs_float": 0, "input_bits": 0})
            entry["macs_binary" if weight_binary and input_binary else "macs_float"] += macs
            bits = 1 if input_binary else activation.element_size() * 8
            entry["input_bits"] = max(entry["input_bits"], bits)
        return out


def _mac_operands(func: Any, args: Sequence[Any], out: Any) -> tuple[Tensor, Tensor, int] | None:
    """(activation, weight, MACs) of a multiply-accumulate op, else None (batch of one)."""
    packet = getattr(func, "overloadpacket", None)
    if packet is _aten.convolution:
        x, w, transposed = args[0], args[1], bool(args[6])
        return x, w, (x.numel() if transposed else out.numel()) * w.shape[1:].numel()
    if packet in (_aten.mm, _aten.addmm):
        a, b = (args[0], args[1]) if packet is _aten.mm else (args[1], args[2])
        return a, b, a.shape[0] * a.shape[1] * b.shape[1]
    if packet in (_aten.bmm, _aten.baddbmm):
        a, b = (args[0], args[1]) if packet is _aten.bmm else (args[1], args[2])
        return a, b, a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return None


def _is_binary(x: Tensor) -> bool:
    if not x.is_floating_point() or x.numel() == 0:
        return False
    magnitude = x.abs()
    ok = (magnitude == 0) | ((magnitude - 1).abs() <= _BINARY_TOLERANCE)
    return bool(ok.all()) and bool((magnitude != 0).any())


def _dtype(model: nn.Module) -> torch.dtype:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _report(model: nn.Module, rows: list[dict[str, Any]], size: tuple[int, ...]) -> Report:
    ones = sum(r["params_1bit"] for r in rows)
    floats = sum(r["params_32bit"] for r in rows)
    memory = sum(r["memory_bytes"] for r in rows)
    binary_macs = sum(r["macs_binary"] for r in rows)
    float_macs = sum(r["macs_float"] for r in rows)
    float32 = 4.0 * (ones + floats)
    macs = binary_macs + float_macs
    total = {
        "layer": "total",
        "params_1bit": ones,
        "params_32bit": floats,
        "memory_bytes": memory,
        "macs_binary": binary_macs,
        "macs_float": float_macs,
        "params": ones + floats,
        "float32_bytes": float32,
        "compression_ratio": float32 / memory if memory else math.nan,
        "macs": macs,
        "binary_mac_fraction": binary_macs / macs if macs else 0.0,
    }
    notes = [
        f"total params: {ones + floats:,} ({ones:,} 1-bit, {floats:,} 32-bit)",
        f"model size: {format_bytes(memory)}; float-32 equivalent: {format_bytes(float32)}; "
        f"compression ratio of memory: {total['compression_ratio']:.2f}",
        f"MACs per sample: {macs:,} ({binary_macs:,} binary); "
        f"ratio of MACs that are binarized: {total['binary_mac_fraction']:.4f}",
        f"measured in one eval forward of a random input of shape 1×{'×'.join(map(str, size))}",
    ]
    title = f"binary-aware summary of {original_class(model).__name__}"
    return Report(title, list(COLUMNS), rows, total, notes)
