"""ONNX export of the deployable model, checked with ``onnx.checker`` (the ``export`` extra)."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..api import sites
from ..errors import ExportError
from ..files import atomic_path, unwrap
from .packed import deploy, writable_output


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: Sequence[int],
    *,
    opset: int | None = None,
    dynamo: bool | None = None,
) -> Path:
    """Export the deployable model (:func:`deploy` of a converted model, else ``model`` as it
    is) to ONNX for one input of shape ``(1, *input_size)``; check it with ``onnx.checker``.

    ``dynamo=None`` tries the ``torch.export``-based exporter (needs onnxscript) first and falls
    back to the TorchScript one; ``True``/``False`` uses only that one. Needs the ``export``
    extra (onnx, onnxscript), imported only here. The write is atomic.
    """
    onnx = _require("onnx")
    if dynamo:
        _require("onnxscript")
    if dynamo is None:
        exporters = [True, False] if importlib.util.find_spec("onnxscript") else [False]
    else:
        exporters = [dynamo]
    net = unwrap(model)
    dst = writable_output(path)
    if any(True for _ in sites(net)):
        net = deploy(net)
    example = torch.randn(1, *input_size, dtype=_float_dtype(net))
    modes = {m: m.training for m in net.modules()}
    net.eval()
    errors = []
    try:
        with atomic_path(dst, suffix=".tmp.onnx") as tmp:
            for exporter in exporters:
                try:
                    _onnx_export(net, example, str(tmp), dynamo=exporter, opset=opset)
                    break
                except Exception as e:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    errors.append(f"dynamo={exporter}: {type(e).__name__}: {first}")
            else:
                raise ExportError(
                    f"ONNX export of {type(net).__name__} failed ({'; '.join(errors)})"
                )
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as e:
                raise ExportError(f"the exported ONNX model does not pass onnx.checker: {e}") from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    return dst


def _onnx_export(net: nn.Module, example: Tensor, path: str, *, dynamo: bool, opset: int | None):
    import warnings

    kwargs: dict[str, Any] = {
        "dynamo": dynamo,
        "input_names": ["input"],
        "output_names": ["output"],
    }
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        kwargs.update(external_data=False, optimize=True, verbose=False)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), path, **kwargs)


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs the {name!r} package (the 'export' extra): "
            "pip install 'uabnn_convert[export]'"
        ) from e


def _float_dtype(model: nn.Module) -> torch.dtype:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()
