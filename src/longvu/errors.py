"""Exceptions raised by longvu.

Every error a user can cause (bad file, bad checkpoint, bad option, a prompt that cannot
fit) is a :class:`LongVUError`; the CLI prints its message on one line and exits with
status 2, the server answers 4xx.  :class:`Cancelled` is not an error of the input: it
ends work that its caller no longer wants.
"""

from __future__ import annotations

import os


class LongVUError(Exception):
    """Base class for errors caused by user input, with a one-line message."""


class VideoError(LongVUError):
    """The video file is missing, unreadable, not an allowed format, or has no decodable frame.

    ``str(e)`` names the file as the caller gave it (``"clip.mp4: empty file"``);
    :attr:`public_message` is the same message without the path, for a server that must
    not reveal where its files live.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None) -> None:
        self.reason = _one_line(reason)
        self.path = None if path is None else os.fspath(path)
        super().__init__(self.reason if path is None else f"{display_path(path)}: {self.reason}")

    @property
    def public_message(self) -> str:
        """The message without the file's path."""
        return self.reason


class MediaLimitError(VideoError):
    """The video is over a :class:`longvu.model.intake.MediaLimits` bound (a server answers 413).

    ``limit`` names the bound: ``"max_pixels"``, ``"max_frames"`` or ``"max_seconds"``.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None, *, limit: str) -> None:
        super().__init__(reason, path)
        self.limit = limit


class CheckpointError(LongVUError):
    """A checkpoint folder is incomplete, or its weights do not match the model."""


class ConfigError(LongVUError):
    """An unknown config key or a value of the wrong type."""


class PromptError(LongVUError):
    """A message the prompt cannot hold as text (a reserved marker or control token)."""


class ContextOverflowError(LongVUError):
    """The prompt cannot fit the model's context beside the minimum visual budget.

    Attributes:
        prompt_tokens: text tokens of the smallest prompt that could be sent (system
            prompt plus the newest question, template included).
        context: the context budget (``tokenizer_model_max_length``).
        reserved: tokens reserved for the answer (``inference_max_length``).
        min_visual_tokens: the visual tokens the video must keep at least (0: a text-only prompt).
    """

    def __init__(self, prompt_tokens: int, context: int, reserved: int, min_visual_tokens: int) -> None:
        self.prompt_tokens, self.context = prompt_tokens, context
        self.reserved, self.min_visual_tokens = reserved, min_visual_tokens
        room = context - reserved - min_visual_tokens
        video = f" and at least {min_visual_tokens} for the video" if min_visual_tokens else ""
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; the context holds {context}, of which {reserved} are reserved "
            f"for the answer{video}, which leaves {room} for text"
        )


class Cancelled(Exception):
    """The caller cancelled the work (a client went away, Ctrl-C, a deadline passed)."""


def install_hint(extra: str) -> str:
    """How to add an optional extra; longvu is not on the package index, so from a clone."""
    return f"pip install -e '.[{extra}]' in a clone of longvu"


def display_path(path: str | os.PathLike | bytes, limit: int = 160) -> str:
    """A path as it can go into a one-line message: control characters escaped, long ones shortened."""
    text = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit // 2] + "..." + text[-(limit // 2) :]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
