"""Exceptions raised by longvu.

Every error a user can cause (bad file, bad checkpoint, bad option) is a
:class:`LongVUError`; the CLI prints its message on one line and exits non-zero.
"""

from __future__ import annotations


class LongVUError(Exception):
    """Base class for errors caused by user input, with a one-line message."""


class VideoError(LongVUError):
    """The video file is missing, unreadable, or has no decodable frame."""


class CheckpointError(LongVUError):
    """A checkpoint folder is incomplete, or its weights do not match the model."""


class ConfigError(LongVUError):
    """An unknown config key or a value of the wrong type."""
