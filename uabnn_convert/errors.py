"""The package's error types and the one exit-code policy the command line applies to them.

Every error a user can meet is a :class:`UabnnError`: its message is one line that says what is
wrong and what to do, and ``usage`` says whether the request must change (a path, an option, a
missing opt-in: exit status 2) or the input could not be processed (exit status 1). Each layer
raises its own subclass; the command line maps all of them the same way.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UabnnError(Exception):
    """Base of every user-facing error: a one-line message and an exit status."""

    def __init__(self, message: object = "", *, usage: bool = False) -> None:
        super().__init__(" ".join(str(message).split()))
        self.usage = usage

    @property
    def exit_code(self) -> int:
        return EXIT_USAGE if self.usage else EXIT_FAILED


class ConversionError(UabnnError, RuntimeError):
    """The model cannot be converted as asked (no site, a bad pattern, already converted)."""


class CheckpointError(UabnnError):
    """A model file cannot be read, rebuilt or written as asked."""


class ExportError(UabnnError):
    """A model cannot be exported (packed file, ONNX), or a packed file cannot be read."""
