"""Which sites to convert and with which settings: one validated, serialisable object.

Priority, lowest to highest (the torch.ao ``QConfigMapping`` idea, reduced to globs):

1. the package defaults (:class:`~uabnn_convert.core.SiteSettings`);
2. the global ``m``, ``delta``, ``sigma``, ``uncertainty``, ``threshold`` of the config;
3. each entry of ``overrides`` whose glob matches the site's owner module (or the site's own
   qualified name), in the order given — a later matching entry wins over an earlier one.

``include`` (default: everything) and then ``exclude`` select the sites; both are globs on the
owner module's qualified name (``layer4.*``) or the site's name (``layer4.0.conv1.weight_csign``).
The wrapper prefixes ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``) are
ignored when matching, as the file loader ignores them.

``to_dict()`` / ``from_dict()`` give the plain form that files, recipes and the command line
store; it carries a format version so that a newer package can read an older record.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .core import SETTING_KEYS, SiteSettings

CONFIG_VERSION = 1
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrappers(name: str) -> str:
    """``name`` without the DDP / ``torch.compile`` wrapper prefixes, however nested."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name


def _names(owner: str, site: str) -> set[str]:
    full = f"{owner}.{site}" if owner else site
    return {owner, full, strip_wrappers(owner), strip_wrappers(full)}


def _matches(pattern: str, owner: str, site: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in _names(owner, site))


@dataclass
class ConvertConfig:
    """The settings of a conversion: per-site c-sign settings plus which sites and overrides.

    ``m``, ``delta``, ``sigma``, ``uncertainty``, ``threshold``: the global site settings (from
    :class:`~uabnn_convert.core.SiteSettings`). ``include`` / ``exclude``: module-name globs.
    ``overrides``: ``{glob: {setting: value}}``, later entries winning. Validated on
    construction; ``ValueError`` names the bad value.
    """

    m: int = SiteSettings.m
    delta: float = SiteSettings.delta
    sigma: str | float = SiteSettings.sigma
    uncertainty: str = SiteSettings.uncertainty
    threshold: str = SiteSettings.threshold
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.include = _as_patterns("include", self.include)
        self.exclude = _as_patterns("exclude", self.exclude)
        base = self.site_settings()  # validates the globals
        self.delta, self.sigma = base.delta, base.sigma
        overrides = {}
        for pattern, values in dict(self.overrides).items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"overrides keys must be module-name globs, got {pattern!r}")
            if not isinstance(values, Mapping):
                raise ValueError(f"overrides[{pattern!r}] must be a dict of settings")
            unknown = set(values) - set(SETTING_KEYS)
            if unknown:
                raise ValueError(
                    f"overrides[{pattern!r}] has unknown setting(s) {sorted(unknown)}; "
                    f"allowed: {list(SETTING_KEYS)}"
                )
            base.replace(**values)  # validates the merged settings
            overrides[pattern] = dict(values)
        self.overrides = overrides

    # ------------------------------------------------------------------ settings per site
    def site_settings(self) -> SiteSettings:
        """The global site settings (before overrides)."""
        return SiteSettings(self.m, self.delta, self.sigma, self.uncertainty, self.threshold)

    def defaults(self) -> dict[str, Any]:
        return self.site_settings().to_dict()

    def settings_for(self, owner: str, site: str) -> dict[str, Any]:
        """The settings of one site: the globals, then every matching override in order."""
        settings = self.defaults()
        for pattern, values in self.overrides.items():
            if _matches(pattern, owner, site):
                settings.update(values)
        return settings

    def selects(self, owner: str, site: str) -> bool:
        if self.include and not any(_matches(p, owner, site) for p in self.include):
            return False
        return not any(_matches(p, owner, site) for p in self.exclude or ())

    def may_select(self, owner: str) -> bool:
        """Whether some site of module ``owner`` could be selected (before its sites are
        known): not excluded by name, and named or reached by an include pattern."""
        if any(_matches(p, owner, "") for p in self.exclude or ()):
            return False
        if not self.include:
            return True
        names = {owner, strip_wrappers(owner)}
        return any(
            _matches(p, owner, "") or any(p.startswith(f"{n}.") for n in names)
            for p in self.include
        )

    def unmatched_patterns(self, candidates: Iterable[tuple[str, str]]) -> list[str]:
        """Patterns (include, exclude, overrides) that match none of the candidate sites."""
        candidates = list(candidates)
        patterns = [*(self.include or ()), *(self.exclude or ()), *self.overrides]
        return [
            p for p in patterns if not any(_matches(p, owner, site) for owner, site in candidates)
        ]

    def describe(self) -> str:
        """``m=2 delta=0.1 sigma=std`` (+ include/exclude/overrides), for one-line messages."""
        text = f"m={self.m} delta={self.delta} sigma={self.sigma}"
        if self.uncertainty != SiteSettings.uncertainty:
            text += f" uncertainty={self.uncertainty}"
        if self.threshold != SiteSettings.threshold:
            text += f" threshold={self.threshold}"
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if value:
                text += f" {key}={','.join(value)}"
        if self.overrides:
            text += f" overrides={len(self.overrides)}"
        return text

    # ------------------------------------------------------------------ plain form
    def replace(self, **changes: Any) -> ConvertConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; allowed: {list(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and ``weights_only``-safe form, with its format version."""
        return {
            "config_version": CONFIG_VERSION,
            **self.defaults(),
            "include": list(self.include) if self.include else None,
            "exclude": list(self.exclude) if self.exclude else None,
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConvertConfig:
        """Read what :meth:`to_dict` wrote (any older version); unknown keys are an error."""
        data = dict(data)
        version = data.pop("config_version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ValueError(
                f"config_version {version!r} is newer than this package reads "
                f"({CONFIG_VERSION}): upgrade uabnn_convert"
            )
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; allowed: {list(FIELDS)}")
        return cls(**data)

    @classmethod
    def coerce(cls, config: ConvertConfig | Mapping[str, Any] | None) -> ConvertConfig:
        """A config from a config, its plain form, or ``None`` (the defaults)."""
        if config is None:
            return cls()
        if isinstance(config, ConvertConfig):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise TypeError(
            f"config must be a ConvertConfig or a dict of settings, got {type(config).__name__}"
        )


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ConvertConfig))


def _as_patterns(name: str, value: Sequence[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    patterns = list(value)
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name} must be module-name globs (non-empty strings), got {value!r}")
    return patterns or None
