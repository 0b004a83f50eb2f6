"""Benchmarks for uabnn_convert: ``python -m benchmarks`` (``--quick``, ``--device cuda``).

Modules: :mod:`.timing` (interleaved host timing), :mod:`.instrument` (hooks, phase clocks,
profiler shares), :mod:`.cases` (the CPU cases), :mod:`.gpu` (the CUDA cases and the skip
without CUDA), :mod:`.table` (rows, targets, rendering), :mod:`.memory_child` (one
peak-memory variant per fresh process) and :mod:`.deploy_sizes` (file sizes, separate).
"""
