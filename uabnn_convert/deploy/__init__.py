"""Deployment: the deployable model, the 1-bit packed file, ONNX, and a binary-aware summary.

:func:`deploy` freezes a converted model and folds its weight-only computations;
:func:`export_packed` / :func:`load_packed` write and read it with binary weights at one bit
each (:mod:`.bits`); :func:`export_onnx` exports it to ONNX; :func:`summary` counts parameters
by precision and binary vs float multiply-accumulates, as ``larq.models.summary`` does.
"""

from .bits import BINARY_MARK, decode_signbits, encode_signbits, pack_bits, unpack_bits
from .model_of import model_of
from .onnx import export_onnx
from .packed import (
    binary_constants,
    deploy,
    export_packed,
    is_packed_file,
    load_packed,
    packed_report,
    read_packed_header,
)
from .summary import summary

__all__ = [
    "BINARY_MARK",
    "binary_constants",
    "decode_signbits",
    "deploy",
    "encode_signbits",
    "export_onnx",
    "export_packed",
    "is_packed_file",
    "load_packed",
    "model_of",
    "pack_bits",
    "packed_report",
    "read_packed_header",
    "summary",
    "unpack_bits",
]
