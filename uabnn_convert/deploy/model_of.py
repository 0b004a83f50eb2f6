"""The model any file this package takes holds: a checkpoint, a record, or a packed file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..files import model_from, read, rebuild
from .packed import is_packed_file, load_packed


def model_of(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    trust_code: bool = False,
) -> nn.Module:
    """Load whatever ``path`` holds: a packed export, a converted, frozen or checkpoint record
    (rebuilt as recorded; ``arch``/``arch_kwargs`` replace the recorded ones), or a plain
    checkpoint (built from ``arch``)."""
    if is_packed_file(path):
        return load_packed(path, arch=arch, arch_kwargs=arch_kwargs, trust_code=trust_code)
    file = read(path, trust_pickle=trust_pickle)
    if not file.is_record:
        return model_from(file, arch, arch_kwargs)[0]
    return rebuild(file, arch=arch, arch_kwargs=arch_kwargs, trust_code=trust_code)
