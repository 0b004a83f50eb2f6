"""Model files: rebuild the model a file holds, and write converted and frozen models.

:func:`load` (``uc.load``) rebuilds a converted file, a frozen file or a fine-tuning checkpoint
alone: the recorded architecture is built (:mod:`.arch`, with its trust rule), patched with the
recorded config and per-site settings, frozen and folded for a frozen file, and the state_dict
(weights and c-sign state) loaded strictly. :func:`save` (``uc.save``) writes the record a
converted model needs for that; every write is atomic (:mod:`.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import example_from_specs, freeze, patch, sites
from ..config import ConvertConfig
from ..errors import CheckpointError, ConversionError
from .arch import arch_label, build_arch, chosen_arch
from .atomic import atomic_save
from .reader import ModelFile, first_line, read, unwrap
from .record import FORMAT, converted_record, make_record


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, target: str
) -> None:
    """``model.load_state_dict(state_dict)`` (strict), with a one-line error naming a few keys.

    c-sign keys of converted sites may be missing (a fresh state), as ``load_state_dict`` allows.
    """
    own = model.state_dict()
    optional = tuple(f"{name}." for name, _ in sites(model))
    missing = [k for k in own if k not in state_dict and not k.startswith(optional)]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [
        k
        for k, v in own.items()
        if k in state_dict
        and isinstance(state_dict[k], torch.Tensor)
        and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_few(unexpected)})")
        if reshaped:
            k = reshaped[0]
            parts.append(
                f"{len(reshaped)} key(s) with another shape ({k}: {_shape(state_dict[k])} in the "
                f"file, {_shape(own[k])} in the model)"
            )
        hint = "check --arch and --arch-kwarg"
        if any("_csign." in k for k in unexpected):
            hint = (
                "the file looks like a converted model's state_dict; write converted models "
                "with uabnn_convert.save"
            )
        raise CheckpointError(f"{source} does not fit {target}: {'; '.join(parts)}; {hint}")
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source} does not load into {target}: {first_line(e)}") from e


def _few(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", …" if len(keys) > n else "")


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(d) for d in t.shape) or "scalar"


def _few(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", …" if len(keys) > n else "")


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(d) for d in t.shape) or "scalar"


def model_from(
    file: ModelFile, arch: str | None = None, arch_kwargs: Mapping[str, Any] | None = None
) -> tuple[nn.Module, str | None]:
    """The unconverted model a ``state_dict``/``module`` file describes, and its arch reference.

    A state_dict needs ``arch``. A pickled module is used as it is unless ``arch`` is given, in
    which case the architecture is built and the module's weights loaded into it, so that the
    converted file can record how to rebuild it.
    """
    if file.kind not in ("state_dict", "module"):
        raise ValueError(f"model_from expects a state_dict or module file, got {file.kind}")
    if file.kind == "module" and arch is None:
        return file.module, None
    if arch is None:
        raise CheckpointError(
            f"{file.path} is a state_dict: name its architecture with --arch NAME (a timm or "
            "zoo model) or --arch package.module:factory",
            usage=True,
        )
    model = build_arch(arch, arch_kwargs)
    sd = file.state_dict if file.state_dict is not None else file.module.state_dict()
    load_weights(model, sd, source=str(file.path), target=arch_label(arch, arch_kwargs))
    return model, arch


def rebuild(
    file: ModelFile,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """The model a record holds: build, patch as recorded, (freeze and fold,) load."""
    if not file.is_record:
        raise CheckpointError(
            f"{file.path} is a plain {file.kind.replace('_', ' ')}, not a file written by "
            f"{FORMAT}; convert it first: uabnn-convert {file.path} --arch NAME",
            usage=True,
        )
    record = file.record
    arch, kwargs, trusted = chosen_arch(
        record["arch"], record["arch_kwargs"], arch, arch_kwargs, trust_code
    )
    if arch is None:
        raise CheckpointError(
            f"{file.path} records no architecture (it was converted from a pickled module): "
            "name it with --arch (Python: load(path, arch=...))",
            usage=True,
        )
    label = arch_label(arch, kwargs)
    model = build_arch(arch, kwargs, trusted=trusted)
    patch_recorded(model, record, source=str(file.path), target=label)
    if file.kind == "frozen":
        model = freeze(model, inplace=True, fold=record["format_version"] >= 2)
    load_weights(model, file.state_dict or {}, source=str(file.path), target=label)
    return model


def patch_recorded(
    model: nn.Module,
    record: Mapping[str, Any],
    *,
    source: str,
    target: str,
    changes: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Patch ``model`` exactly as a record says: its config, at its sites, with their settings
    (``changes``, e.g. ``{"delta": 1.0}``, replace a setting at every site), on example inputs
    of the recorded shapes when the record says a run-time capture needed them."""
    config: ConvertConfig = record["config"]
    recorded_sites = record["sites"]
    base = config.defaults()
    overrides = {
        name: {k: v for k, v in {**s, **(changes or {})}.items() if v != base.get(k)}
        for name, s in recorded_sites.items()
    }
    specs = record.get("example_inputs")
    try:
        patch(
            model,
            config.replace(
                include=list(recorded_sites),
                exclude=None,
                overrides={k: v for k, v in overrides.items() if v},
            ),
            example_inputs=example_from_specs(specs) if specs else None,
        )
    except (ConversionError, ValueError) as e:
        raise CheckpointError(f"{source} does not match {target}: {first_line(e, 300)}") from e
    built = {name for name, _ in sites(model)}
    if built != set(recorded_sites):
        extra = sorted(built - set(recorded_sites)) or sorted(set(recorded_sites) - built)
        raise CheckpointError(
            f"{source} records other c-sign sites than {target} has ({_few(extra)}); check --arch"
        )
    return model


