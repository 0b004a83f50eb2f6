"""uabnn_convert: turn the weight ``sign()`` of an existing BNN into the paper's certainty-sign.

    import uabnn_convert as uc
    model = uc.patch(model, m=2, delta=0.1)   # every weight sign becomes a stateful c-sign

The layers, each importing only those below it: :mod:`.cli` → :mod:`.train` → :mod:`.deploy`
→ :mod:`.files` → :mod:`.api` → :mod:`.config` → :mod:`.fx` → :mod:`.core`.

The public names load on first use (PEP 562): importing a sub-package, the command line's
included, does not import torch through this file, so ``uabnn-convert --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names
from ._version import __version__

__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "freeze": ".api:freeze",
        "inspect": ".api:inspect",
        "patch": ".api:patch",
        "sites": ".api:sites",
        "stats": ".api:stats",
        "unpatch": ".api:unpatch",
        "ConvertConfig": ".config:ConvertConfig",
        "CSign": ".core:CSign",
        "CSignSite": ".core:CSignSite",
        "export_onnx": ".deploy:export_onnx",
        "load_packed": ".deploy:load_packed",
        "summary": ".deploy:summary",
        "export": ".deploy:export_packed",
        "CheckpointError": ".errors:CheckpointError",
        "ConversionError": ".errors:ConversionError",
        "ExportError": ".errors:ExportError",
        "UabnnError": ".errors:UabnnError",
        "load": ".files:load",
        "save": ".files:save",
    },
    globals(),
)

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


if TYPE_CHECKING:
    from .api import freeze, inspect, patch, sites, stats, unpatch
    from .config import ConvertConfig
    from .core import CSign, CSignSite
    from .deploy import export_onnx, load_packed, summary
    from .deploy import export_packed as export
    from .errors import CheckpointError, ConversionError, ExportError, UabnnError
    from .files import load, save
