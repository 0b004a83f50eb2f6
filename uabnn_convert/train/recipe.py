"""Recipes: one YAML file per training setup, validated into dataclasses.

A recipe is strict on purpose: an unknown key (a typo like ``optim.lrr``) is an error that names
the key, because a silently ignored setting makes a run differ from what its file says. A recipe
may start from another with ``base: other.yaml`` (a path relative to the file); its own keys
then override the base's, section by section. ``csign: false`` is short for
``csign: {enabled: false}``, the sign baseline.

Keys (defaults in brackets)::

    name, description [""], seed [0]
    model:    arch (a timm / zoo name, or package.module:factory: needs --trust-code, as for
              ``convert``), kwargs [{}], init [null: a file to start from, anything --init takes]
    csign:    enabled [true], m [2], delta [0.1], sigma ["std"], uncertainty ["gaussian"],
              threshold ["certain" | "uncertain"], include [null], exclude [null],
              overrides [{}] (glob: {setting: value}, as patch takes them)
    data:     dataset (digits | fashion_mnist | cifar10 | cifar100 | imagefolder),
              root [null: give --data; fashion_mnist: /usr/share/datasets/fashion-mnist],
              train_split ["train"], val_split ["val"] (imagefolder sub-directories),
              image_size [null: the dataset's], augment (none | cifar | imagenet) ["none"],
              batch_size [128] (global: per optimizer step, over all ranks and micro-batches),
              eval_batch_size [null: batch_size], num_workers [0],
              train_subset [null: all; N: the same N training samples for every seed]
    optim:    name (sgd | adam | adamw), lr, momentum [0.9] (Adam's beta1), nesterov [false],
              beta2 [0.999], weight_decay [0.0], filter_bias_and_bn [true]
    schedule: name (cosine | linear | constant), min_lr [0.0], warmup_epochs [0],
              warmup_lr [1e-5]
    train:    epochs, max_steps [null], grad_accum [1], amp [null | bfloat16 | float16],
              label_smoothing [0.0], clip_grad [null] (max grad norm),
              threads [null] (torch.set_num_threads for the process)
    log:      every_steps [50], eval_every_epochs [1], checkpoint_every_steps [null],
              keep_last [3], best_metric (val_top1 | val_top5 | val_loss) ["val_top1"],
              plot [true]
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..config import ConvertConfig
from ..core import SiteSettings
from ..recipes import directory as recipes_dir
from ..recipes import names as bundled_recipes
from .errors import RecipeError


@dataclass
class ModelSpec:
    """The architecture (as ``--arch`` takes it) and, optionally, a file to start from."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None


@dataclass
class CSignSpec:
    """c-sign settings: a :class:`~uabnn_convert.config.ConvertConfig` plus ``enabled``.

    ``enabled: false`` is the sign baseline (measured through ``delta = 1``, exactly sign).
    ``overrides`` maps module-name globs to per-site settings, as ``uc.patch`` takes them.
    """

    enabled: bool = True
    m: int = SiteSettings.m
    delta: float = SiteSettings.delta
    sigma: float | Literal["std", "var"] = SiteSettings.sigma
    uncertainty: Literal["gaussian", "density"] = SiteSettings.uncertainty
    threshold: Literal["certain", "uncertain"] = SiteSettings.threshold
    include: list[str] | None = None
    exclude: list[str] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config()  # validates every setting, overrides included

    def record(self, config: ConvertConfig) -> None:
        """Take the settings a model was actually patched with (a converted ``--init`` file
        brings its own), so the run's recorded recipe says what ran."""
        if not self.enabled:
            return  # the baseline's delta = 1 is how sign is measured, not a setting
        for key in ("m", "delta", "sigma", "uncertainty", "threshold"):
            setattr(self, key, getattr(config, key))
        self.include = list(config.include) if config.include is not None else None
        self.exclude = list(config.exclude) if config.exclude is not None else None
        self.overrides = {k: dict(v) for k, v in config.overrides.items()}

    def config(self) -> ConvertConfig:
        """The settings a model is patched with (``delta = 1`` for the sign baseline)."""
        return ConvertConfig(
            m=self.m,
            delta=self.delta if self.enabled else 1.0,
            sigma=self.sigma,
            uncertainty=self.uncertainty,
            threshold=self.threshold if self.enabled else SiteSettings.threshold,
            include=self.include,
            exclude=self.exclude,
            overrides=self.overrides,
        )


