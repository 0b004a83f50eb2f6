"""The bundled fine-tuning recipes (YAML), shipped in the wheel as ``uabnn_convert.recipes``."""
