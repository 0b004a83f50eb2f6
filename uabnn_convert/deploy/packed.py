"""The packed deployment file: a converted model's deployable form, binary weights at 1 bit.

What a deployed binary layer needs: :func:`deploy` freezes a converted model and folds each
binarizing module's weight-only computations into constants (:mod:`uabnn_convert.fx.fold`), so
what is left is exactly what the layer multiplies activations by, and latent weights nothing
reads are dropped. The deployed model's outputs equal ``uc.freeze(model)``'s bit for bit.

Packed file (:func:`export_packed`): a safetensors file (no pickle) whose metadata
``uabnn_packed`` is a JSON header: format and version, the architecture reference (timm/zoo name
or ``package.module:factory`` and its arguments), the sites (latent shape, family, the stored
tensors each became), the bit order, and per packed tensor what decoding needs. A tensor derived
from a site is stored as sign bits, a factor and exact exceptions (:mod:`.bits`); every other
tensor raw, under its state_dict key. Each encoding is decoded and compared bit for bit at
export; one that does not survive, or would not get smaller, is stored raw and the header's
``notes`` say so. In a Bi-Real layer trained for a few steps about 9 % of the weights are
exceptions (the straight-through rounding), so exactness then costs about a third more than the
bits. :func:`load_packed` builds the architecture, patches, freezes and folds it the same way and
loads the decoded tensors strictly. Writes are atomic.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..api import model_name, patch, sites
from ..core import CSignSite
from ..errors import ConversionError, ExportError
from ..files import atomic_write_bytes, build_arch, chosen_arch, unwrap
from ..fx import freeze_and_fold
from ..report import Report
from .bits import (
    _DTYPES,
    _INT_VIEW,
    BINARY_MARK,
    BIT_ORDER,
    PACKING,
    decode_signbits,
    encode_signbits,
)

FORMAT = "uabnn-packed"
FORMAT_VERSION = 1
METADATA_KEY = "uabnn_packed"
_SEP = "::"


def deploy(model: nn.Module) -> nn.Module:
    """A deployable copy of a converted model: frozen, with weight-only computations folded.

    Its eval outputs equal ``uc.freeze(model)``'s bit for bit, and each binarizing module keeps
    only the tensors its forward multiplies activations by. The copy is in eval mode.
    """
    net = unwrap(model)
    _check_converted(net)
    return freeze_and_fold(copy.deepcopy(net))[0]


def _check_converted(model: Any) -> list[tuple[str, CSignSite]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    found = list(sites(model))
    if not found:
        raise ConversionError(
            f"{model_name(model)} has no c-sign site: export takes a converted model "
            "(uc.patch, then fine-tune); a frozen model cannot be packed, pass the converted one"
        )
    return found


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
    them, ``load_packed`` needs ``arch=``. A site that holds no state yet (no training update)
    is exported with the sign of its latent, as ``freeze`` does. The write is atomic: on any
    error no file (and no partial file) is left at ``path``.
    """
    net = unwrap(model)
    found = _check_converted(net)
    dst = writable_output(path)
    kwargs = _plain_kwargs(arch_kwargs or {})
    if arch is not None:
        _check_arch(net, arch, kwargs)
    deployed, derived = freeze_and_fold(copy.deepcopy(net))
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


def writable_output(path: str | os.PathLike[str]) -> Path:
    """``path`` if its directory exists and it is not a directory itself."""
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
        raise ExportError(f"{bad}: it is a PyTorch checkpoint; use uabnn_convert.load")
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
    arch, kwargs, trusted = chosen_arch(
        header["arch"], header["arch_kwargs"], arch, arch_kwargs, trust_code
    )
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
    deployed, derived = freeze_and_fold(model)
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
    rows.sort(key=lambda r: _natural(r["tensor"]))
    columns = ["tensor", "encoding", "shape", "elements", "exceptions", "bytes", "stored_bytes"]
    arch = header["arch"] or "architecture not recorded"
    notes = [f"{path}: {FORMAT} v{header['format_version']}, {arch}", *header.get("notes", [])]
    return Report.totalled(
        f"packed tensors of {arch}",
        columns,
        rows,
        label=("tensor", f"{len(rows)} tensors"),
        sums=["elements", "exceptions", "bytes", "stored_bytes"],
        extra={"file_bytes": path.stat().st_size},
        notes=notes,
    )


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


def binary_constants(model: nn.Module, keys: list[str]) -> Report:
    """The tensors of a deployable model that hold binary weights (``keys``, e.g. a frozen
    file's ``derived``): shape, dtype, bytes as stored and at one bit per element."""
    sd = model.state_dict()
    rows = [
        {
            "constant": key,
            "shape": tuple(sd[key].shape),
            "elements": sd[key].numel(),
            "dtype": str(sd[key].dtype).replace("torch.", ""),
            "bytes": sd[key].numel() * sd[key].element_size(),
            "packed_bytes": math.ceil(sd[key].numel() / 8),
        }
        for key in keys
        if key in sd
    ]
    return Report.totalled(
        f"binary constants of {model_name(model)}",
        ["constant", "shape", "elements", "dtype", "bytes", "packed_bytes"],
        rows,
        label=("constant", f"{len(rows)} constants"),
        sums=["elements", "bytes", "packed_bytes"],
    )
