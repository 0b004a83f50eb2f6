"""The pass: find a model's weight-sign ops and rewrite them, one transform at a time.

:func:`scan` traces each module's own forward (:mod:`.tracing`) and finds its weight-sign
sites (:mod:`.detect`); the transforms (:class:`ConvertSigns`, :class:`FreezeSigns`,
:class:`FoldConstants`, :class:`RemoveSites`) rewrite the found nodes in place. Everything here
works on modules and graphs; settings, files and reports belong to the layers above.
"""

from .detect import FoundSite, ModuleSites, Skipped, scan
from .fold import FoldConstants, freeze_and_fold
from .intercept import (
    InterceptSigns,
    SiteRecord,
    capture_names,
    discover,
    freeze_captured,
    is_captured,
    release,
)
from .names import frozen_name
from .rewrite import ConvertSigns, FreezeSigns, RemoveSites
from .tracing import is_rewritten, original_class

__all__ = [
    "ConvertSigns",
    "FoldConstants",
    "FoundSite",
    "FreezeSigns",
    "InterceptSigns",
    "ModuleSites",
    "RemoveSites",
    "SiteRecord",
    "Skipped",
    "capture_names",
    "discover",
    "freeze_and_fold",
    "freeze_captured",
    "frozen_name",
    "is_captured",
    "is_rewritten",
    "original_class",
    "release",
    "scan",
]
