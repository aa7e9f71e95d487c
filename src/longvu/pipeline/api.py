"""The LongVU pipeline: video + conversation -> answer, stage by stage (paper Fig. 2).

    frames (1 fps) -> DINOv2 -> stage 1 temporal reduction -> SigLIP on kept frames
    -> SVA connector (12x12 + 8x8 grids) -> stage 2 text-guided selection
    -> stage 3 spatial token compression -> splice into the prompt -> generate

:class:`LongVU` is the one object the CLI, the server, the eval harness and training
wrap.  Its public surface:

* :meth:`LongVU.features` - the question-independent encoding of a video (cached);
* :meth:`LongVU.generate` - answer a :class:`~longvu.model.prompt.Conversation` about encoded
  features (or a text-only one, ``features=None``), streaming, cancellable, under the
  context policy (:mod:`longvu.model.context`);
* :meth:`LongVU.ask`, :meth:`LongVU.ask_stream`, :meth:`LongVU.chat` - conveniences on
  top of those two; :meth:`LongVU.teacher_forced` - score a given answer.

Nothing here is instrumented: pass an :class:`~longvu.model.observe.Observer` to see the
intermediate tensors (``arrays=True`` attaches the parity observer).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import __version__
from ..config import LongVUConfig, check_overrides, feature_fields, runtime_fields
from ..loading.adapter import apply_adapter
from ..loading.load import DEFAULT_MODEL, LoadOptions, LongVUModel, load_model
from ..model.compose import Decisions, compose
from ..model.context import prompt_ids, tokenize
from ..model.encode import ProgressCallback, VisualFeatures, encode_video
from ..model.generation import Generated, GenerationOptions, TokenThread, answer_room, generate_ids
from ..model.intake import HeldFile, MediaLimits, VideoSource, probe_video, source_name
from ..model.observe import Observer, ParityObserver
from ..model.prompt import DESCRIBE_PROMPT, Conversation, reserved_markers
from ..model.video import Sampling, VideoClip
from .cache import FeatureCache
from .live import LiveSession
from .trace import Trace

Video = str | os.PathLike | VideoClip | VisualFeatures  # None where a method takes it: a text-only question

__all__ = ["DESCRIBE_PROMPT", "Answer", "AnswerStream", "ChatSession", "Forced", "GenerationOptions", "LongVU"]


@dataclass
class Answer:
    """A finished answer: its text, the generated token ids, and the compression trace."""

    text: str
    token_ids: list[int]
    trace: Trace

    @property
    def arrays(self) -> dict:
        """Parity arrays (``--trace-arrays``); empty unless a parity observer ran."""
        return self.trace.arrays


@dataclass
class Forced:
    """A given answer scored token by token (teacher forcing), as V-NIAH and log-likelihood tasks need.

    Attributes:
        target_ids: the answer's token ids.
        greedy_ids: the model's greedy choice at each of the answer's positions.
        logprobs: log-probability of each answer token.
        decisions: what the compression stages kept for this prompt (None: a text-only prompt).
    """

    target_ids: list[int]
    greedy_ids: list[int]
    logprobs: list[float]
    decisions: Decisions | None

    @property
    def exact_match(self) -> bool:
        return self.greedy_ids == self.target_ids

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


class LongVU:
    """Answer questions about videos with a LongVU checkpoint.

    >>> lv = LongVU.from_pretrained("path/to/LongVU_Qwen2_7B")  # doctest: +SKIP
    >>> lv.ask("video.mp4", "What happens?").text  # doctest: +SKIP
    """

    def __init__(self, model: LongVUModel, cache: FeatureCache | None = None, progress: bool = False) -> None:
        self.model = model
        self.cache = cache
        self.progress = progress
        self._markers = reserved_markers(model.tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        siglip: str | None = None,
        dinov2: str | None = None,
        overrides: dict[str, Any] | None = None,
        cache: bool | str | os.PathLike | FeatureCache = True,
        progress: bool = False,
        quantize: str | None = None,
        options: LoadOptions | None = None,
        adapter: str | os.PathLike | None = None,
    ) -> LongVU:
        """Load a checkpoint folder or hub id.

        Args:
            overrides: config fields to change, like ``--set``.
            quantize: ``"int8"``, ``"nf4"`` or ``"int4"`` for the decoder (``--quantize``);
                shorthand for ``options=LoadOptions(quantize=...)``.
            options: placement and quantization (:class:`longvu.loading.load.LoadOptions`).
            cache: ``True`` for the default feature cache (``$LONGVU_CACHE_DIR`` or
                ``~/.cache/longvu``), a folder, a :class:`FeatureCache`, or ``False``.
            progress: show a progress bar on stderr while encoding videos.
            adapter: a folder written by ``longvu train`` (LoRA and/or trained connector), applied on
                load; one made for another base is a :class:`~longvu.errors.CheckpointError`.
        """
        if quantize is not None:
            options = dataclasses.replace(options or LoadOptions(), quantize=quantize)
        m = load_model(model, device=device, dtype=dtype, siglip=siglip, dinov2=dinov2, overrides=overrides,
                       options=options)  # fmt: skip
        if adapter is not None:
            apply_adapter(m, adapter)
        if cache is True:
            fc = FeatureCache()
        elif cache is False or cache is None:
            fc = None
        else:
            fc = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        return cls(m, fc, progress)

    def with_overrides(self, overrides: dict[str, Any]) -> LongVU:
        """A view of this model with run-time config fields changed, sharing the loaded weights.

        For settings such as a benchmark's thresholds (``drop_threshold``, ``dino_threshold``) or
        ``fix_unpad_orientation``: the view answers as a fresh load with the same ``overrides``
        would.  Its model is a shallow copy holding the new config, which every stage reads (no
        part keeps a copy of it); the feature cache keys on the settings that change features, so
        a view and a load with other settings never read each other's.

        Raises :class:`~longvu.errors.ConfigError` for what ``--set`` refuses: an architecture
        field, an unknown field, a value of the wrong type or out of range.
        """
        checked = check_overrides(overrides, source="with_overrides")
        if not checked:
            return self
        model = dataclasses.replace(self.model, cfg=self.model.cfg.with_overrides(checked))
        return LongVU(model, self.cache, self.progress)

    @property
    def config(self) -> LongVUConfig:
        return self.model.cfg

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (a transformers tokenizer)."""
        return self.model.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ------------------------------------------------------------ conversations
    def conversation(
        self, system: str | None = None, turns: Sequence[tuple[str, str]] = (), *, video: bool = True
    ) -> Conversation:
        """A conversation in this model's chat template (``system`` None: the template's default).

        ``video=False``: a text-only conversation (no video placeholder), for ``features=None``.
        """
        conv = Conversation(self.model.template, turns=list(turns), video=video)
        if system is not None:
            conv.system = system
        return conv

    def prompt_ids(self, conversation: Conversation, cancel=None) -> tuple[list[int], int]:
        """Token ids of the prompt under the context policy, and the earlier messages it dropped.

        Raises :class:`~longvu.errors.PromptError` for a message holding a reserved marker and
        :class:`~longvu.errors.ContextOverflowError` for a prompt that cannot fit.
        """
        return prompt_ids(conversation, self.model.tokenizer, self.model.cfg, self._markers, cancel=cancel)

    def _tokenize(self, conversation: Conversation) -> list[int]:
        """The prompt's token ids as the reference builds them (no context policy)."""
        return tokenize(conversation, self.model.tokenizer, self.model.cfg)

    # ------------------------------------------------------------------ features
    def features(
        self, video: VideoSource | VideoClip, sampling: Sampling | None = None, *, cancel=None,
        observer: Observer | None = None, limits: MediaLimits | None = None,
        progress: ProgressCallback | None = None,
    ) -> VisualFeatures:  # fmt: skip
        """The question-independent encoding of ``video``, from the feature cache when possible.

        Args:
            cancel: an object with ``is_set()`` (e.g. ``threading.Event``); encoding stops
                with :class:`~longvu.errors.Cancelled` soon after it is set.
            observer: sees the encoder's tensors; one that ``needs_encoder`` bypasses the cache.
            limits: bounds on duration, frames and frame size (a server's), enforced while
                decoding, and for a cached video on what its decoding found.
            progress: called as ``progress(stage, done, total)`` while a video is encoded
                (:data:`~longvu.model.encode.ProgressCallback`); not called for a cached video.
        """
        sampling = sampling or Sampling()
        feats = self._cached_features(video, sampling, cancel, observer, limits, progress)
        feats.sampling = None if isinstance(video, VideoClip) else sampling
        return feats

    def _cached_features(self, video, sampling: Sampling, cancel, observer, limits, progress=None) -> VisualFeatures:
        use_cache = self.cache is not None and not isinstance(video, VideoClip)
        if not use_cache or (observer is not None and observer.needs_encoder):
            return self._encode(video, sampling, cancel, observer, limits, progress)
        t0 = time.perf_counter()
        probe_video(video, limits)
        key = self._cache_key(video, sampling)
        hit = self.cache.get(key, video=video)
        if hit is not None:
            _check_cached(hit, limits, source_name(video))
            hit.timings = {"cache_hit": 1.0, "cache_read": time.perf_counter() - t0}
            return hit
        feats = self._encode(video, sampling, cancel, observer, limits, progress)
        self.cache.put(key, feats, video=video.name if isinstance(video, HeldFile) else os.path.realpath(video))
        return feats

    def _encode(self, video, sampling: Sampling, cancel, observer, limits=None, progress=None) -> VisualFeatures:
        return encode_video(self.model, video, sampling, keep_all_below=self._keep_all_below(), cancel=cancel,
                            observer=observer, progress=progress or self.progress, limits=limits)  # fmt: skip

    def _keep_all_below(self) -> int:
        """An upper bound of ``max_frames_dino`` over all prompts (text length 0)."""
        return self.model.cfg.frame_budget()

    def _cache_key(self, video: str | os.PathLike, sampling: Sampling) -> str:
        cfg, m = self.model.cfg, self.model
        return FeatureCache.make_key(
            video=self.cache.video_digest(video), sampling=dataclasses.asdict(sampling),
            config={k: getattr(cfg, k) for k in feature_fields()},
            keep_all_below=self._keep_all_below(), weights=m.fingerprint(), dtype=str(m.dtype), device=m.device.type,
        )  # fmt: skip

    # ------------------------------------------------------------------ answers
    def generate(
        self, features: VisualFeatures | None, conversation: Conversation, *,
        generation: GenerationOptions | None = None, cancel=None, observer: Observer | None = None,
    ) -> AnswerStream:  # fmt: skip
        """Answer the conversation's last user turn about encoded ``features``.

        The prompt is fitted (context policy) and the compression stages run now, so a
        prompt that cannot fit raises here; iterate the result for text pieces as they
        are generated, then read ``.answer``.

        Args:
            features: the video's encoding; None for a text-only question, whose
                conversation is made with ``video=False`` (the prompt's text alone goes to the LLM).
            generation: decoding options (default: the checkpoint's sampling, 512 tokens).
            cancel: an object with ``is_set()``; generation stops at the next token once set.
            observer: sees the intermediate tensors (:mod:`longvu.model.observe`).
        """
        _check_video(features, conversation)
        return AnswerStream(self, features, conversation, generation or GenerationOptions(), cancel, observer)

    def ask(self, video: Video | None, question: str, **kw) -> Answer:
        """Answer ``question`` about ``video`` (None: a text-only question; keywords as :meth:`ask_stream`)."""
        stream = self.ask_stream(video, question, **kw)
        for _ in stream:
            pass
        return stream.answer

    def ask_stream(
        self, video: Video | None, question: str, *, sampling: Sampling | None = None,
        generation: GenerationOptions | None = None, arrays: bool = False, observer: Observer | None = None,
        cancel=None,
    ) -> AnswerStream:  # fmt: skip
        """Like :meth:`ask` but iterate to get text pieces as they are generated.

        The video is encoded (or read from the cache) when this is called; the full
        :class:`Answer` is on ``.answer`` once iteration ends.  ``arrays=True`` attaches
        a :class:`~longvu.model.observe.ParityObserver` (the parity checksums and arrays).
        """
        if arrays and observer is None:
            observer = ParityObserver(arrays=True)
        feats = video
        if video is not None and not isinstance(video, VisualFeatures):
            feats = self.features(video, sampling, cancel=cancel, observer=observer)
        conv = self.conversation(video=feats is not None)
        conv.add_user(question)
        return self.generate(feats, conv, generation=generation, cancel=cancel, observer=observer)

    def describe(self, video: Video, **kw) -> Answer:
        return self.ask(video, DESCRIBE_PROMPT, **kw)

    def chat(self, video: Video | None, *, sampling: Sampling | None = None, system: str | None = None) -> ChatSession:
        """A multi-turn conversation about one video (None: a text-only chat); the video is encoded once."""
        feats = video if video is None or isinstance(video, VisualFeatures) else self.features(video, sampling)
        return ChatSession(self, feats, self.conversation(system, video=feats is not None))

    def watch(self, source, *, sampling: Sampling | None = None, horizon_s: float | None = None, **kw) -> LiveSession:
        """Follow a video still being written (a growing file or a stream) and answer over what is seen so far.

        Returns a :class:`~longvu.pipeline.live.LiveSession` (a context manager); keywords as its constructor.
        """
        return LiveSession(self, source, sampling=sampling, horizon_s=horizon_s, **kw)

    @torch.inference_mode()
    def teacher_forced(self, features: VisualFeatures | None, conversation: Conversation, answer: str) -> Forced:
        """Score ``answer`` as the reply to the conversation's last user turn (no sampling).

        ``features`` None: a text-only question (a conversation made with ``video=False``).
        """
        _check_video(features, conversation)
        m = self.model
        ids, _ = self.prompt_ids(conversation)
        target = m.tokenizer(answer, add_special_tokens=False).input_ids
        if not target:
            raise ValueError("the answer to score is empty")
        comp = compose(m, features, ids)
        full = torch.cat([comp.embeds, m.embed(target).unsqueeze(0).to(comp.embeds.dtype)], dim=1)
        logits = m.llm(inputs_embeds=full, logits_to_keep=len(target) + 1).logits[0, :-1].float()  # [n, V]
        logp = torch.log_softmax(logits, dim=-1)
        tgt = torch.tensor(target, device=logp.device)
        return Forced(target, logits.argmax(-1).tolist(), logp.gather(1, tgt[:, None])[:, 0].tolist(), comp.decisions)


