"""The context policy: every prompt fits, and the newest question is never cut.

The reference reserves ``inference_max_length`` tokens of the context
``tokenizer_model_max_length`` for the answer and gives the video whatever the text
leaves.  A long chat would leave the video nothing, and the reference would then cut
the sequence's tail: the newest question.  Here instead:

* the smallest prompt that could be sent (system prompt + newest question) must leave
  the video at least ``min_visual_tokens`` tokens, or :class:`ContextOverflowError`
  says so with the numbers;
* earlier turns are dropped, oldest first, until they take at most
  ``max_history_share`` of the room the video would have without them (and the video
  keeps its ``min_visual_tokens``); the trace records how many were dropped;
* the answer's length is capped so that prompt plus answer fit the LLM's positions
  (:func:`longvu.generation.answer_room`).

A single question that fits is never changed, so the reference's prompts (and the
parity goldens) are untouched.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import LongVUConfig
from .errors import ContextOverflowError
from .prompt import IMAGE_TOKEN_INDEX, Conversation


def text_tokens(ids: list[int]) -> int:
    """Text tokens of a prompt (the video placeholder is not text)."""
    return sum(1 for t in ids if t != IMAGE_TOKEN_INDEX)


def visual_room(ids: list[int], cfg: LongVUConfig) -> int:
    """Visual tokens a prompt leaves (the reference's ``max_visual_len``)."""
    return cfg.tokenizer_model_max_length - cfg.inference_max_length - text_tokens(ids)


def fit_prompt(
    conv: Conversation, tokenize: Callable[[Conversation], list[int]], cfg: LongVUConfig
) -> tuple[list[int], int]:
    """Token ids of ``conv``'s prompt under the policy, and how many earlier messages were dropped.

    Args:
        conv: the conversation, ending with the user's newest question.
        tokenize: renders and tokenises a conversation (placeholder included).
    Raises:
        ContextOverflowError: the system prompt and the newest question alone leave the
            video fewer than ``cfg.min_visual_tokens`` tokens.
    """
    base = tokenize(conv.newest())
    room = visual_room(base, cfg)
    if room < cfg.min_visual_tokens:
        raise ContextOverflowError(
            text_tokens(base), cfg.tokenizer_model_max_length, cfg.inference_max_length, cfg.min_visual_tokens
        )
    dropped = 0
    while True:
        ids = tokenize(conv)
        history = text_tokens(ids) - text_tokens(base)
        if history <= cfg.max_history_share * room and visual_room(ids, cfg) >= cfg.min_visual_tokens:
            return ids, dropped
        before = len(conv.turns)
        conv = conv.without_oldest_exchange()
        dropped += before - len(conv.turns)
