"""uabnn_convert: turn the weight ``sign()`` of an existing BNN into the paper's certainty-sign.

import uabnn_convert as uc
model = uc.patch(model, m=2, delta=0.1)   # every weight sign becomes a stateful c-sign
"""

__version__ = "0.1.0"

from .api import ConversionError, freeze, inspect, patch, sites, stats, unpatch
from .csign import CSign
from .site import CSignSite

__all__ = [
    "CSign",
    "CSignSite",
    "ConversionError",
    "__version__",
    "freeze",
    "inspect",
    "patch",
    "sites",
    "stats",
    "unpatch",
]
