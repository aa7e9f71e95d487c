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
from dataclasses import replace

from ..config import LongVUConfig
from ..errors import Cancelled, ContextOverflowError
from .prompt import IMAGE_TOKEN_INDEX, Conversation, check_message, reserved_markers, tokenize_with_image


def text_tokens(ids: list[int]) -> int:
    """Text tokens of a prompt (the video placeholder is not text)."""
    return sum(1 for t in ids if t != IMAGE_TOKEN_INDEX)


def visual_room(ids: list[int], cfg: LongVUConfig) -> int:
    """Visual tokens a prompt leaves (the reference's ``max_visual_len``)."""
    return cfg.tokenizer_model_max_length - cfg.inference_max_length - text_tokens(ids)


def fit_prompt(
    conv: Conversation,
    tokenize: Callable[[Conversation], list[int]],
    cfg: LongVUConfig,
    *,
    count: Callable[[list[str]], list[int]] | None = None,
    cancel=None,
) -> tuple[list[int], int]:
    """Token ids of ``conv``'s prompt under the policy, and how many earlier messages were dropped.

    Drops the fewest oldest exchanges that make the prompt fit.  A prompt that fits costs two
    tokenizations (the newest question alone, then the whole prompt).  One that does not is
    cut without re-tokenizing after each drop: every turn is counted once (``count``, one
    batch), the counts say where the cut should fall, and a few whole-prompt tokenizations
    around that point (a binary search where the estimate is off) find the exact one.  The
    cost grows with the text's length, not with its length times the number of turns.

    Args:
        conv: the conversation, ending with the user's newest question.
        tokenize: renders and tokenises a conversation (placeholder included).
        count: token counts of texts (one batch); None: their lengths in characters (a rougher guide).
        cancel: a ``threading.Event``; set, the fitting stops with :class:`~longvu.errors.Cancelled`.
    Raises:
        ContextOverflowError: the system prompt and the newest question alone leave the
            video fewer than ``cfg.min_visual_tokens`` tokens (a text-only prompt: do not
            fit beside the answer's reserve).
    """
    base = _checked(tokenize, conv.newest(), cancel)
    video = IMAGE_TOKEN_INDEX in base
    min_visual = cfg.min_visual_tokens if video else 0
    share = cfg.max_history_share if video else 1.0  # no video: history may take all the room
    room = visual_room(base, cfg)
    if room < min_visual:
        raise ContextOverflowError(text_tokens(base), cfg.tokenizer_model_max_length, cfg.inference_max_length,
                                   min_visual)  # fmt: skip

    def fits(history: int) -> bool:
        return history <= share * room and room - history >= min_visual

    ids = _checked(tokenize, conv, cancel)
    full_history = text_tokens(ids) - text_tokens(base)
    if fits(full_history):
        return ids, 0
    starts = _exchange_starts(conv.turns)  # cut k keeps conv.turns[starts[k]:]; the last cut keeps the question
    weights = _exchange_weights(conv.turns, starts, count or (lambda texts: [len(t) for t in texts]), cancel)
    scale = full_history / max(1, sum(weights))
    dropped_estimate, k = 0.0, len(starts) - 1
    for i, w in enumerate(weights):  # the first cut the counts say fits
        if fits(round(full_history - dropped_estimate)):
            k = i
            break
        dropped_estimate += w * scale
    tried: dict[int, list[int]] = {0: ids}

    def kept(i: int) -> list[int]:
        if i not in tried:
            tried[i] = _checked(tokenize, replace(conv, turns=conv.turns[starts[i] :]), cancel)
        return tried[i]

    def fits_cut(i: int) -> bool:
        return fits(text_tokens(kept(i)) - text_tokens(base))

    lo, hi = 0, len(starts) - 1  # cut 0 does not fit; the last (the question alone) does
    if fits_cut(k):
        hi = k
        lo = max(lo, k - 1) if k > 0 and not fits_cut(k - 1) else lo
    else:
        lo = k
    while hi - lo > 1:  # the estimate was off: binary search (fitting only grows with the cut)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_cut(mid) else (mid, hi)
    return kept(hi), starts[hi]


def _checked(tokenize: Callable[[Conversation], list[int]], conv: Conversation, cancel) -> list[int]:
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    return tokenize(conv)


def _exchange_starts(turns: list[tuple[str, str]]) -> list[int]:
    """Where each cut starts the kept turns: 0, then every user turn after the first (the last: the question)."""
    return [0] + [i for i, (role, _) in enumerate(turns) if role == "user" and i > 0]


def _exchange_weights(turns: list[tuple[str, str]], starts: list[int], count, cancel) -> list[int]:
    """The counted size of each exchange a cut drops (``starts[k]`` to ``starts[k + 1]``), every turn counted once."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    per_turn = count([text for _, text in turns])
    return [sum(per_turn[a:b]) + (b - a) for a, b in zip(starts, starts[1:], strict=False)]


def chat_template(cfg: LongVUConfig) -> str:
    """The chat template of the checkpoint's LLM: ``"llama3"`` or ``"qwen"``."""
    return "llama3" if cfg.is_llama else "qwen"


def tokenize(conversation: Conversation, tokenizer, cfg: LongVUConfig) -> list[int]:
    """The prompt's token ids as the reference builds them (no context policy)."""
    return tokenize_with_image(conversation.render(tokenizer), tokenizer, drop_first=cfg.is_llama)


def prompt_ids(
    conversation: Conversation, tokenizer, cfg: LongVUConfig, markers: list[str] | None = None, cancel=None
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
    return fit_prompt(conversation, lambda conv: tokenize(conv, tokenizer, cfg), cfg,
                      count=lambda texts: token_counts(texts, tokenizer), cancel=cancel)  # fmt: skip


def token_counts(texts: list[str], tokenizer) -> list[int]:
    """Tokens of each text on its own, no special tokens (one batch call)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False).input_ids]


def check_question(question: str, tokenizer, cfg: LongVUConfig) -> None:
    """Raise what :func:`prompt_ids` raises for a one-question conversation (the default system prompt)."""
    conv = Conversation(chat_template(cfg))
    conv.add_user(question)
    prompt_ids(conv, tokenizer, cfg)
