"""The LongVU pipeline: video + question -> answer, stage by stage (paper Fig. 2).

    frames (1 fps) -> DINOv2 -> stage 1 temporal reduction -> SigLIP on kept frames
    -> SVA connector (12x12 + 8x8 grids) -> stage 2 text-guided selection
    -> stage 3 spatial token compression -> splice into the prompt -> generate

:class:`LongVU` is the one object the CLI, the server and the eval harness
wrap.  Every stage's decision is recorded in a :class:`Trace`.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .cache import FeatureCache
from .compress import compute_budget, select_frames, select_high_res, spatial_token_compression, use_mixed_resolution
from .config import LongVUConfig
from .encode import VisualFeatures, encode_video
from .model import DEFAULT_MODEL, LoadOptions, LongVUModel, load_model
from .prompt import IMAGE_TOKEN_INDEX, Conversation, tokenize_with_image
from .trace import Trace
from .video import Sampling, VideoClip, probe_video

DESCRIBE_PROMPT = "Describe this video in detail."


@dataclass
class GenerationOptions:
    """How to decode.  ``None`` fields keep the checkpoint's generation_config."""

    max_new_tokens: int = 512
    greedy: bool = False
    temperature: float | None = None
    top_p: float | None = None


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    trace: Trace
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def add_frame_pos(tokens: torch.Tensor, positions: list[int], *, fix: bool = False) -> torch.Tensor:
    """Add the reference's sinusoidal frame-position code to every token of each frame.

    ``omega_j = 10000^(-2*floor(j/2)/H)``, t = kept-frame position.  Even dims get
    ``sin(t*omega)``; odd dims get ``cos(sin(t*omega))`` in the reference
    (cambrian_arch.py ``get_frame_pos``: the cos is taken of values already
    replaced by sin), ``cos(t*omega)`` with ``fix=True``.

    Args:
        tokens: ``[N, T, H]``
        positions: N kept-frame positions
    """
    h = tokens.shape[-1]
    omega = torch.stack([1 / torch.pow(torch.tensor(10000), torch.tensor(2 * (j // 2) / h)) for j in range(h)])
    angle = omega.reshape(1, -1) * torch.tensor(positions).reshape(-1, 1)  # (N, H)
    pos = angle.clone()
    pos[:, 0::2] = torch.sin(angle[:, 0::2])
    pos[:, 1::2] = torch.cos(angle[:, 1::2]) if fix else torch.cos(pos[:, 0::2])
    return tokens + pos.unsqueeze(1).to(device=tokens.device, dtype=tokens.dtype)


class _StreamCollector:
    """A transformers streamer that forwards each new token id to a queue."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def put(self, value: torch.Tensor) -> None:
        ids = value.reshape(-1).tolist()
        if ids:
            self.queue.put(ids)

    def end(self) -> None:
        self.queue.put(None)


class _StopOnSequence:
    """Stop when the generated ids end with ``stop_ids`` (the reference's keyword stop)."""

    def __init__(self, stop_ids: list[int]) -> None:
        self.stop_ids = torch.tensor(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n = len(self.stop_ids)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if n and input_ids.shape[1] >= n:
            done = (input_ids[:, -n:] == self.stop_ids.to(input_ids.device)).all(dim=1)
        return done


class _StopOnEvent:
    """Stop generating as soon as ``event`` is set (a client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class LongVU:
    """Answer questions about videos with a LongVU checkpoint.

    >>> lv = LongVU.from_pretrained("path/to/LongVU_Qwen2_7B")  # doctest: +SKIP
    >>> lv.ask("video.mp4", "What happens?").text  # doctest: +SKIP
    """

    def __init__(self, model: LongVUModel, cache: FeatureCache | None = None, progress: bool = False) -> None:
        self.model = model
        self.cache = cache
        self.progress = progress

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
    ) -> LongVU:
        """Load a checkpoint folder or hub id.

        Args:
            overrides: config fields to change, like ``--set``.
            quantize: ``"int8"``, ``"nf4"`` or ``"int4"`` for the decoder (``--quantize``);
                shorthand for ``options=LoadOptions(quantize=...)``.
            options: placement and quantization (:class:`longvu.model.LoadOptions`).
            cache: ``True`` for the default feature cache (``$LONGVU_CACHE_DIR`` or
                ``~/.cache/longvu``), a folder, a :class:`FeatureCache`, or ``False``.
            progress: show a progress bar on stderr while encoding videos.
        """
        if quantize is not None:
            options = dataclasses.replace(options or LoadOptions(), quantize=quantize)
        m = load_model(model, device=device, dtype=dtype, siglip=siglip, dinov2=dinov2, overrides=overrides,
                       options=options)  # fmt: skip
        if cache is True:
            fc = FeatureCache()
        elif cache is False or cache is None:
            fc = None
        elif isinstance(cache, FeatureCache):
            fc = cache
        else:
            fc = FeatureCache(cache)
        return cls(m, fc, progress)

    @property
    def config(self) -> LongVUConfig:
        return self.model.cfg

    # ------------------------------------------------------------------ public
    def ask(
        self,
        video: str | os.PathLike | VideoClip | VisualFeatures,
        question: str,
        *,
        sampling: Sampling | None = None,
        generation: GenerationOptions | None = None,
        arrays: bool = False,
    ) -> Answer:
        """Answer ``question`` about ``video``.  ``arrays=True`` also returns the parity arrays."""
        stream = self.ask_stream(video, question, sampling=sampling, generation=generation, arrays=arrays)
        for _ in stream:
            pass
        return stream.answer

    def describe(self, video: str | os.PathLike | VideoClip | VisualFeatures, **kw) -> Answer:
        return self.ask(video, DESCRIBE_PROMPT, **kw)

    def ask_stream(
        self,
        video: str | os.PathLike | VideoClip | VisualFeatures,
        question: str,
        *,
        sampling: Sampling | None = None,
        generation: GenerationOptions | None = None,
        arrays: bool = False,
    ) -> AnswerStream:
        """Like :meth:`ask` but iterate to get text pieces as they are generated.

        The video is encoded (or read from the cache) when this is called; the full
        :class:`Answer` is on ``.answer`` once iteration ends.
        """
        feats = video if isinstance(video, VisualFeatures) else self.features(video, sampling, arrays=arrays)
        conv = Conversation(self.model.template)
        conv.add_user(question)
        return AnswerStream(self, feats, conv, generation or GenerationOptions(), arrays)

    def chat(
        self, video: str | os.PathLike | VideoClip | VisualFeatures, *, sampling: Sampling | None = None
    ) -> ChatSession:
        """A multi-turn conversation about one video; the video is encoded once."""
        feats = video if isinstance(video, VisualFeatures) else self.features(video, sampling)
        return ChatSession(self, feats)

    def features(
        self, video: str | os.PathLike | VideoClip, sampling: Sampling | None = None, *, arrays: bool = False
    ) -> VisualFeatures:
        """The question-independent encoding of ``video``, from the cache when possible."""
        sampling = sampling or Sampling()
        use_cache = self.cache is not None and not arrays and not isinstance(video, VideoClip)
        key = None
        if use_cache:
            t0 = time.perf_counter()
            probe_video(video)
            key = self.cache_key(video, sampling)
            hit = self.cache.get(key)
            if hit is not None:
                hit.timings = {"cache_hit": 1.0, "cache_read": time.perf_counter() - t0}
                return hit
        feats = encode_video(
            self.model, video, sampling, keep_all_below=self.keep_all_below(), arrays=arrays, progress=self.progress
        )
        if use_cache:
            self.cache.put(key, feats, video=os.path.realpath(video))
        return feats

    def keep_all_below(self) -> int:
        """An upper bound of ``max_frames_dino`` over all prompts (text length 0)."""
        cfg = self.model.cfg
        per_frame = cfg.lowres_token**2 if cfg.highres else cfg.image_token_len
        return max(1, (cfg.tokenizer_model_max_length - cfg.inference_max_length) // per_frame)

    def cache_key(self, video: str | os.PathLike, sampling: Sampling) -> str:
        cfg, m = self.model.cfg, self.model
        return FeatureCache.make_key(
            video=self.cache.video_digest(video),
            sampling=dataclasses.asdict(sampling),
            stage1={
                k: getattr(cfg, k) for k in ("dino_threshold", "dino_window", "max_frames_cap", "fix_dino_middle_frame")
            },  # fmt: skip
            connector={
                k: getattr(cfg, k)
                for k in (
                    "fix_unpad_orientation",
                    "dino_image_size",
                    "aux_token_len",
                    "image_token_len",
                    "vision_hidden_size",
                )
            },  # fmt: skip
            keep_all_below=self.keep_all_below(),
            weights=m.fingerprint(),
            dtype=str(m.dtype),
            device=m.device.type,
        )

    # ---------------------------------------------------------------- internals
    def prompt_ids(self, conv: Conversation) -> list[int]:
        m = self.model
        text = conv.render(m.tokenizer)
        return tokenize_with_image(text, m.tokenizer, drop_first=m.cfg.is_llama)

    @torch.inference_mode()
    def compose(self, feats: VisualFeatures, ids: list[int], trace: Trace, keep_arrays: bool) -> torch.Tensor:
        """The question-dependent stages: budgets, stage 1 decisions, grids, stage 2, stage 3, splice.

        Returns:
            ``[1, L, H]`` input embeddings for the LLM.
        """
        m, cfg = self.model, self.model.cfg
        arr = trace.arrays if keep_arrays else None
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise ValueError(
                f"the prompt must hold exactly one video placeholder, found {ids.count(IMAGE_TOKEN_INDEX)}"
            )
        budget = compute_budget(
            ids,
            max_length=cfg.tokenizer_model_max_length,
            inference_max_length=cfg.inference_max_length,
            image_token_len=cfg.image_token_len,
            lowres_token=cfg.lowres_token,
            highres=cfg.highres,
            pad_id=cfg.budget_pad_token_id,
        )
        trace.record_video(feats)
        trace.record_prompt(ids, budget, cfg)
        hw = feats.frame_hw

        # Stage 1 decisions from the stored window similarities.
        temporal = select_frames(
            feats.similarity,
            feats.window_sizes,
            max_frames=budget.max_frames_dino,
            threshold=cfg.dino_threshold,
            window=cfg.dino_window,
            cap=cfg.max_frames_cap,
            fix_middle_frame=cfg.fix_dino_middle_frame,
        )
        kept = temporal.kept
        trace.record_dino(temporal, feats, cfg)
        if arr is not None:
            _stage_arrays(arr, feats, temporal, kept)

        # Connector heads: a 12x12 grid per frame (and an 8x8 one in mixed mode).
        conn = m.connector
        sampled = feats.sampled_for(kept).to(m.device)
        mixed = cfg.highres and cfg.image_token_len > cfg.lowres_token**2 and use_mixed_resolution(len(kept), budget)
        grid_hi = conn.project(sampled)
        high, high_grid = conn.unpad_with_newlines(grid_hi, hw)
        low = low_grid = None
        if arr is not None:
            arr["hook_mm_projector_0_frame_sum"] = grid_hi.double().sum((1, 2, 3)).cpu().numpy()
        if mixed:
            grid_lo = conn.project(conn.lowres(sampled))
            scale = cfg.high_side / cfg.lowres_token
            low, low_grid = conn.unpad_with_newlines(grid_lo, (int(hw[0] / scale), int(hw[1] / scale)))
            if arr is not None:
                arr["hook_mm_projector_1_frame_sum"] = grid_lo.double().sum((1, 2, 3)).cpu().numpy()
        if cfg.frame_pos:
            high = add_frame_pos(high, kept, fix=cfg.fix_frame_pos)
            if low is not None:
                low = add_frame_pos(low, kept, fix=cfg.fix_frame_pos)
        trace.record_grids(high.shape[1], high_grid, None if low is None else low.shape[1], low_grid)

        # Stage 2: text-guided selection of high-res frames (mixed mode).
        pos = ids.index(IMAGE_TOKEN_INDEX)
        before = m.embed(ids[:pos])
        after = m.embed(ids[pos + 1 :])
        mvl = budget.max_visual_len
        selection = None
        if mixed:
            base = low
            selection = select_high_res(low, high, after, max_visual_len=mvl)
            tokens = selection.tokens
            if arr is not None and selection.frame_similarity is not None:
                arr["text_frame_similarity"] = selection.frame_similarity.float().cpu().numpy()
        else:
            base = high
            tokens = high.reshape(-1, high.shape[-1])
        visual_len = base.shape[0] * base.shape[1]
        trace.record_selection(mixed, selection, kept, feats, visual_len=int(high.shape[0] * high.shape[1]),
                               after_selection=int(tokens.shape[0]))  # fmt: skip

        # Stage 3: spatial token compression when the base tokens exceed the budget.
        stc = None
        if mvl < visual_len and not (selection is not None and selection.mixed):
            stc = spatial_token_compression(base, max_visual_len=mvl, drop_threshold=cfg.drop_threshold,
                                            window=cfg.stc_window)  # fmt: skip
            tokens = stc.tokens
            if arr is not None:
                arr["stc_similarity"] = stc.similarity.float().cpu().numpy()
                arr["stc_keep_mask"] = stc.keep_mask.cpu().numpy().astype(np.uint8)
        trace.record_stc(stc, cfg, int(tokens.shape[0]))

        seq = torch.cat([before, tokens.to(before.dtype), after], dim=0)[: cfg.tokenizer_model_max_length]
        embeds = seq.unsqueeze(0)
        trace.record_embeds(embeds, arr)
        return embeds

    def generate(
        self,
        embeds: torch.Tensor,
        opts: GenerationOptions,
        stop_str: str,
        streamer: _StreamCollector | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[list[int], torch.Tensor | None, str]:
        """Generate from ``[1, L, H]`` embeddings; returns (new ids, first-step logits, stop reason)."""
        m = self.model
        gen = m.generation_config
        kw: dict[str, Any] = {"max_new_tokens": opts.max_new_tokens, "use_cache": True}
        if opts.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            if opts.temperature is not None:
                kw["temperature"] = opts.temperature
                kw["do_sample"] = opts.temperature > 0
                if opts.temperature == 0:
                    kw.update(temperature=None, top_p=None, top_k=None)
            if opts.top_p is not None:
                kw["top_p"] = opts.top_p
        stop_ids = m.tokenizer(stop_str, add_special_tokens=False).input_ids
        with warnings.catch_warnings():
            # Generating from embeddings, the repetition penalty sees only new tokens: that is
            # exactly the reference's behaviour, so transformers' warning about it is noise.
            warnings.filterwarnings("ignore", message=".*repetition_penalty.*inputs_embeds.*")
            out = _generate(m, embeds, gen, stop_ids, streamer, kw, cancel)
        ids = out.sequences[0].tolist()
        logits0 = out.logits[0][0].float().cpu() if out.logits else None
        eos = gen.eos_token_id
        eos_set = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        stopped = ids and (ids[-1] in eos_set or (stop_ids and ids[-len(stop_ids) :] == stop_ids))
        return ids, logits0, "eos_or_stop_str" if stopped else "max_new_tokens"


def _generate(m: LongVUModel, embeds, gen, stop_ids, streamer, kw, cancel=None):
    from transformers import StoppingCriteriaList

    criteria = [_StopOnSequence(stop_ids)]
    if cancel is not None:
        criteria.append(_StopOnEvent(cancel))
    return m.llm.generate(
        inputs_embeds=embeds,
        generation_config=gen,
        stopping_criteria=StoppingCriteriaList(criteria),
        streamer=streamer,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=gen.pad_token_id if gen.pad_token_id is not None else _first(gen.eos_token_id),
        **kw,
    )


def _first(x):
    return x[0] if isinstance(x, list) else x


def _stage_arrays(arr: dict, feats: VisualFeatures, temporal, kept: list[int]) -> None:
    """Copy the encoder's per-frame checksums into the trace arrays (golden array names)."""
    st = feats.stats
    if temporal.similarity is not None:
        arr["dino_similarity"] = temporal.similarity.float().cpu().numpy()
        arr["dino_window_sizes"] = np.asarray(temporal.window_sizes, dtype=np.int64)
    for name in ("pixels_dino_sum", "pixels_dino_sq_sum", "pixels_siglip_sum", "pixels_siglip_sq_sum",
                 "features_dino_sum", "features_dino_l2"):  # fmt: skip
        if f"{name}_all" in st:
            arr[name] = st[f"{name}_all"]
    for name in ("pixels_dino_frame0_crop", "pixels_siglip_frame0_crop"):
        if name in st:
            arr[name] = st[name]
    for name in ("features_siglip_l2", "hook_mm_projector_aux_0_0_frame_sum", "hook_mm_projector_aux_1_0_frame_sum"):
        if name in st:
            arr[name] = feats.stored_stat(name, kept)
    if "hook_vision_sampler_0_0_frame_sum" in st:
        arr["hook_vision_sampler_0_0_frame_sum"] = feats.stored_stat("hook_vision_sampler_0_0_frame_sum", kept).reshape(
            -1
        )


class AnswerStream:
    """Iterator over answer text pieces; ``.answer`` holds the full :class:`Answer` at the end."""

    def __init__(
        self,
        lv: LongVU,
        feats: VisualFeatures,
        conv: Conversation,
        opts: GenerationOptions,
        arrays: bool,
        on_done: Callable[[Answer], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.lv, self.feats, self.conv, self.opts, self.keep_arrays = lv, feats, conv, opts, arrays
        self.on_done = on_done
        self.cancel = cancel
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        lv, m = self.lv, self.lv.model
        trace = Trace()
        t0 = time.perf_counter()
        ids = lv.prompt_ids(self.conv)
        embeds = lv.compose(self.feats, ids, trace, self.keep_arrays)
        t1 = time.perf_counter()
        collector = _StreamCollector()
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    result["out"] = lv.generate(embeds, self.opts, self.conv.stop_str, collector, self.cancel)
            except BaseException as e:  # re-raised in the consumer thread
                result["error"] = e
                collector.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        new_ids: list[int] = []
        shown = ""
        while True:
            item = collector.queue.get()
            if item is None:
                break
            new_ids.extend(item)
            text = m.tokenizer.decode(new_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # wait for the rest of a multi-byte character
            if len(text) > len(shown) and text.startswith(shown):
                yield text[len(shown) :]
                shown = text
        worker.join()
        if "error" in result:
            raise result["error"]
        gen_ids, logits0, stopped_by = result["out"]
        text = m.tokenizer.batch_decode([gen_ids], skip_special_tokens=True)[0].strip()
        if len(text) > len(shown.strip()) and text.startswith(shown.strip()):
            rest = text[len(shown.strip()) :]
            if rest:
                yield rest
        trace.record_generation(gen_ids, text, stopped_by, logits0)
        trace.data["timings"] = {
            **{f"encode_{k}": round(v, 4) for k, v in self.feats.timings.items()},
            "compose": round(t1 - t0, 4),
            "generate": round(time.perf_counter() - t1, 4),
        }
        self.answer = Answer(text=text, token_ids=gen_ids, trace=trace, arrays=trace.arrays)
        if self.on_done is not None:
            self.on_done(self.answer)


class ChatSession:
    """A conversation about one video: each turn re-runs the question-dependent stages
    (budgets, selection, STC) on the same encoded video, with the chat history in the prompt."""

    def __init__(self, lv: LongVU, feats: VisualFeatures) -> None:
        self.lv = lv
        self.features = feats
        self.conversation = Conversation(lv.model.template)

    @property
    def history(self) -> list[tuple[str, str]]:
        return list(self.conversation.turns)

    def ask_stream(self, question: str, generation: GenerationOptions | None = None) -> AnswerStream:
        conv = Conversation(self.conversation.template, self.conversation.system, list(self.conversation.turns))
        conv.add_user(question)

        def done(answer: Answer) -> None:
            self.conversation.add_user(question)
            self.conversation.add_assistant(answer.text)

        return AnswerStream(self.lv, self.features, conv, generation or GenerationOptions(), False, on_done=done)

    def ask(self, question: str, generation: GenerationOptions | None = None) -> Answer:
        stream = self.ask_stream(question, generation)
        for _ in stream:
            pass
        return stream.answer

    def reset(self) -> None:
        self.conversation.turns.clear()
