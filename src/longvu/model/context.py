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
  (:func:`longvu.model.generation.answer_room`).

A single question that fits is never changed, so the reference's prompts (and the
parity goldens) are untouched.

A text-only prompt (no video placeholder: ``Conversation(video=False)``) has no video to
protect: it must fit beside the answer's reserve, and earlier turns are dropped, oldest
first, only when they would not.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import LongVUConfig
from ..errors import ContextOverflowError
from .prompt import IMAGE_TOKEN_INDEX, Conversation, check_message, reserved_markers, tokenize_with_image


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
            video fewer than ``cfg.min_visual_tokens`` tokens (a text-only prompt: do not
            fit beside the answer's reserve).
    """
    base = tokenize(conv.newest())
    video = IMAGE_TOKEN_INDEX in base
    min_visual = cfg.min_visual_tokens if video else 0
    share = cfg.max_history_share if video else 1.0  # no video: history may take all the room
    room = visual_room(base, cfg)
    if room < min_visual:
        raise ContextOverflowError(text_tokens(base), cfg.tokenizer_model_max_length, cfg.inference_max_length,
                                   min_visual)  # fmt: skip
    dropped = 0
    while True:
        ids = tokenize(conv)
        history = text_tokens(ids) - text_tokens(base)
        if history <= share * room and visual_room(ids, cfg) >= min_visual:
            return ids, dropped
        before = len(conv.turns)
        conv = conv.without_oldest_exchange()
        dropped += before - len(conv.turns)


def chat_template(cfg: LongVUConfig) -> str:
    """The chat template of the checkpoint's LLM: ``"llama3"`` or ``"qwen"``."""
    return "llama3" if cfg.is_llama else "qwen"


def tokenize(conversation: Conversation, tokenizer, cfg: LongVUConfig) -> list[int]:
    """The prompt's token ids as the reference builds them (no context policy)."""
    return tokenize_with_image(conversation.render(tokenizer), tokenizer, drop_first=cfg.is_llama)


def prompt_ids(
    conversation: Conversation, tokenizer, cfg: LongVUConfig, markers: list[str] | None = None
) -> tuple[list[int], int]:
    """Token ids of the prompt under the policy, and the earlier messages it dropped.

    Needs only the tokenizer and the config, so the CLI checks a question with it before the
    model loads (:func:`check_question`); :meth:`longvu.LongVU.prompt_ids` is this function.

    Raises:
        PromptError: a message holds a reserved marker (``markers``, default
            :func:`~longvu.model.prompt.reserved_markers` of ``tokenizer``).
        ContextOverflowError: the prompt cannot fit (:func:`fit_prompt`).
    """
    markers = reserved_markers(tokenizer) if markers is None else markers
    check_message(conversation.system, markers, "the system prompt")
    for i, (role, text) in enumerate(conversation.turns):
        check_message(text, markers, f"message {i + 1} ({role})")
    return fit_prompt(conversation, lambda conv: tokenize(conv, tokenizer, cfg), cfg)


def check_question(question: str, tokenizer, cfg: LongVUConfig) -> None:
    """Raise what :func:`prompt_ids` raises for a one-question conversation (the default system prompt)."""
    conv = Conversation(chat_template(cfg))
    conv.add_user(question)
    prompt_ids(conv, tokenizer, cfg)
