"""Benchmarks for uabnn_convert: ``python -m benchmarks`` (``--quick`` for a fast subset)."""
