"""The record this package writes around a state_dict, and how it is checked when read.

A record is a plain dict (it loads with ``torch.load(weights_only=True)``)::

    format: "uabnn-convert"     format_version: 2     package_version: "0.2.0"
    kind: "converted" | "frozen" | "checkpoint"
    arch: timm/zoo name or "package.module:factory" (builds the *unconverted* model) or None
    arch_kwargs: {...}          config: ConvertConfig.to_dict()
    sites: {qualified site name: its settings}
    example_inputs: [{shape, dtype}, …] or None  (what a run-time capture was learnt on)
    state_dict: {...}           training: {...}   (kind "checkpoint" only: the harness state)

A site that holds no state yet is saved without its window and held state (they hold nothing:
the file is about the size of the original checkpoint); loading treats it as fresh.

``converted`` is what ``uabnn-convert MODEL`` and :func:`uabnn_convert.save` write; ``frozen`` is
the deployable model (frozen and folded); ``checkpoint`` is a fine-tuning checkpoint, which
carries everything a converted file does, so every command that reads a converted file reads it.
Version 1 files (``settings`` instead of ``config``) are read too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..api import EXAMPLE_ATTR, model_name, sites
from ..config import ConvertConfig
from ..core.csign import DATA_BUFFERS
from ..errors import CheckpointError, ConversionError

FORMAT = "uabnn-convert"
FORMAT_VERSION = 2
KINDS = ("converted", "frozen", "checkpoint")
_SAFE_TYPES = (str, int, float, bool, type(None))


def plain_kwargs(arch_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``arch_kwargs`` if every value can be recorded (loads with ``weights_only=True``)."""
    out = {}
    for key, value in (arch_kwargs or {}).items():
        if not isinstance(key, str) or not _plain(value):
            raise ValueError(
                f"arch_kwargs[{key!r}]={value!r} cannot be recorded: use str, int, float, bool, "
                "None or lists/dicts of those, so that the file loads with weights_only=True"
            )
        out[key] = value
    return out


def _plain(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, _SAFE_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def site_settings(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The settings of every converted site of ``model``, by qualified name."""
    return {name: s.settings() for name, s in sites(model)}


def make_record(
    kind: str,
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    config: ConvertConfig,
    sites_: Mapping[str, Mapping[str, Any]],
    example_inputs: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A record of ``kind`` around ``state_dict``; ``extra`` adds kind-specific entries."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "package_version": __version__,
        "arch": arch,
        "arch_kwargs": plain_kwargs(arch_kwargs),
        "config": config.to_dict(),
        "sites": {k: dict(v) for k, v in sites_.items()},
        "example_inputs": example_inputs,
        "state_dict": _compact(state_dict, sites_),
        **extra,
    }


def _compact(
    state_dict: Mapping[str, torch.Tensor], sites_: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The state_dict without the per-element buffers of sites that hold nothing yet."""
    empty = {
        f"{name}.{buffer}"
        for name in sites_
        if f"{name}.num_updates" in state_dict and int(state_dict[f"{name}.num_updates"]) == 0
        for buffer in DATA_BUFFERS
    }
    return {k: v for k, v in state_dict.items() if k not in empty}


def converted_record(
    kind: str,
    model: nn.Module,
    *,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None = None,
    config: ConvertConfig | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The record of a converted model (kinds ``converted`` and ``checkpoint``).

    ``config`` is what the model was patched with; without it, the first site's settings.
    """
    recorded = site_settings(model)
    if not recorded:
        raise ConversionError(f"{model_name(model)} has no c-sign site; call patch() first")
    if config is None:
        config = ConvertConfig.from_dict(next(iter(recorded.values())))
    return make_record(
        kind,
        model.state_dict(),
        arch=arch,
        arch_kwargs=arch_kwargs,
        config=config,
        sites_=recorded,
        example_inputs=model.__dict__.get(EXAMPLE_ATTR),
        **extra,
    )


def is_record(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def check_record(path: Path, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The validated record (``config`` as a :class:`ConvertConfig`), or a one-line error."""
    version = obj.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} is a damaged {FORMAT} file (no format_version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer {FORMAT} (format {version}, package "
            f"{obj.get('package_version', '?')}); this is {__version__}, which reads format "
            f"{FORMAT_VERSION}: upgrade uabnn_convert"
        )
    config_key = "settings" if version == 1 else "config"
    expected = {
        "kind": str,
        "arch": (str, type(None)),
        "arch_kwargs": Mapping,
        config_key: Mapping,
        "sites": Mapping,
        "state_dict": Mapping,
    }
    for key, types in expected.items():
        if not isinstance(obj.get(key), types):
            raise CheckpointError(f"{path} is a damaged {FORMAT} file ('{key}' is missing or bad)")
    if obj["kind"] not in KINDS:
        raise CheckpointError(f"{path} is a {FORMAT} file of unknown kind {obj['kind']!r}")
    record = dict(obj)
    try:
        record["config"] = ConvertConfig.from_dict(record.pop(config_key))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is a damaged {FORMAT} file (its settings: {e})") from e
    record["arch_kwargs"] = dict(obj["arch_kwargs"])
    record["sites"] = {k: dict(v) for k, v in obj["sites"].items()}
    record.setdefault("example_inputs", None)
    return record
