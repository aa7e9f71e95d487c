"""Exceptions raised by longvu.

Every error a user can cause (bad file, bad checkpoint, bad option, a prompt that cannot
fit) is a :class:`LongVUError`; the CLI prints its message on one line and exits with
status 2, the server answers 4xx.  :class:`Cancelled` is not an error of the input: it
ends work that its caller no longer wants.
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


class PromptError(LongVUError):
    """A message the prompt cannot hold as text (a reserved marker or control token)."""


class ContextOverflowError(LongVUError):
    """The prompt cannot fit the model's context beside the minimum visual budget.

    Attributes:
        prompt_tokens: text tokens of the smallest prompt that could be sent (system
            prompt plus the newest question, template included).
        context: the context budget (``tokenizer_model_max_length``).
        reserved: tokens reserved for the answer (``inference_max_length``).
        min_visual_tokens: the visual tokens the video must keep at least.
    """

    def __init__(self, prompt_tokens: int, context: int, reserved: int, min_visual_tokens: int) -> None:
        self.prompt_tokens, self.context = prompt_tokens, context
        self.reserved, self.min_visual_tokens = reserved, min_visual_tokens
        room = context - reserved - min_visual_tokens
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; the context holds {context}, of which {reserved} are reserved "
            f"for the answer and at least {min_visual_tokens} for the video, which leaves {room} for text"
        )


class Cancelled(Exception):
    """The caller cancelled the work (a client went away, Ctrl-C, a deadline passed)."""
