"""uabnn_convert: turn the weight ``sign()`` of an existing BNN into the paper's certainty-sign.

    import uabnn_convert as uc
    model = uc.patch(model, m=2, delta=0.1)   # every weight sign becomes a stateful c-sign

The layers, each importing only those below it: :mod:`.cli` → :mod:`.train` → :mod:`.deploy`
→ :mod:`.files` → :mod:`.api` → :mod:`.config` → :mod:`.fx` → :mod:`.core`.
"""

from ._version import __version__
from .api import freeze, inspect, patch, sites, stats, unpatch
from .config import ConvertConfig
from .core import CSign, CSignSite
from .deploy import export_onnx, load_packed, summary
from .deploy import export_packed as export
from .errors import CheckpointError, ConversionError, ExportError, UabnnError
from .files import load, save

__all__ = [
    "CSign",
    "CSignSite",
    "CheckpointError",
    "ConversionError",
    "ConvertConfig",
    "ExportError",
    "UabnnError",
    "__version__",
    "export",
    "export_onnx",
    "freeze",
    "inspect",
    "load",
    "load_packed",
    "patch",
    "save",
    "sites",
    "stats",
    "summary",
    "unpatch",
]