def load(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild the model of a file written by ``uabnn-convert``, :func:`save` or the harness.

    The file is read with ``weights_only=True``; the recorded architecture is built, patched
    with the recorded settings and its state_dict (weights and c-sign state) loaded, so a
    script needs neither the command line nor the original code that made the file.
    A frozen file gives the deployable (eval-mode) model. ``arch``/``arch_kwargs`` replace the
    recorded ones (e.g. a factory that moved); ``trust_code`` allows a recorded
    ``package.module:factory`` to be called.
    """
    return rebuild(read(path), arch=arch, arch_kwargs=arch_kwargs, trust_code=trust_code)


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None = None,
    config: ConvertConfig | Mapping[str, Any] | None = None,
) -> Path:
    """Write a converted model so that :func:`load` (and ``uabnn-convert inspect``) rebuild it.

    ``arch`` is a timm/zoo name or ``package.module:factory`` that builds the *unconverted*
    model from ``arch_kwargs``; ``config`` is what the model was patched with (recorded as
    the file's settings; without it, the first site's). The per-site settings are recorded
    too, so a model patched with overrides rebuilds exactly. The write is atomic.
    """
    cfg = ConvertConfig.coerce(config) if config is not None else None
    record = converted_record(
        "converted", unwrap(model), arch=arch, arch_kwargs=arch_kwargs, config=cfg
    )
    return atomic_save(record, path)


def save_frozen(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    source: ModelFile,
    derived: Mapping[str, Sequence[str]],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a deployable model (``freeze(..., fold=True)`` of ``source``'s model).

    The record is ``source``'s (architecture, config, sites) around the deployable state_dict;
    ``derived`` (which tensors each site's binary value flows into) is kept for reports.
    """
    rec = source.record
    record = make_record(
        "frozen",
        unwrap(model).state_dict(),
        arch=arch if arch is not None else rec["arch"],
        arch_kwargs=arch_kwargs if arch_kwargs is not None else rec["arch_kwargs"],
        config=rec["config"],
        sites_=rec["sites"],
        derived={k: list(v) for k, v in derived.items()},
    )
    return atomic_save(record, path)
