"""The command line: ``uabnn-convert``. One module per command, no domain logic here.

Importing this package registers every command on :data:`app` (typer); :func:`main` is the
console-script entry point.
"""

from . import convert, demo, export, finetune, freeze, inspect, plot, summary
from .app import app, main

__all__ = [
    "app",
    "convert",
    "demo",
    "export",
    "finetune",
    "freeze",
    "inspect",
    "main",
    "plot",
    "summary",
]
