"""c-sign maths and state: the rule of one site (:class:`CSign`), the site that stands in for a
model's sign op (:class:`CSignSite`), and the settings they share (:class:`SiteSettings`).

Nothing here knows about models, graphs or files; every other layer builds on it. The settings
import eagerly (plain Python); the torch modules on first use (:mod:`.._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from .settings import DEFAULTS, SETTING_KEYS, SiteSettings, validate_settings

__getattr__, __dir__ = lazy_names(
    __name__, {"CSign": ".csign:CSign", "CSignSite": ".site:CSignSite"}, globals()
)

__all__ = ["DEFAULTS", "SETTING_KEYS", "CSign", "CSignSite", "SiteSettings", "validate_settings"]

if TYPE_CHECKING:
    from .csign import CSign
    from .site import CSignSite