class AnswerStream:
    """Iterator over answer text pieces; ``.answer`` holds the full :class:`Answer` at the end.

    Made by :meth:`LongVU.generate`: the prompt and the compression stages are done when
    it is made; generation runs on a thread while the pieces are read.  Leaving the loop
    early (``break``, Ctrl-C) stops and joins the generation.
    """

    def __init__(self, lv: LongVU, feats: VisualFeatures | None, conv: Conversation, opts: GenerationOptions, cancel,
                 observer: Observer | None, on_done: Callable[[Answer], None] | None = None) -> None:  # fmt: skip
        self.lv, self.feats, self.conv, self.opts = lv, feats, conv, opts
        self.cancel, self.observer, self.on_done = cancel, observer, on_done
        self.answer: Answer | None = None
        t0 = time.perf_counter()
        self.ids, self.dropped = lv.prompt_ids(conv, cancel=cancel)
        with torch.inference_mode():
            comp = compose(lv.model, feats, self.ids, observer=observer)
        self.embeds, self.decisions = comp.embeds, comp.decisions  # decisions: None for a text-only prompt
        self.max_new_tokens = answer_room(self.embeds.shape[1], opts.max_new_tokens, lv.model.max_positions)
        self.compose_s = time.perf_counter() - t0

    def _work(self, on_ids, cancel) -> Generated:
        m = self.lv.model
        stop_ids = m.tokenizer(self.conv.stop_str, add_special_tokens=False).input_ids
        with torch.inference_mode():
            return generate_ids(m, self.embeds, self.opts, stop_ids=stop_ids, max_new_tokens=self.max_new_tokens,
                                on_ids=on_ids, cancel=cancel, observer=self.observer)  # fmt: skip

    def __iter__(self) -> Iterator[str]:
        tok = self.lv.model.tokenizer
        t1 = time.perf_counter()
        worker = TokenThread(self._work, self.cancel)
        detok = _Detokenizer(tok)
        for ids in worker:
            piece = detok.add(ids)
            if piece:
                yield piece
        self.embeds = None  # the LLM input is no longer needed
        gen: Generated = worker.result
        text = tok.batch_decode([gen.ids], skip_special_tokens=True)[0].strip()
        shown = detok.text.strip()
        if len(text) > len(shown) and text.startswith(shown):
            yield text[len(shown) :]
        self.answer = self._finish(gen, text, time.perf_counter() - t1)

    def _finish(self, gen: Generated, text: str, generate_s: float) -> Answer:
        cfg = self.lv.model.cfg
        if self.feats is None:
            trace = Trace.from_text(self.ids, cfg, dropped_turns=self.dropped)
        else:
            trace = Trace.from_decisions(self.decisions, self.feats, cfg, dropped_turns=self.dropped)
        trace.record_generation(gen.ids, text, gen.stopped_by, gen.max_new_tokens)
        trace.data["run"] = self._run_record()
        encode = self.feats.timings if self.feats is not None else {}
        trace.data["timings"] = {
            **{f"encode_{k}": round(v, 4) for k, v in encode.items()},
            "compose": round(self.compose_s, 4),
            "generate": round(generate_s, 4),
        }
        answer = Answer(text=text, token_ids=gen.ids, trace=trace)
        if self.observer is not None:
            self.observer.on_answer(answer)
        if self.on_done is not None:
            self.on_done(answer)
        return answer

    def _run_record(self) -> dict:
        """What produced this answer: the question, model, settings, version, and whether the cache answered."""

        m, feats = self.lv.model, self.feats
        users = [text for role, text in self.conv.turns if role == "user"]
        sampling = feats.sampling if feats is not None else None
        return {
            "question": users[-1] if users else None,
            "model": str(m.folder),
            "version": __version__,
            "device": m.device.type,
            "dtype": str(m.dtype).removeprefix("torch."),
            "quantize": m.options.quantize,
            "from_cache": feats.from_cache if feats is not None else False,
            "sampling": dataclasses.asdict(sampling) if sampling is not None else None,
            "generation": dataclasses.asdict(self.opts),
            "config": {k: getattr(m.cfg, k) for k in runtime_fields()},
        }


