"""Names the pass gives: sites after their latent (``weight_csign``), constants after sites."""

from __future__ import annotations

from torch import nn

from ..core import CSign

SITE_SUFFIX = "_csign"
FROZEN_SUFFIX = "_binary"


def site_name(module: nn.Module, source: str, used: dict[str, int]) -> str:
    """``<source>_csign``, ``<source>_csign_1``, … in the order sites appear, skipping names
    the module already has (other than c-sign sites: a patched model's own state)."""
    base = f"{source.replace('.', '_')}{SITE_SUFFIX}"
    count = used.get(base, 0)
    while True:
        name = base if count == 0 else f"{base}_{count}"
        count += 1
        taken = hasattr(module, name) and not isinstance(getattr(module, name), CSign)
        if not taken:
            used[base] = count
            return name


def frozen_name(site: str) -> str:
    """The constant a site becomes when frozen: ``weight_csign`` -> ``weight_binary``."""
    base, suffix, rest = site.rpartition(SITE_SUFFIX)
    if not suffix:
        return f"{site}{FROZEN_SUFFIX}"
    return f"{base}{FROZEN_SUFFIX}{rest}"
