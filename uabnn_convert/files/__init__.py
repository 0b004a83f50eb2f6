"""Reading and writing: one safe reader, one atomic writer, architectures and their trust rule,
the record around a converted model, and ``convert_file`` (what ``uabnn-convert MODEL`` does).
"""

from .arch import arch_label, build_arch, check_arch, chosen_arch
from .atomic import append_line, atomic_path, atomic_save, atomic_write_bytes, atomic_write_text
from .convert import Converted, convert_file
from .model_file import load, load_weights, model_from, patch_recorded, rebuild, save, save_frozen
from .paths import default_output, input_path, output_path
from .reader import ModelFile, PickleRefused, first_line, read, unwrap
from .record import FORMAT, FORMAT_VERSION, KINDS, converted_record, make_record

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "Converted",
    "ModelFile",
    "PickleRefused",
    "append_line",
    "arch_label",
    "atomic_path",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_arch",
    "check_arch",
    "chosen_arch",
    "convert_file",
    "converted_record",
    "default_output",
    "first_line",
    "input_path",
    "load",
    "load_weights",
    "make_record",
    "model_from",
    "output_path",
    "patch_recorded",
    "read",
    "rebuild",
    "save",
    "save_frozen",
    "unwrap",
]
