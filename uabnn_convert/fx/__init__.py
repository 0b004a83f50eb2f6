"""The pass: find a model's weight-sign ops and rewrite them, one transform at a time.

:func:`scan` traces each module's own forward (:mod:`.tracing`) and finds its weight-sign
sites (:mod:`.detect`); the transforms (:class:`ConvertSigns`, :class:`FreezeSigns`,
:class:`FoldConstants`, :class:`RemoveSites`) rewrite the found nodes in place. Everything here
works on modules and graphs; settings, files and reports belong to the layers above.
"""

from .detect import FoundSite, ModuleSites, Skipped, scan
from .fold import FoldConstants, freeze_and_fold
from .rewrite import ConvertSigns, FreezeSigns, RemoveSites, frozen_name
from .tracing import is_rewritten, original_class

__all__ = [
    "ConvertSigns",
    "FoldConstants",
    "FoundSite",
    "FreezeSigns",
    "ModuleSites",
    "RemoveSites",
    "Skipped",
    "freeze_and_fold",
    "frozen_name",
    "is_rewritten",
    "original_class",
    "scan",
]
