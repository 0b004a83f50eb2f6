"""The one safe reader: every model file the package takes, loaded without running its code.

What is read, and how:

* a ``state_dict`` or a training checkpoint dict holding one under ``state_dict``, ``model``,
  ``model_state_dict`` or ``net`` — always with ``torch.load(weights_only=True)``. The wrapper
  prefixes ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``) are stripped;
* a whole pickled ``nn.Module`` only with ``trust_pickle=True``: unpickling runs code chosen by
  whoever wrote the file, so ``weights_only=True`` is tried first and the caller must opt in;
* a record this package wrote (:mod:`.record`: a converted file, a frozen file, a fine-tuning
  checkpoint), which loads with ``weights_only=True`` too.

Every problem is a :class:`~uabnn_convert.errors.CheckpointError` with a one-line message that
says what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import WRAPPER_PREFIXES
from ..errors import CheckpointError
from .record import check_record, is_record

CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


class PickleRefused(CheckpointError):
    """The file holds pickled objects and ``trust_pickle`` was not given."""


@dataclass
class ModelFile:
    """What a file holds, classified; ``record`` is set for files written by this package."""

    path: Path
    kind: str  # "state_dict", "module", or a record kind: "converted", "frozen", "checkpoint"
    state_dict: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    record: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def is_record(self) -> bool:
        return bool(self.record)


def read(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> ModelFile:
    """Load and classify a model file without running code from it (unless ``trust_pickle``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; check the path", usage=True)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory; give the checkpoint file inside it", usage=True
        )
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from e
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes); it is not a checkpoint")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        what = "a text file" if _looks_like_text(head) else "not a PyTorch checkpoint"
        raise CheckpointError(
            f"{path} is {what}: expected a file written by torch.save "
            "(a state_dict, a training checkpoint or a model)"
        )
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is truncated or corrupted (an incomplete torch.save archive); "
            "copy or save it again"
        )
    obj = _torch_load(path, trust_pickle)
    return _classify(path, obj)


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an error's message, without terminal colours, at most ``limit``."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 32 or c in (9, 10, 13) for c in head)


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = _unsafe_globals(path, e)
        if not needs:
            raise CheckpointError(
                f"{path} is corrupted or not a checkpoint (torch.load: {first_line(e)})"
            ) from e
        if not trust_pickle:
            shown = ", ".join(needs[:2]) + (", …" if len(needs) > 2 else "")
            raise PickleRefused(
                f"{path} holds pickled Python objects ({shown}), and unpickling runs code chosen "
                "by whoever wrote the file: pass --trust-pickle (Python: trust_pickle=True) if "
                "you trust its source (off by default, as a malicious file can run anything), or "
                "save model.state_dict() instead and name the architecture with --arch",
                usage=True,
            ) from e
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{path} is truncated or corrupted (torch.load: {first_line(e)}); copy or save it again"
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            f"{path} needs code that cannot be imported here ({first_line(e)}); "
            "install the package that defines the model or put it on PYTHONPATH"
        ) from e
    except Exception as e:
        raise CheckpointError(f"unpickling {path} failed: {first_line(e)}") from e


def _unsafe_globals(path: Path, error: BaseException) -> list[str]:
    """The classes/functions a weights_only load refused, without importing any of them.

    Ordered as they first appear in the pickle, so the top-level object (the model's own
    class) comes first in the message.
    """
    if zipfile.is_zipfile(path):
        with contextlib.suppress(Exception):
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            with zipfile.ZipFile(path) as archive:
                pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
                data = archive.read(pkl)

            def first_use(name: str) -> int:
                module, _, attr = name.rpartition(".")
                at = data.find(f"{module}\n{attr}\n".encode())
                return at if at >= 0 else len(data)

            return sorted(names, key=first_use)
    return re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(error))


def _is_state_dict(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    return all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
        for k, v in obj.items()
    )


def _strip_prefixes(sd: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes from every key, and from the per-module ``_metadata`` versions
    that ``load_state_dict`` passes to each module's loader."""
    meta = getattr(sd, "_metadata", None)
    out = OrderedDict(sd)
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = OrderedDict((k[len(prefix) :], v) for k, v in out.items())
                if meta is not None:
                    meta = _strip_meta(meta, prefix)
                notes.append(f"stripped the '{prefix}' prefix from every key")
                stripped = True
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def _strip_meta(meta: Mapping[str, Any], prefix: str) -> OrderedDict[str, Any]:
    stripped = OrderedDict()
    for key, value in meta.items():
        if key == prefix[:-1]:
            stripped[""] = value
        elif key.startswith(prefix):
            stripped[key[len(prefix) :]] = value
    return stripped


def _classify(path: Path, obj: Any) -> ModelFile:
    notes: list[str] = []
    if is_record(obj):
        record = check_record(path, obj)
        sd = record.pop("state_dict")
        return ModelFile(path, record["kind"], state_dict=dict(sd), record=record)
    if isinstance(obj, nn.Module):
        return ModelFile(path, "module", module=unwrap(obj))
    if _is_state_dict(obj):
        return ModelFile(path, "state_dict", state_dict=_strip_prefixes(obj, notes), notes=notes)
    if isinstance(obj, Mapping):
        keys = [str(k) for k in obj]
        for key in CHECKPOINT_KEYS:
            value = obj.get(key)
            if not (isinstance(value, nn.Module) or _is_state_dict(value)):
                continue
            others = [k for k in keys if k != key]
            if others:
                shown = ", ".join(others[:6]) + (", …" if len(others) > 6 else "")
                notes.append(f"ignored checkpoint entries {shown} (the weights are under '{key}')")
            if isinstance(value, nn.Module):
                return ModelFile(path, "module", module=unwrap(value), notes=notes)
            sd = _strip_prefixes(value, notes)
            return ModelFile(path, "state_dict", state_dict=sd, notes=notes)
        shown = ", ".join(keys[:6]) + (", …" if len(keys) > 6 else "")
        raise CheckpointError(
            f"{path} holds a dict without model weights (keys: {shown or 'none'}); expected a "
            f"state_dict or a checkpoint with the weights under one of {', '.join(CHECKPOINT_KEYS)}"
        )
    raise CheckpointError(
        f"{path} holds a {type(obj).__name__}, not a state_dict, a checkpoint dict or a model"
    )
