"""Deployment exports: a bit-packed safetensors file, and ONNX.

What a deployed binary layer needs
----------------------------------
``uc.freeze`` replaces each c-sign site by a constant buffer (``weight_binary``), but the frozen
forward still reads the float latent weight: Bi-Real/ReActNet compute ``mean|W|`` from it every
call, IR-Net its power-of-two scale, and Bi-Real/BONN's straight-through arithmetic
``(s·b).detach() - clamp(W).detach() + clamp(W)`` is evaluated in eval mode too. That last one
is not an identity in floating point: measured on Bi-Real layers, 0.2–8 % of the effective
weights differ from ``s·b`` by 1–4 ulp. Storing ±1 bits and a scale would therefore change the
outputs, and storing the latent would store everything.

So the mechanism is general rather than per family (:func:`deploy`): freeze, then in each
binarizing module's eval graph *fold* every value computed from parameters and buffers alone
into a constant buffer at the point where it meets an activation. What is left is exactly
what the layer multiplies activations by — Bi-Real's effective weight (``folded_add``),
ReActNet's ±1 kernel and its per-channel scale (``weights_binary``, ``folded_reshape``),
IR-Net's ``b·2^round(log2 mean|w|)`` (``folded_mul``), BONN's ``b·scale``, XNOR's ``b·alpha``
— and latent weights nothing reads any more are dropped. The folded values are computed by the
same ops on the same tensors as the frozen forward computes them, so the deployed model's
outputs equal the frozen model's bit for bit. Every other module (stem, classifier, BatchNorm,
RPReLU, shortcuts) is untouched and stored as it is.

Packed file (:func:`export_packed`)
-----------------------------------
A safetensors file (no pickle) whose metadata ``uabnn_packed`` is a JSON header: format and
version, the architecture reference (timm/zoo name or ``package.module:factory`` and its
arguments), the sites (latent shape, family, the stored tensor each became), the bit order,
and, per packed tensor, what decoding needs (dtype, shape, factor layout, exception count).
Every state_dict tensor is stored one of two ways:

* raw — the tensor itself, under its state_dict key (every tensor not derived from a site);
* ``signbits`` — tensors derived from a site: ``V = where(bit, F, -F)`` exactly, except at a few
  positions. ``KEY::bits`` holds one bit per element of ``V`` flattened in C order, element
  ``i`` in bit ``i % 8`` (least significant first, ``bit_order="little"``) of byte ``i // 8``,
  1 for ``+F`` and 0 for ``-F`` (the float sign bit, inverted). ``KEY::factor`` is ``F``: one
  value, or one per slice along ``factor_dim`` (the most frequent magnitude there). Elements
  whose bit pattern differs from that (the straight-through rounding above, a ``sign(0)``
  zero) are exceptions: ``KEY::exc_mask`` marks them (packed like the bits) and
  ``KEY::exc_delta`` holds, in position order, the integer difference of their float bit
  patterns from the reconstruction (``delta_dtype``, little-endian); both are zlib streams.
  The exceptions are information the frozen forward really computes: in a Bi-Real layer
  trained for a few steps about 9 % of the weights are exceptions, so exactness then costs
  about a third more than the bits.

Each encoding is decoded and compared bit for bit at export; a tensor that does not survive,
or that would not get smaller, is stored raw instead and the header's ``notes`` say so.
Loading (:func:`load_packed`) builds the architecture, patches, freezes and folds it the same
way and loads the decoded tensors strictly, so a file that does not fit the architecture is an
error. Writes are atomic (temporary file in the target directory, then ``os.replace``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from . import __version__
from .api import ConversionError, patch, sites
from .atomic import atomic_path, atomic_write_bytes
from .detect import ModuleSites
from .io import CheckpointError, build_arch
from .report import Report
from .rewrite import freeze_modules, frozen_name
from .site import CSignSite
from .tracing import evaluate, install_forward

FORMAT = "uabnn-packed"
FORMAT_VERSION = 1
BIT_ORDER = "little"
METADATA_KEY = "uabnn_packed"
FOLDED_PREFIX = "folded_"
BINARY_MARK = "_uabnn_packed_binary"
"""Attribute that :func:`load_packed` sets on a module: names of its buffers stored as bits."""

PACKING = (
    "signbits: bit i of the C-order flattened tensor is bit (i % 8) of byte i // 8 "
    "(least significant first); 1 means +factor, 0 means -factor; factor is one value or one "
    "per slice along factor_dim; exceptions: exc_mask (packed like the bits) marks them and "
    "exc_delta holds, in position order, the integer difference of their float bit patterns "
    "from the reconstruction (delta_dtype, little-endian); both zlib-compressed"
)
_INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
_DELTA_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
_DTYPES = {str(d).removeprefix("torch."): d for d in (*_INT_VIEW, *_DELTA_DTYPES, torch.uint8)}
_SEP = "::"


class ExportError(CheckpointError):
    """A model cannot be exported as asked, or a packed file cannot be read or rebuilt.

    A :class:`~uabnn_convert.io.CheckpointError`, so the command line reports it in one line.
    """


# ------------------------------------------------------------------------- the deployed model


def deploy(model: nn.Module) -> nn.Module:
    """A deployable copy of a converted model: frozen, with weight-only computations folded.

    Its eval outputs equal ``uc.freeze(model)``'s bit for bit, and each binarizing module keeps
    only the tensors its forward multiplies activations by (see the module docstring). The copy
    is in eval mode and evaluates like that in either mode.
    """
    _check_converted(_unwrap(model), need_held=False)
    deployed, _ = _deploy(_unwrap(model), copy_model=True)
    return deployed


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and type(model).__name__ in (
        "DataParallel",
        "DistributedDataParallel",
    ):
        return inner
    return model


def _check_converted(model: Any, *, need_held: bool) -> list[tuple[str, CSignSite]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    found = list(sites(model))
    if not found:
        raise ConversionError(
            f"{type(model).__name__} has no c-sign site: export takes a converted model "
            "(uc.patch, then fine-tune); a frozen model cannot be packed, pass the converted one"
        )
    if need_held:
        fresh = [name for name, s in found if int(s.num_updates) == 0]
        if fresh:
            shown = ", ".join(fresh[:3]) + (", …" if len(fresh) > 3 else "")
            raise ConversionError(
                f"{len(fresh)} of {len(found)} c-sign sites hold no state yet (0 updates: "
                f"{shown}); a site holds its binary state after its first training-mode "
                "forward, so train (or run one training step) before exporting"
            )
    return found


def _deploy(model: nn.Module, *, copy_model: bool) -> tuple[nn.Module, dict[str, list[str]]]:
    """Freeze (as ``uc.freeze`` does) and fold; return the model and, for every state_dict
    key derived from a site, the names of those sites."""
    frozen = copy.deepcopy(model) if copy_model else model
    frozen.eval()
    frozen_modules = freeze_modules(frozen)
    derived: dict[str, list[str]] = {}
    for f in frozen_modules:
        for name, site_names in _fold(f).items():
            derived[f"{f.owner}.{name}" if f.owner else name] = site_names
    return frozen, derived


def _fold(found: ModuleSites) -> dict[str, list[str]]:
    """Fold the weight-only part of one frozen module's eval graph(s) into buffers.

    A node is constant when it reads only attributes (no input, no submodule call); a constant
    node used by a non-constant one is evaluated once and becomes a buffer. The eval graphs
    are installed for both modes; direct parameters and buffers they no longer read are
    removed (a ``None`` slot such as an absent bias stays: other code reads it). Returns, for
    each kept or new tensor that a site's binary value flows into, the qualified names of
    those sites.
    """
    module, owner, graphs = found.module, found.owner, found.graphs
    binary = {frozen_name(s.name): f"{owner}.{s.name}" if owner else s.name for s in found.sites}
    evals: dict[int, fx.Graph] = {}
    for (training, _), graph in graphs.variants.items():
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
    graph.eliminate_dead_code()
    return derived


# ------------------------------------------------------------------------------- bit packing


def pack_bits(bits: Tensor) -> Tensor:
    """Bool tensor -> uint8, 8 per byte: element ``i`` (C order) is bit ``i % 8`` of byte
    ``i // 8``, least significant first; the last byte is padded with zeros."""
    flat = bits.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` bits as a flat bool tensor."""
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != math.ceil(count / 8):
        raise ValueError(f"expected {math.ceil(count / 8)} packed bytes for {count} bits")
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.unsqueeze(1) >> shifts) & 1).reshape(-1)[:count].bool()


def _factor(magnitude: Tensor, dim: int | None, *, exact_mode: bool) -> Tensor:
    """The typical magnitude, overall or per slice along ``dim`` (keeping dims): the median
    (linear time) while comparing layouts, the most frequent value for the chosen one."""
    reduce = torch.mode if exact_mode else torch.median
    if dim is None:
        return reduce(magnitude.reshape(1, -1), dim=1).values.reshape([1] * magnitude.dim())
    moved = magnitude.movedim(dim, 0).reshape(magnitude.shape[dim], -1)
    shape = [1] * magnitude.dim()
    shape[dim] = magnitude.shape[dim]
    return reduce(moved, dim=1).values.reshape(shape)


def _reconstruct(bits: Tensor, factor: Tensor, shape: Sequence[int]) -> Tensor:
    positive = bits.reshape(shape)
    return torch.where(positive, factor, -factor).contiguous()


def _delta_dtype(delta: Tensor) -> torch.dtype:
    if delta.numel() == 0:
        return torch.int8
    lo, hi = int(delta.min()), int(delta.max())
    for dtype in _DELTA_DTYPES:
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return torch.int64


def encode_signbits(value: Tensor) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Encode a float tensor as sign bits, a factor and exact exceptions: ``(tensors, meta)``,
    or ``None`` when its dtype has no integer view.

    The factor is one value, or one per slice along the first or the last dim (per output
    channel of a ``(out, in, …)`` kernel or of an ``(in, out)`` matrix); the layout with the
    fewest exceptions wins. ``meta`` (dtype, shape, factor_dim, exceptions, delta_dtype) is
    what :func:`decode_signbits` needs besides the tensors.
    """
    if value.dtype not in _INT_VIEW or value.numel() == 0:
        return None
    value = value.detach().cpu().contiguous()
    bits = ~torch.signbit(value)
    magnitude = value.abs()
    dims: list[int | None] = [None]
    dims += [d for d in dict.fromkeys((0, value.dim() - 1)) if value.dim() and value.shape[d] > 1]
    best: tuple[int, Tensor, int | None, Tensor] | None = None
    for dim in dims:
        factor = _factor(magnitude, dim, exact_mode=False)
        candidate = _exceptions(value, bits, factor, dim)
        if best is None or candidate[0] < best[0]:
            best = candidate
        if not len(best[3]):
            break
    assert best is not None
    if len(best[3]):
        refined = _exceptions(value, bits, _factor(magnitude, best[2], exact_mode=True), best[2])
        if refined[0] < best[0]:
            best = refined
    _, factor, dim, where = best
    view = _INT_VIEW[value.dtype]
    target = value.view(view).reshape(-1)
    rebuilt = _reconstruct(bits, factor, value.shape).view(view).reshape(-1)
    delta = target[where].to(torch.int64) - rebuilt[where].to(torch.int64)
    delta_dtype = _delta_dtype(delta)
    mask = torch.zeros(value.numel(), dtype=torch.bool)
    mask[where] = True
    parts = {
        "bits": pack_bits(bits),
        "factor": factor.contiguous(),
        "exc_mask": _zlib(pack_bits(mask)),
        "exc_delta": _zlib(delta.to(delta_dtype)),
    }
    meta = {
        "dtype": _dtype_name(value.dtype),
        "shape": list(value.shape),
        "factor_dim": dim,
        "exceptions": int(where.numel()),
        "delta_dtype": _dtype_name(delta_dtype),
    }
    return parts, meta


def _exceptions(
    value: Tensor, bits: Tensor, factor: Tensor, dim: int | None
) -> tuple[int, Tensor, int | None, Tensor]:
    """(approximate cost, factor, dim, exception positions) of one factor layout."""
    view = _INT_VIEW[value.dtype]
    rebuilt = _reconstruct(bits, factor, value.shape).view(view).reshape(-1)
    where = (rebuilt != value.view(view).reshape(-1)).nonzero().reshape(-1)
    return factor.numel() * factor.element_size() + 2 * where.numel(), factor, dim, where


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _zlib(t: Tensor) -> Tensor:
    """The little-endian bytes of an integer tensor, zlib-compressed, as uint8."""
    array = t.contiguous().numpy()
    data = zlib.compress(array.astype(array.dtype.newbyteorder("<")).tobytes(), 9)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _unzlib(t: Tensor, dtype: torch.dtype, count: int) -> Tensor:
    try:
        data = zlib.decompress(t.numpy().tobytes())
    except zlib.error as e:
        raise ValueError(f"compressed exceptions are damaged ({e})") from e
    size = torch.empty(0, dtype=dtype).element_size()
    if len(data) != count * size:
        raise ValueError(f"expected {count * size} bytes of exceptions, got {len(data)}")
    array = np.frombuffer(data, dtype=np.dtype(str(dtype).removeprefix("torch.")).newbyteorder("<"))
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).to(dtype)


def decode_signbits(parts: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Tensor:
    """Inverse of :func:`encode_signbits`: bit for bit the tensor that was encoded."""
    dtype, shape = _DTYPES[meta["dtype"]], [int(d) for d in meta["shape"]]
    n, count = math.prod(shape), int(meta["exceptions"])
    bits = unpack_bits(parts["bits"], n)
    factor = parts["factor"]
    if factor.dtype != dtype or factor.dim() != len(shape):
        raise ValueError(f"factor of dtype {factor.dtype} and shape {tuple(factor.shape)}")
    view = _INT_VIEW[dtype]
    out = _reconstruct(bits, factor, shape).view(view).reshape(-1).clone()
    if count:
        mask = unpack_bits(_unzlib(parts["exc_mask"], torch.uint8, math.ceil(n / 8)), n)
        where = mask.nonzero().reshape(-1)
        delta = _unzlib(parts["exc_delta"], _DTYPES[meta["delta_dtype"]], count)
        if where.numel() != count:
            raise ValueError(f"{where.numel()} exception positions for {count} exceptions")
        out[where] = (out[where].to(torch.int64) + delta.to(torch.int64)).to(view)
    return out.view(dtype).reshape(shape)


# ------------------------------------------------------------------------------ packed files


def export_packed(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a converted model's deployable form, binary weights at 1 bit each, to ``path``.

    ``arch``/``arch_kwargs`` (a timm/zoo name or ``package.module:factory`` building the
    *unconverted* model) are recorded so that :func:`load_packed` rebuilds it alone; without
    them, ``load_packed`` needs ``arch=``. Every site must hold a state (at least one update).
    The write is atomic: on any error no file (and no partial file) is left at ``path``.
    """
    net = _unwrap(model)
    found = _check_converted(net, need_held=True)
    dst = _output_path(path)
    kwargs = _plain_kwargs(arch_kwargs or {})
    if arch is not None:
        _check_arch(net, arch, kwargs)
    deployed, derived = _deploy(net, copy_model=True)
    tensors: dict[str, Tensor] = {}
    packed: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for key, value in deployed.state_dict().items():
        if _SEP in key:
            raise ExportError(
                f"state_dict key {key!r} contains {_SEP!r}, which the format reserves"
            )
        value = value.detach().cpu().contiguous()
        encoded = _pack_exactly(key, value, notes) if key in derived else None
        if encoded is None:
            tensors[key] = value.clone()
            continue
        parts, meta = encoded
        for part, tensor in parts.items():
            tensors[f"{key}{_SEP}{part}"] = tensor.contiguous().clone()
        packed[key] = meta
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "arch": arch,
        "arch_kwargs": kwargs,
        "bit_order": BIT_ORDER,
        "packing": PACKING,
        "sites": {
            name: {
                "shape": list(s.shape),
                "family": s.family,
                "op": s.op_label,
                "tensors": sorted(k for k, v in derived.items() if name in v),
            }
            for name, s in found
        },
        "packed": packed,
        "notes": notes,
    }
    from safetensors.torch import save

    text = json.dumps(header, separators=(",", ":"))
    data = save(tensors, metadata={METADATA_KEY: text})
    return atomic_write_bytes(data, dst)


def _pack_exactly(
    key: str, value: Tensor, notes: list[str]
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Sign-bit encoding of ``value`` if it decodes bit for bit and is smaller, else None."""
    encoded = encode_signbits(value)
    if encoded is None:
        notes.append(f"{key}: {value.dtype} has no bit-exact packing; stored as it is")
        return None
    parts, meta = encoded
    view = _INT_VIEW[value.dtype]
    if not torch.equal(decode_signbits(parts, meta).view(view), value.view(view)):
        notes.append(f"{key}: packed form did not reproduce it exactly; stored as it is")
        return None
    if sum(t.numel() * t.element_size() for t in parts.values()) >= value.nbytes:
        notes.append(f"{key}: packing would not make it smaller; stored as it is")
        return None
    return parts, meta


def _output_path(path: str | os.PathLike[str]) -> Path:
    dst = Path(path)
    parent = dst.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a directory"
        raise ExportError(f"cannot write {dst}: directory {parent} {what}", usage=True)
    if dst.is_dir():
        raise ExportError(f"cannot write {dst}: it is a directory; give a file name", usage=True)
    return dst


def _plain_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(dict(kwargs), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"arch_kwargs {dict(kwargs)!r} cannot be recorded in the JSON header ({e}); use "
            "str, int, float, bool, None and lists/dicts of those"
        ) from e
    return json.loads(text)


def _check_arch(model: nn.Module, arch: str, kwargs: Mapping[str, Any]) -> None:
    """Fail before writing when ``arch`` would not rebuild ``model`` (keys and shapes)."""
    built = build_arch(arch, kwargs).state_dict()
    skip = tuple(f"{name}." for name, _ in sites(model))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    if set(own) != set(built) or any(own[k].shape != built[k].shape for k in own):
        odd = sorted(set(own) ^ set(built)) or [k for k in own if own[k].shape != built[k].shape]
        label = f"{arch}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        raise ExportError(
            f"arch {label} does not build this model ({len(odd)} key(s) differ, e.g. "
            f"{odd[0]}); pass the architecture and arch_kwargs it was created with",
            usage=True,
        )


def read_packed_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated JSON header of a packed file (no tensors are decoded)."""
    return _read(Path(path), tensors=False)[0]


def is_packed_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file written by :func:`export_packed` (any version)."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            size = int.from_bytes(head, "little")
            if size > 100_000_000:
                return False
            st = json.loads(f.read(size))
        return METADATA_KEY in (st.get("__metadata__") or {})
    except (OSError, ValueError, AttributeError):
        return False


def _read(path: Path, *, tensors: bool = True) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if not path.exists():
        raise ExportError(f"{path} does not exist; check the path", usage=True)
    if path.is_dir():
        raise ExportError(f"{path} is a directory, not a packed model file", usage=True)
    data = path.read_bytes()
    bad = f"{path} is not a packed model file"
    if data[:4] == b"PK\x03\x04":
        raise ExportError(f"{bad}: it is a PyTorch checkpoint; use uabnn_convert.io.load")
    if len(data) < 8:
        raise ExportError(f"{bad}: {len(data)} bytes is too short (truncated?)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ExportError(
            f"{path} is truncated or corrupted: its header claims {size} bytes, "
            f"the file has {len(data) - 8} after the length field"
        )
    try:
        st_header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"{bad} (no safetensors header: {e})") from e
    if not isinstance(st_header, dict):
        raise ExportError(f"{bad} (no safetensors header)")
    raw = (st_header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise ExportError(f"{bad}: a safetensors file without the {METADATA_KEY!r} header")
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise ExportError(f"{path} has a corrupted {METADATA_KEY!r} header: {e}") from e
    if not isinstance(header, dict):
        raise ExportError(f"{path} has a corrupted {METADATA_KEY!r} header: not an object")
    if header.get("format") != FORMAT:
        raise ExportError(f"{bad}: its header names format {header.get('format')!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(
            f"{path} is packed format version {version!r}; this uabnn_convert "
            f"({__version__}) reads version {FORMAT_VERSION} only: re-export it with the "
            "version that reads the source model, or upgrade uabnn_convert"
        )
    for key in ("arch", "arch_kwargs", "sites", "packed"):
        if key not in header:
            raise ExportError(f"{path} has a corrupted header: no {key!r}")
    ends = [
        int(v["data_offsets"][1])
        for k, v in st_header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if max(ends, default=0) != len(data) - 8 - size:
        raise ExportError(
            f"{path} is truncated or corrupted: the tensors need {max(ends, default=0)} bytes, "
            f"the file holds {len(data) - 8 - size}"
        )
    if not tensors:
        return header, {}
    from safetensors.torch import load

    try:
        stored = load(data)
    except Exception as e:
        raise ExportError(f"{path} is corrupted (safetensors: {e})") from e
    return header, stored


def _decode(path: Path, header: Mapping[str, Any], stored: Mapping[str, Tensor]) -> dict:
    """The state_dict a packed file holds: raw tensors as stored, packed ones decoded."""
    state = {name: t for name, t in stored.items() if _SEP not in name}
    parts: dict[str, dict[str, Tensor]] = {}
    for name, tensor in stored.items():
        if _SEP in name:
            key, _, part = name.rpartition(_SEP)
            parts.setdefault(key, {})[part] = tensor
    stray = sorted(set(parts) - set(header["packed"]))
    if stray:
        raise ExportError(f"{path} is corrupted: tensor(s) of {stray[0]!r} are not in its header")
    for key, entry in header["packed"].items():
        try:
            state[key] = decode_signbits(parts.get(key, {}), entry)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ExportError(f"{path} is corrupted: tensor {key!r} cannot be decoded ({e})") from e
    return state


def load_packed(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild the deployable eval model of a packed file; its outputs equal the frozen model's.

    The recorded architecture is built, patched at the recorded sites, frozen and folded as at
    export, and the decoded tensors loaded strictly. ``arch``/``arch_kwargs`` replace the
    recorded ones; ``trust_code`` allows calling a recorded ``package.module:factory``.
    """
    path = Path(path)
    header, stored = _read(path)
    state = _decode(path, header, stored)
    trusted = arch is not None or trust_code
    arch = arch if arch is not None else header["arch"]
    kwargs = dict(arch_kwargs) if arch_kwargs is not None else dict(header["arch_kwargs"])
    if arch is None:
        raise ExportError(
            f"{path} records no architecture; name it: load_packed(path, arch=NAME or "
            "'package.module:factory', arch_kwargs={...})",
            usage=True,
        )
    model = build_arch(arch, kwargs, trusted=trusted)
    site_names = list(header["sites"])
    try:
        patch(model, include=site_names)
    except ConversionError as e:
        raise ExportError(f"{path} does not fit {arch}: {e}") from e
    built = [name for name, _ in sites(model)]
    if set(built) != set(site_names):
        raise ExportError(f"{path} records other c-sign sites than {arch} has; check arch")
    deployed, derived = _deploy(model, copy_model=False)
    own = deployed.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or reshaped:
        k = (missing or unexpected or reshaped)[0]
        raise ExportError(
            f"{path} does not fit {arch}: {len(missing)} missing, {len(unexpected)} unexpected "
            f"and {len(reshaped)} reshaped tensor(s), e.g. {k}; check arch and arch_kwargs"
        )
    deployed.load_state_dict(state)
    for key in derived:
        owner, _, name = key.rpartition(".")
        module = deployed.get_submodule(owner)
        setattr(module, BINARY_MARK, (*getattr(module, BINARY_MARK, ()), name))
    return deployed.eval()


def packed_report(path: str | os.PathLike[str]) -> Report:
    """Per state_dict tensor of a packed file: encoding, shape, bytes as float and as stored."""
    path = Path(path)
    header, stored = _read(path)
    rows = []
    for name, tensor in stored.items():
        if _SEP in name:
            continue
        nbytes = tensor.numel() * tensor.element_size()
        rows.append(_row(name, "raw", tuple(tensor.shape), 0, nbytes, nbytes))
    for key, entry in header["packed"].items():
        numel = math.prod(entry["shape"])
        width = _DTYPES[entry["dtype"]].itemsize if entry["dtype"] in _DTYPES else 4
        nbytes = sum(
            t.numel() * t.element_size() for n, t in stored.items() if n.startswith(key + _SEP)
        )
        shape = tuple(entry["shape"])
        rows.append(_row(key, "signbits", shape, entry["exceptions"], numel * width, nbytes))
    total = {
        "tensor": f"{len(rows)} tensors",
        "elements": sum(r["elements"] for r in rows),
        "exceptions": sum(r["exceptions"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "stored_bytes": sum(r["stored_bytes"] for r in rows),
        "file_bytes": path.stat().st_size,
    }
    rows.sort(key=lambda r: _natural(r["tensor"]))
    columns = ["tensor", "encoding", "shape", "elements", "exceptions", "bytes", "stored_bytes"]
    arch = header["arch"] or "architecture not recorded"
    notes = [f"{path}: {FORMAT} v{header['format_version']}, {arch}", *header.get("notes", [])]
    return Report(f"packed tensors of {arch}", columns, rows, total, notes)


def _natural(key: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", key)]


def _row(
    key: str, encoding: str, shape: tuple, exceptions: int, nbytes: int, stored: int
) -> dict[str, Any]:
    return {
        "tensor": key,
        "encoding": encoding,
        "shape": shape,
        "elements": math.prod(shape),
        "exceptions": exceptions,
        "bytes": nbytes,
        "stored_bytes": stored,
    }


# ------------------------------------------------------------------------------------- ONNX


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: Sequence[int],
    *,
    opset: int | None = None,
    dynamo: bool | None = None,
) -> Path:
    """Export the deployable model (:func:`deploy` of a converted model, else ``model`` as it
    is) to ONNX for one input of shape ``(1, *input_size)``; check it with ``onnx.checker``.

    ``dynamo=None`` tries the ``torch.export``-based exporter (needs onnxscript) first and falls
    back to the TorchScript one; ``True``/``False`` uses only that one. Needs the ``export``
    extra (onnx, onnxscript), imported only here. The write is atomic.
    """
    onnx = _require("onnx")
    if dynamo:
        _require("onnxscript")
    if dynamo is None:
        exporters = [True, False] if importlib.util.find_spec("onnxscript") else [False]
    else:
        exporters = [dynamo]
    net = _unwrap(model)
    dst = _output_path(path)
    if any(True for _ in sites(net)):
        net = deploy(net)
    example = torch.randn(1, *input_size, dtype=_float_dtype(net))
    modes = {m: m.training for m in net.modules()}
    net.eval()
    errors = []
    try:
        with atomic_path(dst, suffix=".tmp.onnx") as tmp:
            for exporter in exporters:
                try:
                    _onnx_export(net, example, str(tmp), dynamo=exporter, opset=opset)
                    break
                except Exception as e:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    errors.append(f"dynamo={exporter}: {type(e).__name__}: {first}")
            else:
                raise ExportError(
                    f"ONNX export of {type(net).__name__} failed ({'; '.join(errors)})"
                )
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as e:
                raise ExportError(f"the exported ONNX model does not pass onnx.checker: {e}") from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    return dst


def _onnx_export(net: nn.Module, example: Tensor, path: str, *, dynamo: bool, opset: int | None):
    import warnings

    kwargs: dict[str, Any] = {
        "dynamo": dynamo,
        "input_names": ["input"],
        "output_names": ["output"],
    }
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        kwargs.update(external_data=False, optimize=True, verbose=False)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), path, **kwargs)


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs the {name!r} package (the 'export' extra): "
            "pip install 'uabnn_convert[export]'"
        ) from e


def _float_dtype(model: nn.Module) -> torch.dtype:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()
