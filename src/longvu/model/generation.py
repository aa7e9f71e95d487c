"""Decoding from input embeddings: options, stopping, cancellation, streaming (model glue).

transformers' ``generate`` does the decoding.  This module adds what LongVU needs
around it: the reference's keyword stop (the template's end-of-turn string), a stop
when the caller cancels, the first step's logits only when an observer asks for them,
and a background thread whose token ids a consumer reads as they come, with errors
and cancellation crossing back to the consumer.
"""

from __future__ import annotations

import copy
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ContextOverflowError

if TYPE_CHECKING:  # imported where decoding runs: the CLI checks its options before torch is needed
    # lazy: torch only on this path (the module imports without it)
    import torch


@dataclass
class GenerationOptions:
    """How to decode.  ``None`` fields keep the checkpoint's ``generation_config.json``.

    Attributes:
        max_new_tokens: answer length at most; capped so that prompt plus answer fit
            the LLM's positions.
        greedy: greedy decoding (the checkpoint's repetition penalty still applies, as
            in the reference).
        temperature, top_p, top_k: sampling settings (temperature 0 means greedy).
        seed: seed torch's generator before sampling, for a repeatable answer.
    """

    max_new_tokens: int = 512
    greedy: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for transformers' ``generate`` (beside the generation config)."""
        if self.greedy or self.temperature == 0:
            # transformers fills unset (None) fields from the checkpoint's config (temperature 0.7, ...) and
            # then warns that greedy decoding ignores them; its neutral values keep stderr quiet.  Sampling
            # warpers only run when do_sample is on, so greedy decoding is unchanged.
            return {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
        kw: dict[str, Any] = {}
        if self.temperature is not None:
            kw.update(temperature=self.temperature, do_sample=True)
        for name in ("top_p", "top_k"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw


@dataclass
class Generated:
    """Generated token ids (the new ones only), why decoding stopped, and the length cap used."""

    ids: list[int]
    stopped_by: str  # "eos_or_stop_str" | "max_new_tokens" | "cancelled"
    max_new_tokens: int


def answer_room(sequence_length: int, requested: int, max_positions: int) -> int:
    """``requested`` capped so that the prompt plus the answer fit the LLM's positions."""
    room = max_positions - sequence_length
    if room < 1:
        raise ContextOverflowError(sequence_length, max_positions, 1, 0)
    return min(requested, room)


class _StopOnSequence:
    """Stop when the generated ids end with ``stop_ids`` (the reference's keyword stop)."""

    def __init__(self, stop_ids: list[int]) -> None:
        self.ids = list(stop_ids)
        self.stop_ids: torch.Tensor | None = None  # made on the generating device at the first step

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        # lazy: torch only on this path (the module imports without it)
        import torch

        n = len(self.ids)
        if not n or input_ids.shape[1] < n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.stop_ids is None or self.stop_ids.device != input_ids.device:
            self.stop_ids = torch.tensor(self.ids, dtype=torch.long, device=input_ids.device)
        return (input_ids[:, -n:] == self.stop_ids).all(dim=1)


class _StopOnEvent:
    """Stop as soon as ``event`` is set (the caller cancelled)."""

    def __init__(self, event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        # lazy: torch only on this path (the module imports without it)
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _IdStreamer:
    """A transformers streamer that hands each new token id list to ``on_ids``."""

    def __init__(self, on_ids: Callable[[list[int]], None]) -> None:
        self.on_ids = on_ids

    def put(self, value: torch.Tensor) -> None:
        ids = value.reshape(-1).tolist()
        if ids:
            self.on_ids(ids)

    def end(self) -> None:
        pass


def generate_ids(
    model, embeds: torch.Tensor, opts: GenerationOptions, *, stop_ids: list[int], max_new_tokens: int,
    on_ids: Callable[[list[int]], None] | None = None, cancel=None, observer=None,
) -> Generated:  # fmt: skip
    """Decode from ``[1, L, H]`` embeddings with the checkpoint's generation config.

    Args:
        model: a loaded :class:`longvu.loading.load.LongVUModel`.
        stop_ids: the end-of-turn string's ids; generation stops after them (and at EOS).
        on_ids: called with each new token's ids as they are generated.
        cancel: an object with ``is_set()``; generation stops at the next token once set.
        observer: an :class:`~longvu.model.observe.Observer`; if it ``needs_step0_logits``, the
            first step's logits are kept for it (otherwise no logits are kept).
    """
    # lazy: torch only on this path (the module imports without it)
    import torch

    # lazy: transformers only on this path (the module imports without it)
    from transformers import StoppingCriteriaList

    gen = copy.deepcopy(model.generation_config)
    gen.update(max_new_tokens=max_new_tokens, use_cache=True, return_dict_in_generate=True,
               output_logits=bool(observer is not None and observer.needs_step0_logits), pad_token_id=_pad_id(gen),
               **opts.generate_kwargs())  # fmt: skip
    criteria = [_StopOnSequence(stop_ids)] + ([_StopOnEvent(cancel)] if cancel is not None else [])
    if opts.seed is not None:
        torch.manual_seed(opts.seed)
    with warnings.catch_warnings():
        # Generating from embeddings, the repetition penalty sees only new tokens: that is
        # exactly the reference's behaviour, so transformers' warning about it is noise.
        warnings.filterwarnings("ignore", message=".*repetition_penalty.*inputs_embeds.*")
        out = model.llm.generate(
            inputs_embeds=embeds, generation_config=gen, stopping_criteria=StoppingCriteriaList(criteria),
            streamer=_IdStreamer(on_ids) if on_ids is not None else None,
        )  # fmt: skip
    ids = out.sequences[0].tolist()
    if gen.output_logits and out.logits:
        observer.on_step0_logits(logits=out.logits[0][0])
    return Generated(ids, _stop_reason(ids, gen, stop_ids, cancel), max_new_tokens)


def _pad_id(gen) -> int | None:
    if gen.pad_token_id is not None:
        return gen.pad_token_id
    eos = gen.eos_token_id
    return eos[0] if isinstance(eos, list) else eos


def _stop_reason(ids: list[int], gen, stop_ids: list[int], cancel) -> str:
    eos = gen.eos_token_id
    eos_set = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if ids and (ids[-1] in eos_set or (stop_ids and ids[-len(stop_ids) :] == stop_ids)):
        return "eos_or_stop_str"
    if cancel is not None and cancel.is_set():
        return "cancelled"
    return "max_new_tokens"


class TokenThread:
    """Runs ``work(on_ids, cancel)`` on a thread; iterate to get the token ids it produces.

    The consumer sees the worker's exception, re-raised, once the ids before it are read.
    Leaving the iteration early (``break``, an exception, Ctrl-C in the consumer) sets
    the cancel event and joins the thread, so nothing keeps generating unseen.
    """

    _END = object()

    def __init__(self, work: Callable, cancel=None) -> None:
        self.cancel = _AnyEvent(cancel)
        self.items: queue.Queue = queue.Queue()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True, name="longvu-generate")

    def _run(self, work: Callable) -> None:
        try:
            self.result = work(self.items.put, self.cancel)
        except BaseException as e:  # handed to the consumer
            self.error = e
        finally:
            self.items.put(self._END)

    def __iter__(self) -> Iterator[list[int]]:
        self.thread.start()
        finished = False
        try:
            while (item := self.items.get()) is not self._END:
                yield item
            finished = True
        finally:
            if not finished:
                self.cancel.set()
            self.thread.join()
        if self.error is not None:
            raise self.error


class _AnyEvent:
    """An event set by us (the consumer left) or by the caller's own ``cancel``."""

    def __init__(self, outer=None) -> None:
        self.own = threading.Event()
        self.outer = outer

    def set(self) -> None:
        self.own.set()

    def is_set(self) -> bool:
        return self.own.is_set() or (self.outer is not None and self.outer.is_set())
