"""Model files: read checkpoints safely, rebuild architectures, write converted models atomically.

What is read, and how:

* a ``state_dict`` or a training checkpoint dict holding one under ``state_dict``, ``model``,
  ``model_state_dict`` or ``net`` — always with ``torch.load(weights_only=True)``. The
  architecture is built from a timm / :mod:`uabnn_convert.zoo` name or a
  ``package.module:factory`` callable. ``module.`` (DataParallel/DDP) and ``_orig_mod.``
  (``torch.compile``) key prefixes are stripped;
* a whole pickled ``nn.Module`` only with ``trust_pickle=True``: unpickling runs code chosen by
  whoever wrote the file, so ``weights_only=True`` is tried first and the caller must opt in;
* a file written here (:func:`save_converted`, :func:`save_frozen`): a plain dict that loads with
  ``weights_only=True`` and records the format, the package version, the architecture and its
  arguments, the c-sign settings and the state_dict, so :func:`load` rebuilds the model alone.

A file can also *name code*: the ``package.module:factory`` it was built with. Calling a factory
named by a file is as dangerous as unpickling it, so :func:`load` refuses that without
``trust_code=True`` (timm/zoo names are looked up in timm's registry and are always allowed).

Every problem raises :class:`CheckpointError` with a one-line message that says what is wrong and
what to do; nothing is written unless the whole write succeeds (:func:`atomic_save`).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import math
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .api import ConversionError, freeze, patch, sites
from .atomic import atomic_save
from .rewrite import frozen_name

FORMAT = "uabnn-convert"
FORMAT_VERSION = 1
KINDS = ("converted", "frozen")
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SETTING_DEFAULTS: dict[str, Any] = {
    "m": 2,
    "delta": 0.1,
    "sigma": "std",
    "uncertainty": "gaussian",
    "include": None,
    "exclude": None,
}
# timm arguments that fetch or read weights from elsewhere: the weights come from the checkpoint.
_TIMM_WEIGHT_ARGS = ("pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_SAFE_KWARG_TYPES = (str, int, float, bool, type(None))


class CheckpointError(Exception):
    """A model file cannot be read, rebuilt or written as asked.

    ``str(error)`` is one line: what is wrong and what to do. ``usage`` is true when the request
    (a path, an architecture, a missing opt-in) must change rather than the file; the command
    line exits with 2 for those and 1 for the rest.
    """

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(" ".join(message.split()))
        self.usage = usage

    @property
    def exit_code(self) -> int:
        return 2 if self.usage else 1


@dataclass
class ModelFile:
    """What a file holds, classified; ``record`` is set for files written by this package."""

    path: Path
    kind: str  # "state_dict", "module", "converted" or "frozen"
    state_dict: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    record: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ reading


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


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 32 or c in (9, 10, 13) for c in head)


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = _unsafe_globals(path, e)
        if not needs:
            raise CheckpointError(
                f"{path} is corrupted or not a checkpoint (torch.load: {_first_line(e)})"
            ) from e
        if not trust_pickle:
            shown = ", ".join(needs[:2]) + (", …" if len(needs) > 2 else "")
            raise CheckpointError(
                f"{path} holds pickled Python objects ({shown}), and unpickling runs code chosen "
                "by whoever wrote the file: pass --trust-pickle (Python: trust_pickle=True) if "
                "you trust its source (off by default, as a malicious file can run anything), or "
                "save model.state_dict() instead and name the architecture with --arch",
                usage=True,
            ) from e
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{path} is truncated or corrupted (torch.load: {_first_line(e)}); "
            "copy or save it again"
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            f"{path} needs code that cannot be imported here ({_first_line(e)}); "
            "install the package that defines the model or put it on PYTHONPATH"
        ) from e
    except Exception as e:
        raise CheckpointError(f"unpickling {path} failed: {_first_line(e)}") from e


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


def _unwrap(module: nn.Module) -> nn.Module:
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(module, wrappers):
        module = module.module
    return module


def _classify(path: Path, obj: Any) -> ModelFile:
    notes: list[str] = []
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        record = _check_record(path, obj)
        sd = record.pop("state_dict")
        return ModelFile(path, record["kind"], state_dict=sd, record=record)
    if isinstance(obj, nn.Module):
        return ModelFile(path, "module", module=_unwrap(obj))
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
                return ModelFile(path, "module", module=_unwrap(value), notes=notes)
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


def _check_record(path: Path, obj: Mapping[str, Any]) -> dict[str, Any]:
    version = obj.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} is a damaged {FORMAT} file (no format_version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer {FORMAT} (format {version}, package "
            f"{obj.get('package_version', '?')}); this is {__version__}, which reads format "
            f"{FORMAT_VERSION}: upgrade uabnn_convert"
        )
    expected = {
        "kind": str,
        "arch": (str, type(None)),
        "arch_kwargs": Mapping,
        "settings": Mapping,
        "sites": Mapping,
        "state_dict": Mapping,
    }
    for key, types in expected.items():
        if not isinstance(obj.get(key), types):
            raise CheckpointError(f"{path} is a damaged {FORMAT} file ('{key}' is missing or bad)")
    if obj["kind"] not in KINDS:
        raise CheckpointError(f"{path} is a {FORMAT} file of unknown kind {obj['kind']!r}")
    record = dict(obj)
    record["arch_kwargs"] = dict(obj["arch_kwargs"])
    record["settings"] = {**SETTING_DEFAULTS, **obj["settings"]}
    record["sites"] = {k: dict(v) for k, v in obj["sites"].items()}
    return record


# ------------------------------------------------------------------------------- architectures


def arch_label(arch: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """``name(key=value, …)`` for messages."""
    args = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())
    return f"{arch}({args})" if args else arch


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
                f"the factory {label} raised {type(e).__name__}: {_first_line(e)}; "
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
        raise CheckpointError(f"importing {module_name} failed: {_first_line(e)}") from e
    except Exception as e:
        raise CheckpointError(
            f"importing {module_name} raised {type(e).__name__}: {_first_line(e)}"
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


def _create_timm(name: str, kwargs: dict[str, Any], label: str) -> nn.Module:
    import timm

    import uabnn_convert.zoo  # noqa: F401  (registers the reference models with timm)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CheckpointError(
            f"unknown architecture {name!r}{hint}: --arch takes a timm or uabnn_convert.zoo "
            "model name, or package.module:factory",
            usage=True,
        )
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
            f"building {label} raised {type(e).__name__}: {_first_line(e)}; "
            "check the architecture arguments (--arch-kwarg)"
        ) from e


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
                "with uabnn_convert.io.save_converted"
            )
        raise CheckpointError(f"{source} does not fit {target}: {'; '.join(parts)}; {hint}")
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source} does not load into {target}: {_first_line(e)}") from e


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
    """The model a converted or frozen file holds: build, patch as recorded, load, (freeze)."""
    if file.kind not in KINDS:
        raise CheckpointError(
            f"{file.path} is a plain {file.kind.replace('_', ' ')}, not a file written by "
            f"{FORMAT}; convert it first: uabnn-convert {file.path} --arch NAME",
            usage=True,
        )
    record = file.record
    trusted = arch is not None or trust_code
    arch = arch if arch is not None else record["arch"]
    kwargs = dict(arch_kwargs) if arch_kwargs is not None else record["arch_kwargs"]
    if arch is None:
        raise CheckpointError(
            f"{file.path} records no architecture (it was converted from a pickled module): "
            "name it with --arch (Python: load(path, arch=...))",
            usage=True,
        )
    model = build_arch(arch, kwargs, trusted=trusted)
    settings = record["settings"]
    recorded_sites = record["sites"]
    overrides = {
        name: {k: v for k, v in s.items() if v != settings.get(k)}
        for name, s in recorded_sites.items()
    }
    try:
        patch(
            model,
            m=settings["m"],
            delta=settings["delta"],
            sigma=settings["sigma"],
            include=list(recorded_sites),
            overrides={k: v for k, v in overrides.items() if v},
            uncertainty=settings["uncertainty"],
        )
    except (ConversionError, ValueError) as e:
        raise CheckpointError(
            f"{file.path} does not match {arch_label(arch, kwargs)}: {_first_line(e, 300)}"
        ) from e
    built = {name for name, _ in sites(model)}
    if built != set(recorded_sites):
        extra = sorted(built - set(recorded_sites)) or sorted(set(recorded_sites) - built)
        raise CheckpointError(
            f"{file.path} records other c-sign sites than {arch_label(arch, kwargs)} has "
            f"({_few(extra)}); check --arch"
        )
    if file.kind == "frozen":
        model = freeze(model)
    load_weights(model, file.state_dict, source=str(file.path), target=arch_label(arch, kwargs))
    return model


def load(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild the model of a file written by ``uabnn-convert`` (or :func:`save_converted`).

    The file is read with ``weights_only=True``; the recorded architecture is built, patched
    with the recorded settings and its state_dict (weights and c-sign state) loaded, so a
    script needs neither the command line nor the original code that made the file.
    A frozen file gives the frozen (eval-mode) model. ``arch``/``arch_kwargs`` replace the
    recorded ones (e.g. a factory that moved); ``trust_code`` allows a recorded
    ``package.module:factory`` to be called.
    """
    return rebuild(read(path), arch=arch, arch_kwargs=arch_kwargs, trust_code=trust_code)


