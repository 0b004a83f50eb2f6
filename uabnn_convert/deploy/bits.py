"""Sign-bit packing: a float tensor of ±F values (and a few exceptions) at one bit per element.

Element ``i`` of the C-order flattened tensor is bit ``i % 8`` of byte ``i // 8`` (least
significant first, ``bit_order="little"``); 1 means ``+F`` and 0 means ``-F``. ``F`` (the
factor) is one value or one value per slice along the first or last dim. Elements whose bit
pattern differs from that reconstruction (the straight-through rounding of Bi-Real-style layers,
a ``sign(0)`` zero) are exceptions, stored exactly: a packed mask and the integer differences
of their float bit patterns, both zlib-compressed. Decoding gives the tensor back bit for bit.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

BIT_ORDER = "little"
BINARY_MARK = "_uabnn_packed_binary"
"""Attribute that ``load_packed`` sets on a module: names of its buffers stored as bits."""
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
