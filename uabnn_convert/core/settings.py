"""The settings of one c-sign site, validated, with the package's defaults.

This is the one home of the defaults (m = 2, delta = 0.1, sigma = "std", the peak-normalised
Gaussian): :class:`~uabnn_convert.core.csign.CSign`, :class:`~uabnn_convert.config.ConvertConfig`,
the file records, the recipes and the command line all read them from :class:`SiteSettings`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIGMA_MODES = ("std", "var")
UNCERTAINTY_FORMS = ("gaussian", "density")
THRESHOLD_READINGS = ("certain", "uncertain")


def validate_settings(
    m: Any, delta: Any, sigma: Any, uncertainty: Any = "gaussian", threshold: Any = "certain"
) -> None:
    """Raise ``ValueError`` naming the argument, its value and what is allowed."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"m={m!r} is not allowed: m must be a non-negative integer (e.g. 2)")
    if (
        isinstance(delta, bool)
        or not isinstance(delta, (int, float))
        or not math.isfinite(delta)
        or not 0 < delta <= 1
    ):
        raise ValueError(f"delta={delta!r} is not allowed: delta must be a number in (0, 1]")
    if isinstance(sigma, str):
        if sigma not in SIGMA_MODES:
            raise ValueError(
                f"sigma={sigma!r} is not allowed: use 'std', 'var' or a positive finite number"
            )
    elif (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float))
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise ValueError(
            f"sigma={sigma!r} is not allowed: use 'std', 'var' or a positive finite number"
        )
    if uncertainty not in UNCERTAINTY_FORMS:
        raise ValueError(
            f"uncertainty={uncertainty!r} is not allowed: use one of {UNCERTAINTY_FORMS}"
        )
    if threshold not in THRESHOLD_READINGS:
        raise ValueError(f"threshold={threshold!r} is not allowed: use one of {THRESHOLD_READINGS}")


@dataclass(frozen=True)
class SiteSettings:
    """What decides one site's c-sign (SPEC section 2); validated on construction.

    ``m``: the window, the current and the previous ``m`` updates. ``delta``: the fraction of the
    most certain weights of the site that may always flip. ``sigma``: the spread of the
    uncertainty function, ``"std"`` (of the latent at the first update), ``"var"`` (the paper's
    literal wording) or a positive number. ``uncertainty``: ``"gaussian"`` (peak-normalised, the
    default) or ``"density"`` (the paper's literal density, for experiments only).
    ``threshold``: which end of the sorted ``f̂`` the paper's "percent of the sorted values"
    counts from. ``"certain"`` (the default, SPEC section 2): ``Δ_t`` is the ``k``-th smallest
    ``f̂``, so the ``delta`` most certain weights may always flip, and ``delta = 1`` is plain
    sign. ``"uncertain"`` (opt-in): ``Δ_t`` is the ``k``-th largest ``f̂``, so every weight but
    the ``delta`` most uncertain may always flip; a small ``delta`` then vetoes only among the
    most uncertain weights, and ``delta = 1`` vetoes whatever the window vetoes.
    """

    m: int = 2
    delta: float = 0.1
    sigma: str | float = "std"
    uncertainty: str = "gaussian"
    threshold: str = "certain"

    def __post_init__(self) -> None:
        validate_settings(self.m, self.delta, self.sigma, self.uncertainty, self.threshold)
        object.__setattr__(self, "delta", float(self.delta))
        if not isinstance(self.sigma, str):
            object.__setattr__(self, "sigma", float(self.sigma))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteSettings:
        """Settings from a plain mapping; unknown keys are an error that names them."""
        unknown = set(data) - set(SETTING_KEYS)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; allowed: {list(SETTING_KEYS)}")
        return cls(**data)

    def replace(self, **changes: Any) -> SiteSettings:
        return dataclasses.replace(self, **changes)


SETTING_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SiteSettings))
DEFAULTS = SiteSettings()
