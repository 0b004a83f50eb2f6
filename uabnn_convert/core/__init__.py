"""c-sign maths and state: the rule of one site (:class:`CSign`), the site that stands in for a
model's sign op (:class:`CSignSite`), and the settings they share (:class:`SiteSettings`).

Nothing here knows about models, graphs or files; every other layer builds on it.
"""

from .csign import CSign
from .settings import DEFAULTS, SETTING_KEYS, SiteSettings, validate_settings
from .site import CSignSite

__all__ = ["DEFAULTS", "SETTING_KEYS", "CSign", "CSignSite", "SiteSettings", "validate_settings"]