@dataclass
class DataSpec:
    """Which dataset, where, and how it is batched and augmented."""

    dataset: Literal["digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder"]
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    image_size: int | None = None
    augment: Literal["none", "cifar", "imagenet"] = "none"
    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int = 0
    train_subset: int | None = None

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size", "image_size", "train_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key}={value} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0")


@dataclass
class OptimSpec:
    """Optimizer, built with ``timm.optim.create_optimizer_v2``."""

    name: Literal["sgd", "adam", "adamw"]
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    beta2: float = 0.999
    weight_decay: float = 0.0
    filter_bias_and_bn: bool = True

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")


@dataclass
class ScheduleSpec:
    """Learning-rate schedule, built with ``timm.scheduler.create_scheduler_v2`` per update."""

    name: Literal["cosine", "linear", "constant"]
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5


@dataclass
class TrainSpec:
    """Length of the run and how each optimizer step is computed."""

    epochs: int
    max_steps: int | None = None
    grad_accum: int = 1
    amp: Literal["bfloat16", "float16"] | None = None
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum={self.grad_accum} must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} must be >= 1")


@dataclass
class LogSpec:
    """What is logged, evaluated and checkpointed, and how often."""

    every_steps: int = 50
    eval_every_epochs: int = 1
    checkpoint_every_steps: int | None = None
    keep_last: int = 3
    best_metric: Literal["val_top1", "val_top5", "val_loss"] = "val_top1"
    plot: bool = True

    def __post_init__(self) -> None:
        for key in ("every_steps", "eval_every_epochs", "keep_last", "checkpoint_every_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key}={value} must be >= 1")


