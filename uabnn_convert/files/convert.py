"""``convert_file``: read a user's checkpoint, convert the model, write the converted file.

The one implementation behind ``uabnn-convert MODEL`` and the demo: the command line only
parses and prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..api import example_from_specs, inspect, model_name, patch
from ..config import ConvertConfig
from ..errors import CheckpointError
from ..report import Report, format_bytes
from .model_file import model_from, save
from .paths import input_path, output_path
from .reader import read

CONVERTED_SUFFIX = ".uabnn.pt"


@dataclass
class Converted:
    """What :func:`convert_file` did: the converted model, where it went, and its sites."""

    model: nn.Module
    source: Path
    path: Path
    arch: str | None
    arch_kwargs: dict[str, Any]
    config: ConvertConfig
    report: Report
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def model_name(self) -> str:
        return model_name(self.model)

    def table(self) -> Report:
        """The sites as the command line shows them (site, family, shape, elements)."""
        r = self.report
        columns = ["site", "family", "shape", "elements"]
        return Report(f"c-sign sites of {self.model_name}", columns, r.rows, r.total, r.notes)

    def summary(self) -> str:
        """``wrote PATH (SIZE): N c-sign sites, … binary weights of MODEL, m=… delta=…``."""
        return (
            f"wrote {self.path} ({format_bytes(self.bytes)}): {len(self.report)} c-sign sites, "
            f"{self.report.total['elements']:,} binary weights of {self.model_name}, "
            f"{self.config.describe()}"
        )


def example_for(model: nn.Module, input_size: Sequence[int] | None) -> Any:
    """Two seeded samples of ``input_size`` (else the model's ``pretrained_cfg`` size), or
    ``None`` when neither is known."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = input_size if input_size is not None else cfg.get("input_size")
    if size is None:
        return None
    return example_from_specs([{"shape": [2, *size], "dtype": "float32"}])


def convert_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    config: ConvertConfig | Mapping[str, Any] | None = None,
    force: bool = False,
    trust_pickle: bool = False,
    input_size: Sequence[int] | None = None,
) -> Converted:
    """Convert the model in ``source`` and write it (default ``model.pt`` -> ``model.uabnn.pt``).

    ``source`` is a state_dict or training checkpoint (needs ``arch``) or a pickled model (needs
    ``trust_pickle``). ``input_size`` (one sample, e.g. ``(3, 224, 224)``; default the model's
    ``pretrained_cfg``) gives the example inputs a run-time capture needs and that the step-0
    parity check runs; they are recorded in the file. Nothing is written unless every step
    succeeds.
    """
    cfg = ConvertConfig.coerce(config)
    kwargs = dict(arch_kwargs or {})
    src = input_path(source)
    dst = output_path(src, output, CONVERTED_SUFFIX, force=force)
    file = read(src, trust_pickle=trust_pickle)
    if file.is_record:
        raise CheckpointError(
            f"{src} is already {file.kind} by uabnn-convert; see it with 'uabnn-convert "
            f"inspect {src}', or convert the original checkpoint"
        )
    notes = list(file.notes)
    model, arch_ref = model_from(file, arch, kwargs)
    patch(model, cfg, example_inputs=example_for(model, input_size))
    if arch_ref is None:
        notes.append(
            f"{dst.name} records no architecture (the input is a pickled model and no --arch was "
            "given): inspect/freeze/load it with --arch"
        )
    save(model, dst, arch=arch_ref, arch_kwargs=kwargs if arch_ref else {}, config=cfg)
    return Converted(
        model=model,
        source=src,
        path=dst,
        arch=arch_ref,
        arch_kwargs=kwargs if arch_ref else {},
        config=cfg,
        report=inspect(model),
        notes=notes,
    )