# ------------------------------------------------------------------------------------ writing


def _check_kwargs(arch_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in arch_kwargs.items():
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
    if isinstance(value, _SAFE_KWARG_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _site_records(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {name: s.settings() for name, s in sites(model)}


def _record(
    kind: str,
    model: nn.Module,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    site_records: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "package_version": __version__,
        "arch": arch,
        "arch_kwargs": _check_kwargs(arch_kwargs or {}),
        "settings": dict(settings),
        "sites": {k: dict(v) for k, v in site_records.items()},
        "state_dict": model.state_dict(),
    }


def save_converted(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write a converted model so that :func:`load` (and ``uabnn-convert inspect``) rebuild it.

    ``arch`` is a timm/zoo name or ``package.module:factory`` that builds the *unconverted*
    model from ``arch_kwargs``; ``settings`` are the ``patch`` arguments (m, delta, sigma,
    include, exclude, uncertainty) to record, taken from the sites when not given. The
    per-site settings are recorded too, so a model patched with overrides rebuilds exactly.
    The write is atomic.
    """
    model = _unwrap(model)
    site_records = _site_records(model)
    if not site_records:
        raise ConversionError(f"{type(model).__name__} has no c-sign site; call patch() first")
    first = next(iter(site_records.values()))
    given = dict(settings or {})
    unknown = set(given) - set(SETTING_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; allowed: {list(SETTING_DEFAULTS)}")
    merged = {**SETTING_DEFAULTS, **first, **given}
    for key in ("include", "exclude"):
        if isinstance(merged[key], str):
            merged[key] = [merged[key]]
        elif merged[key] is not None:
            merged[key] = list(merged[key])
    record = _record("converted", model, arch, arch_kwargs, merged, site_records)
    return atomic_save(record, path)


def save_frozen(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    source: ModelFile,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a frozen model (``uc.freeze`` of ``source``'s model) with ``source``'s record.

    :func:`load` rebuilds it by building, patching and freezing the architecture, then loading
    the frozen state_dict (the binary weights are constant buffers in it).
    """
    rec = source.record
    return atomic_save(
        _record(
            "frozen",
            _unwrap(model),
            arch if arch is not None else rec["arch"],
            arch_kwargs if arch_kwargs is not None else rec["arch_kwargs"],
            rec["settings"],
            rec["sites"],
        ),
        path,
    )


def frozen_constants(file: ModelFile) -> list[str]:
    """State_dict keys of the binary constants of a frozen file (one per recorded site)."""
    keys = []
    for name in file.record.get("sites", {}):
        owner, _, attr = name.rpartition(".")
        keys.append(f"{owner}.{frozen_name(attr)}" if owner else frozen_name(attr))
    return keys
