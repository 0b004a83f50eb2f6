"""Architectures: build the unconverted model a file or a command names, under the trust rule.

An architecture is a timm name (the reference zoo registers its models with timm on import) or
a ``package.module:factory`` reference. Calling a factory runs code: one named by the user (on
the command line, ``arch=`` in Python) is trusted; one named by a *file* (a converted file, a
checkpoint, a recipe) is called only with ``trust_code`` — as dangerous as unpickling, and
refused in one line otherwise. timm names are looked up in timm's registry and always allowed.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import CheckpointError
from .reader import first_line

# timm arguments that fetch or read weights from elsewhere: the weights come from the checkpoint.
_TIMM_WEIGHT_ARGS = ("pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay")


def arch_label(arch: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """``name(key=value, …)`` for messages."""
    args = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())
    return f"{arch}({args})" if args else arch


def chosen_arch(
    recorded: str | None,
    recorded_kwargs: Mapping[str, Any] | None,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    trust_code: bool,
) -> tuple[str | None, dict[str, Any], bool]:
    """``(arch, kwargs, trusted)`` to build a file's model with: the caller's architecture
    (trusted) if given, else the one the file records (trusted only with ``trust_code``)."""
    kwargs = dict(arch_kwargs if arch_kwargs is not None else recorded_kwargs or {})
    if arch is not None:
        return arch, kwargs, True
    return recorded, kwargs, trust_code


def build_arch(
    arch: str, kwargs: Mapping[str, Any] | None = None, *, trusted: bool = True
) -> nn.Module:
    """Build a model from a timm / zoo name or a ``package.module:factory`` reference.

    ``trusted=False`` (an architecture named by a file rather than by the caller) refuses
    factories: calling them runs whatever code the file names.
    """
    kwargs = dict(kwargs or {})
    label = arch_label(arch, kwargs)
    if ":" in arch:
        factory = _resolve_factory(arch, trusted)
        try:
            model = factory(**kwargs)
        except Exception as e:
            raise CheckpointError(
                f"the factory {label} raised {type(e).__name__}: {first_line(e)}; "
                "fix the factory or its arguments (--arch-kwarg)"
            ) from e
    else:
        model = _create_timm(arch, kwargs, label)
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"{label} returned a {type(model).__name__}, not a torch.nn.Module; "
            "--arch must name something that builds the model"
        )
    return model


def _resolve_factory(arch: str, trusted: bool) -> Any:
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise CheckpointError(
            f"--arch {arch!r} is not a valid reference: use package.module:factory", usage=True
        )
    if not trusted:
        raise CheckpointError(
            f"the file names the factory {arch} to rebuild its model; calling a factory named by "
            "a file runs code chosen by whoever wrote it: pass --trust-code (Python: "
            f"trust_code=True) if you trust the file, or name it yourself with --arch {arch}",
            usage=True,
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise CheckpointError(
                f"cannot import {module_name!r} for --arch {arch}: no such module; "
                "install it or add its directory to PYTHONPATH",
                usage=True,
            ) from e
        raise CheckpointError(f"importing {module_name} failed: {first_line(e)}") from e
    except Exception as e:
        raise CheckpointError(
            f"importing {module_name} raised {type(e).__name__}: {first_line(e)}"
        ) from e
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CheckpointError(
                f"{module_name} has no attribute {attr!r} (--arch {arch}); check the name",
                usage=True,
            )
        target = getattr(target, part)
    if not callable(target):
        raise CheckpointError(f"--arch {arch} is not callable", usage=True)
    return target


def check_arch(arch: str, *, trusted: bool = True) -> None:
    """Fail now, in one line, if ``arch`` names no model (nothing is built or called)."""
    if ":" in arch:
        _resolve_factory(arch, trusted)
    else:
        _timm_module(arch)


def _timm_module(name: str) -> Any:
    """timm, with the zoo registered, after checking that ``name`` is one of its models."""
    import timm

    from .. import zoo  # noqa: F401  (registers the reference models with timm)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CheckpointError(
            f"unknown architecture {name!r}{hint}: --arch takes a timm or uabnn_convert.zoo "
            "model name, or package.module:factory",
            usage=True,
        )
    return timm


def _create_timm(name: str, kwargs: dict[str, Any], label: str) -> nn.Module:
    timm = _timm_module(name)
    fetching = [k for k in _TIMM_WEIGHT_ARGS if k in kwargs]
    if fetching:
        raise CheckpointError(
            f"arch argument {fetching[0]!r} is not allowed: the weights come from the "
            "checkpoint, never from timm",
            usage=True,
        )
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:
        raise CheckpointError(
            f"building {label} raised {type(e).__name__}: {first_line(e)}; "
            "check the architecture arguments (--arch-kwarg)"
        ) from e
