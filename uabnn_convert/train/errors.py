"""Errors the harness reports as one line (the command line prints them without a traceback).

All are :class:`~uabnn_convert.errors.UabnnError`: a bad recipe, override, data path or resume
request is a usage error (exit status 2); a run that cannot proceed is a failure (1).
"""

from __future__ import annotations

from ..errors import UabnnError


class TrainError(UabnnError):
    """Base of the harness's user-facing errors: the message says what was expected where."""


class RecipeError(TrainError, ValueError):
    """A recipe file or override is malformed: unknown key, wrong type, bad value."""

    def __init__(self, message: object = "", *, usage: bool = True) -> None:
        super().__init__(message, usage=usage)


class DataError(TrainError, FileNotFoundError):
    """A data path is missing or does not hold the expected on-disk format."""

    def __init__(self, message: object = "", *, usage: bool = True) -> None:
        super().__init__(message, usage=usage)


class ResumeError(TrainError, RuntimeError):
    """A checkpoint cannot be resumed: missing, unreadable, or from a different recipe/model."""

    def __init__(self, message: object = "", *, usage: bool = True) -> None:
        super().__init__(message, usage=usage)
