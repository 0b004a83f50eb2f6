"""Errors the harness reports as one line (the CLI prints them without a traceback)."""

from __future__ import annotations


class TrainError(Exception):
    """Base of the harness's user-facing errors: the message says what was expected where."""


class RecipeError(TrainError, ValueError):
    """A recipe file or override is malformed: unknown key, wrong type, bad value."""


class DataError(TrainError, FileNotFoundError):
    """A data path is missing or does not hold the expected on-disk format."""


class ResumeError(TrainError, RuntimeError):
    """A checkpoint cannot be resumed: missing, unreadable, or from a different recipe/model."""