class _Detokenizer:
    """Text of a growing id list, piece by piece, decoding only a short tail each time.

    Decoding everything per token would cost O(n^2) for long answers.  A piece is held
    back while it ends in an incomplete multi-byte character.
    """

    def __init__(self, tokenizer) -> None:
        self.tok, self.ids, self.text = tokenizer, [], ""
        self.prefix = self.read = 0  # ids[prefix:read] produced the tail of text already shown

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        before = self.tok.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        now = self.tok.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(now) <= len(before) or now.endswith("\ufffd") or not now.startswith(before):
            return ""
        piece = now[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += piece
        return piece


class ChatSession:
    """A conversation about one video: each turn re-runs the question-dependent stages
    (budgets, selection, STC) on the same encoded video, with the chat history in the
    prompt (oldest turns dropped first when it would crowd out the video)."""

    def __init__(self, lv: LongVU, feats: VisualFeatures | None, conversation: Conversation | None = None) -> None:
        self.lv = lv
        self.features = feats
        self.conversation = conversation or lv.conversation()

    @property
    def history(self) -> list[tuple[str, str]]:
        return list(self.conversation.turns)

    def ask_stream(self, question: str, generation: GenerationOptions | None = None, *, cancel=None) -> AnswerStream:
        """A streamed answer; the turn joins the history only once its answer is complete (an answer
        cancelled through ``cancel`` is complete at the point where it stopped)."""
        conv = self.conversation.copy()
        conv.add_user(question)

        def done(answer: Answer) -> None:
            self.conversation.add_user(question)
            self.conversation.add_assistant(answer.text)

        stream = self.lv.generate(self.features, conv, generation=generation, cancel=cancel)
        stream.on_done = done
        return stream

    def ask(self, question: str, generation: GenerationOptions | None = None, *, cancel=None) -> Answer:
        """The whole answer (see :meth:`ask_stream`).  ``cancel``, an object with ``is_set()``, ends it
        early: the answer so far is returned, with ``stopped_by`` "cancelled" in its trace."""
        stream = self.ask_stream(question, generation, cancel=cancel)
        for _ in stream:
            pass
        return stream.answer

    def reset(self) -> None:
        self.conversation.turns.clear()


def _check_video(features: VisualFeatures | None, conversation: Conversation) -> None:
    """A text-only conversation goes with no features, one about a video with its features."""
    if features is None and conversation.video:
        raise ValueError("no video features for a conversation about a video; for a text-only question make the "
                         "conversation with LongVU.conversation(video=False)")  # fmt: skip
    if features is not None and not conversation.video:
        raise ValueError("video features for a text-only conversation (video=False); pass features=None")


def _check_cached(feats: VisualFeatures, limits: MediaLimits | None, path: str) -> None:
    """``limits`` against what decoding found when the cached features were made (frames, their size)."""
    if limits is None:
        return
    h, w = feats.frame_hw
    limits.check_size(w, h, path)
    seconds = feats.num_frames_total / feats.avg_fps if feats.avg_fps > 0 else 0.0
    limits.check_progress(feats.num_frames_total, seconds, path)
