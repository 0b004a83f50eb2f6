"""uabnn_convert: turn the weight ``sign()`` of an existing BNN into the paper's certainty-sign.

import uabnn_convert as uc
model = uc.patch(model, m=2, delta=0.1)   # every weight sign becomes a stateful c-sign
"""

__version__ = "0.1.0"

from .api import ConversionError, freeze, inspect, patch, sites, stats, unpatch
from .csign import CSign
from .export import export_onnx, load_packed
from .export import export_packed as export
from .io import load
from .site import CSignSite
from .summary import summary

__all__ = [
    "CSign",
    "CSignSite",
    "ConversionError",
    "__version__",
    "export",
    "export_onnx",
    "freeze",
    "inspect",
    "load",
    "load_packed",
    "patch",
    "sites",
    "stats",
    "summary",
    "unpatch",
]
