"""Which sites to convert and with which settings.

Priority, lowest to highest (the torch.ao ``QConfigMapping`` idea, reduced to globs):

1. the global ``m``, ``delta``, ``sigma``, ``uncertainty`` given to ``patch``;
2. each entry of ``overrides`` whose glob matches the site's owner module (or the site's
   own qualified name), in the order given — a later matching entry wins over an earlier one.

``include`` (default: everything) and then ``exclude`` select the sites; both are globs on the
owner module's qualified name (``layer4.*``) or the site's name (``layer4.0.conv1.weight_csign``).
A leading ``module.`` from DataParallel/DDP wrappers is ignored when matching.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .csign import validate_settings

SETTING_KEYS = ("m", "delta", "sigma", "uncertainty")


def _names(owner: str, site: str) -> list[str]:
    full = f"{owner}.{site}" if owner else site
    names = [owner, full]
    for prefix in ("module.",):
        names += [n[len(prefix) :] for n in (owner, full) if n.startswith(prefix)]
    return names


def _matches(pattern: str, owner: str, site: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in _names(owner, site))


@dataclass
class ConvertConfig:
    m: int = 2
    delta: float = 0.1
    sigma: str | float = "std"
    uncertainty: str = "gaussian"
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.include = _as_patterns("include", self.include)
        self.exclude = _as_patterns("exclude", self.exclude)
        validate_settings(self.m, self.delta, self.sigma, self.uncertainty)
        for pattern, values in dict(self.overrides).items():
            if not isinstance(values, Mapping):
                raise ValueError(f"overrides[{pattern!r}] must be a dict of settings")
            unknown = set(values) - set(SETTING_KEYS)
            if unknown:
                raise ValueError(
                    f"overrides[{pattern!r}] has unknown setting(s) {sorted(unknown)}; "
                    f"allowed: {list(SETTING_KEYS)}"
                )
            merged = {**self.defaults(), **values}
            validate_settings(**merged)

    def defaults(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "delta": self.delta,
            "sigma": self.sigma,
            "uncertainty": self.uncertainty,
        }

    def settings_for(self, owner: str, site: str) -> dict[str, Any]:
        settings = self.defaults()
        for pattern, values in self.overrides.items():
            if _matches(pattern, owner, site):
                settings.update(values)
        return settings

    def selects(self, owner: str, site: str) -> bool:
        if self.include and not any(_matches(p, owner, site) for p in self.include):
            return False
        return not any(_matches(p, owner, site) for p in self.exclude or ())

    def unmatched_patterns(self, candidates: Iterable[tuple[str, str]]) -> list[str]:
        """Patterns (include, exclude, overrides) that match none of the candidate sites."""
        candidates = list(candidates)
        patterns = [*(self.include or ()), *(self.exclude or ()), *self.overrides]
        return [
            p for p in patterns if not any(_matches(p, owner, site) for owner, site in candidates)
        ]


def _as_patterns(name: str, value: Sequence[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    patterns = list(value)
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name} must be module-name globs (non-empty strings), got {value!r}")
    return patterns