@dataclass
class Recipe:
    """One training setup. Build it with :func:`load_recipe`, which validates every key."""

    name: str
    model: ModelSpec
    data: DataSpec
    optim: OptimSpec
    schedule: ScheduleSpec
    train: TrainSpec
    csign: CSignSpec = field(default_factory=CSignSpec)
    log: LogSpec = field(default_factory=LogSpec)
    seed: int = 0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint friendly), the resolved recipe."""
        return dataclasses.asdict(self)

    @property
    def best_mode(self) -> str:
        """``min`` for a loss, ``max`` for an accuracy."""
        return "min" if self.log.best_metric.endswith("loss") else "max"


# Keys that may differ between a checkpoint's recipe and the resuming one: they do not change
# the computed trajectory (where the data lives, how it is loaded, how far to go, what is logged).
RESUME_EXEMPT = (
    "name",
    "description",
    "data.root",
    "data.num_workers",
    "data.eval_batch_size",
    "train.max_steps",
    "train.threads",
    "log.every_steps",
    "log.checkpoint_every_steps",
    "log.keep_last",
    "log.plot",
)


def load_recipe(
    source: str | Path | Mapping[str, Any] | Recipe,
    overrides: Mapping[str, Any] | None = None,
) -> Recipe:
    """Read and validate a recipe from a YAML path, a bundled name, a dict or a Recipe.

    ``overrides`` maps dotted keys to values (``{"train.max_steps": 10}``); they are applied
    before validation, so a misspelt override is rejected like a misspelt file key.
    """
    if isinstance(source, Recipe):
        raw, where = source.to_dict(), f"recipe {source.name!r}"
    elif isinstance(source, Mapping):
        raw, where = _plain(source), "recipe"
    else:
        path = resolve_recipe_path(source)
        raw, where = _read_with_base(path, ()), str(path)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, where)
    return _build(Recipe, raw, "", _Source(where, frozenset(overrides or ())))


def resolve_recipe_path(source: str | Path) -> Path:
    """A recipe file: the path itself, or a bundled recipe name such as ``digits``."""
    path = Path(source)
    if path.is_file():
        return path
    bundled = recipes_dir() / f"{path.name}.yaml"
    if path.suffix == "" and bundled.is_file():
        return bundled
    known = bundled_recipes()
    hint = f"; bundled recipes: {', '.join(known)}" if known else ""
    raise RecipeError(f"recipe file {str(source)!r} not found (expected a YAML file){hint}")


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.01"`` -> ``("optim.lr", 0.01)``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r} is not KEY=VALUE (e.g. train.max_steps=10)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip(), parsed


def recipe_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipe dicts, ignoring the exempt ones."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [
        k
        for k in keys
        if fa.get(k) != fb.get(k)
        and not any(k == e or k.startswith(e + ".") for e in RESUME_EXEMPT)
    ]


# ----------------------------------------------------------------------------- internals
def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(f"{path}: 'base' forms a cycle ({chain})")
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}: not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise RecipeError(f"{path}: 'base' must be a path to another recipe file")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.is_file():
        raise RecipeError(f"{path}: base recipe {str(base_path)!r} not found")
    return _merge(_read_with_base(base_path, (*seen, path)), raw)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if key == "csign" and isinstance(value, bool):
            value = {"enabled": value}
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, bool) and part == "csign":
            child = {"enabled": child}
            node[part] = child
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{where}: override {key!r}: {'.'.join(parts[: i + 1])} is a value")
        node = child
    node[parts[-1]] = _plain(value)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested recipe dict -> ``{"optim.lr": 0.1, ...}`` (``model.kwargs`` kept whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and k != "kwargs":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@dataclass(frozen=True)
class _Source:
    """Names where a key's value came from in an error: the file, or the override that set it
    (so ``--set optim.lr=abc`` is reported as the override, with the value as typed)."""

    file: str
    overridden: frozenset[str]

    def __call__(self, key: str) -> str:
        key = key.rstrip(".")
        hit = [k for k in self.overridden if key == k or key.startswith(k + ".")]
        return f"{self.file} (override {hit[0]})" if hit else self.file


def _build(cls: type, raw: Any, prefix: str, where: _Source) -> Any:
    section = prefix.rstrip(".") or "recipe"
    if cls is CSignSpec and isinstance(raw, bool):
        raw = {"enabled": raw}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where(prefix)}: {section} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise RecipeError(
                f"{where(prefix + str(key))}: unknown key {prefix + str(key)!r} (known in "
                f"{section}: {', '.join(known)})"
            )
    kwargs = {}
    for name, f in known.items():
        if name not in raw:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise RecipeError(f"{where(prefix + name)}: missing required key {prefix + name!r}")
            continue
        kwargs[name] = _check(raw[name], hints[name], prefix + name, where)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise RecipeError(f"{where(prefix)}: {section}: {exc}") from None


def _check(value: Any, tp: Any, key: str, where: _Source) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _plain(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _check(value, option, key, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where(key)}: {key}={value!r} is not {_describe(tp)}")
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise RecipeError(f"{where(key)}: {key}={value!r} is not one of {list(args)}")
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        number = _as_float(value)
        ok = number is not None and math.isfinite(number)
        if ok:
            return number
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is list and isinstance(value, (list, tuple)):
        return [_check(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return _plain(value)
    if not ok:
        raise RecipeError(f"{where(key)}: {key}={value!r} is not {_describe(tp)}")
    return value


def _as_float(value: Any) -> float | None:
    # YAML 1.1 reads ``5e-4`` (no dot) as a string; accept it as the number it spells.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "a mapping"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))
