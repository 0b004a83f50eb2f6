"""The bundled fine-tuning recipes (YAML), shipped in the wheel as ``uabnn_convert.recipes``.

Read through :mod:`importlib.resources`, so an installed wheel finds them wherever it lives.
This module imports nothing heavy: ``finetune --help`` lists the names without loading torch.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def directory() -> Path:
    """The directory that holds the bundled recipe files."""
    return Path(str(importlib.resources.files(__name__)))


def names() -> list[str]:
    """Names of the bundled recipes (``digits``, ``cifar10_wrn22_16``, …)."""
    folder = directory()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
