"""The lmms-eval model ``longvu``: ``lmms-eval --model longvu --model_args pretrained=...``.

``pip install -e ".[lmms]"`` (in a clone) registers it through lmms-eval's ``lmms_eval.models`` entry
point (lmms-eval 0.7 reads a :class:`ModelManifest` from it), so no fork of lmms-eval is
needed.  It is a thin adapter around :class:`longvu.LongVU`:

* ``generate_until``: the task's visual (a video path, a ``{"video", "video_start",
  "video_end"}`` dict, or a list of images taken as a video's frames in order) is encoded
  once per video and every question about it reuses the features; the task's ``until``
  strings cut the answer;
* ``loglikelihood`` (``multiple_choice`` tasks): :meth:`LongVU.teacher_forced` scores the
  continuation as the assistant's reply;
* a question with no visual is text-only: its prompt has no video placeholder and the
  LLM reads the text alone (``LongVU.generate(None, conversation)``);
* frame sampling and run-time thresholds follow our benchmark presets
  (:data:`longvu.eval.benchmarks.PRESETS`: ``videomme*``, ``mlvu*``, ``egoschema*`` and
  ``mvbench*`` tasks pick theirs with ``preset=auto``); other tasks sample at 1 fps
  through the feature cache.

``--model_args`` keys: ``pretrained``, ``device``, ``dtype``, ``preset``
(``auto``/``none``/a preset name), ``fps``, ``max_frames`` (at most N, evenly spaced, as ``longvu ask --max-frames``), ``max_new_tokens`` (a default
when the task gives none), ``cache`` (``true``/``false``/a folder), ``siglip``, ``dinov2``,
and any config field of ``--set`` (``drop_threshold=0.7``), which wins over the preset's.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Any

import numpy as np
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from loguru import logger
from PIL import Image
from tqdm import tqdm

from ..errors import LongVUError
from ..loading.load import DEFAULT_MODEL
from ..model.generation import GenerationOptions
from ..model.prompt import IMAGE_MARKER
from ..model.video import Sampling, VideoClip
from ..pipeline.api import LongVU
from .benchmarks import PRESETS, Preset
from .runner import preset_clip

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# lmms-eval's keyword arguments that are not ours (it passes them to every model).
_HARNESS_KEYS = ("batch_size", "max_batch_size")


def manifest() -> ModelManifest:
    """The entry point's payload: lmms-eval imports :class:`LongVULmms` only when ``--model longvu`` runs."""
    return ModelManifest(model_id="longvu", simple_class_path="longvu.eval.lmms.LongVULmms")


@dataclasses.dataclass(frozen=True)
class _VideoRequest:
    """One request's visual input: a video file (optionally within seconds), or frames."""

    path: str | None = None
    bound: tuple[float, float] | None = None
    frames: tuple | None = None  # PIL images, in order

    @property
    def key(self) -> tuple:
        return (self.path, self.bound) if self.path is not None else ("frames", tuple(id(f) for f in self.frames))


class LongVULmms(lmms):
    """lmms-eval's interface (``generate_until``, ``loglikelihood``) over one :class:`LongVU`."""

    is_simple = True

    def __init__(
        self, pretrained: str = DEFAULT_MODEL, device: str | None = "auto", dtype: str = "auto", preset: str = "auto",
        fps: float | None = None, max_frames: int | None = None, max_new_tokens: int = 128,
        cache: bool | str = True, siglip: str | None = None, dinov2: str | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        overrides = {k: v for k, v in kwargs.items() if k not in _HARNESS_KEYS and v is not None}
        if preset not in ("auto", "none", *PRESETS):
            raise LongVUError(f"preset={preset!r}: expected auto, none or one of {', '.join(PRESETS)}")
        self.preset_name, self.fps, self.max_frames = preset, fps, max_frames
        self.max_new_tokens = int(max_new_tokens)
        self.overrides = overrides
        self.lv = LongVU.from_pretrained(pretrained, device=device or "auto", dtype=dtype, siglip=siglip,
                                         dinov2=dinov2, overrides=overrides, cache=cache)  # fmt: skip
        self._views: dict[str, LongVU] = {}
        self._features: OrderedDict[tuple, Any] = OrderedDict()

    # ------------------------------------------------------------ presets
    def preset_for(self, task: str) -> Preset | None:
        """The benchmark preset a task samples with (``None``: 1 fps, or ``fps``/``max_frames``)."""
        if self.preset_name == "none":
            return None
        name = self.preset_name
        if name == "auto":
            name = next((p for p in PRESETS if task.lower().startswith(p)), None)
            if name is None:
                return None
        preset = PRESETS[name]
        if self.fps or self.max_frames:
            preset = dataclasses.replace(preset, sample_fps=self.fps or preset.sample_fps,
                                         max_frames=self.max_frames or preset.max_frames)  # fmt: skip
        return preset

    def _model_for(self, preset: Preset | None) -> LongVU:
        """The model with the preset's thresholds (the user's ``--model_args`` overrides win)."""
        if preset is None or not preset.overrides:
            return self.lv
        if preset.name not in self._views:
            extra = {k: v for k, v in preset.overrides if k not in self.overrides}
            self._views[preset.name] = self.lv.with_overrides(extra)
        return self._views[preset.name]

    def _encode(self, lv: LongVU, req: _VideoRequest, preset: Preset | None):
        """Features of one request's video; the last few are kept (a video's questions come together)."""
        key = (id(lv), preset, req.key)
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key]
        if req.frames is not None:
            feats = lv.features(frames_clip(req.frames))
        elif preset is not None:
            feats = lv.features(preset_clip(req.path, preset, req.bound))
        else:
            start, end = req.bound if req.bound else (None, None)
            feats = lv.features(req.path, Sampling(fps=self.fps or 1.0, max_frames=self.max_frames, start=start,
                                                   end=end))  # fmt: skip
        self._features[key] = feats
        while len(self._features) > 4:
            self._features.popitem(last=False)
        return feats

    def _prepare(self, context: str, doc_to_visual, doc_id, task: str, split: str):
        """The model view, the video's features (None: a text-only question) and the conversation of one request."""
        doc = self.task_dict[task][split][doc_id]
        req = video_request(doc_to_visual(doc) if doc_to_visual is not None else None)
        preset = self.preset_for(task)
        lv = self._model_for(preset)
        feats = self._encode(lv, req, preset) if req is not None else None
        conv = lv.conversation(video=feats is not None)
        conv.add_user(context.replace(IMAGE_MARKER, "").strip())
        return lv, feats, conv

    # ------------------------------------------------------------ lmms-eval's interface
    def generate_until(self, requests: list[Instance]) -> list[str]:

        out = []
        for req in tqdm(requests, desc="longvu", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            try:
                lv, feats, conv = self._prepare(context, doc_to_visual, doc_id, task, split)
                opts, until = generation_options(gen_kwargs, self.max_new_tokens)
                stream = lv.generate(feats, conv, generation=opts)
                for _ in stream:
                    pass
                text = stream.answer.text  # as the Python API answers: no leading space of the first piece
            except LongVUError as e:  # one bad item must not end the whole run: it is answered empty
                logger.error(f"longvu: {task} doc {doc_id}: {e}")
                text, until = "", []
            out.append(cut_at(text, until))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out[-1])
        return out

    def loglikelihood(self, requests: list[Instance]) -> list:
        """Per request, the continuation's negative log-likelihood and whether greedy decoding gives it.

        lmms-eval 0.7 picks a ``multiple_choice`` answer by the *smallest* value (its models
        return a loss), so the value is ``-log p(continuation)``.  Each pair is wrapped in a
        ``GenerationResult``: lmms-eval 0.7.3 turns any other non-string response into its
        ``str()`` before scoring, which breaks multiple-choice tasks.
        """
        # lazy: lmms_eval comes with the lmms extra
        from lmms_eval.api.instance import GenerationResult

        out = []
        for req in tqdm(requests, desc="longvu", disable=self.rank != 0):
            context, target, doc_to_visual, doc_id, task, split = req.args
            try:
                lv, feats, conv = self._prepare(context, doc_to_visual, doc_id, task, split)
                if not isinstance(target, str):
                    target = target(self.task_dict[task][split][doc_id])
                forced = lv.teacher_forced(feats, conv, str(target).lstrip())
                pair = (-forced.logprob, forced.exact_match)
            except LongVUError as e:
                logger.error(f"longvu: {task} doc {doc_id}: {e}")
                pair = (float("inf"), False)
            out.append(GenerationResult(text=pair))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("longvu: multi-round generation is not implemented; use generate_until tasks")


def video_request(visuals) -> _VideoRequest | None:
    """What a task's ``doc_to_visual`` returned, as one video (None: none, a text-only question;
    several videos are refused)."""

    items = list(_flatten(visuals))
    if not items:
        return None
    if all(isinstance(v, Image.Image) for v in items):
        return _VideoRequest(frames=tuple(items))
    if all(isinstance(v, str) and v.lower().endswith(IMAGE_EXTS) for v in items):
        return _VideoRequest(frames=tuple(Image.open(v) for v in items))
    if len(items) > 1:
        raise LongVUError(f"the question has {len(items)} visual inputs; LongVU answers about one video at a time")
    item = items[0]
    if isinstance(item, dict):
        path = item.get("video") or item.get("path") or item.get("url")
        start, end = item.get("video_start"), item.get("video_end")
        bound = (float(start or 0.0), float(end)) if end is not None else None
        return _VideoRequest(path=str(path), bound=bound)
    if isinstance(item, (str, os.PathLike)):
        return _VideoRequest(path=str(item))
    raise LongVUError(f"unsupported visual input {type(item).__name__}")


def _flatten(visuals):
    if visuals is None:
        return
    if isinstance(visuals, (list, tuple)):
        for v in visuals:
            yield from _flatten(v)
    else:
        yield visuals


def frames_clip(images, fps: float = 1.0, name: str = "<frames>") -> VideoClip:
    """Ordered images as a video's frames, ``fps`` apart (each resized to the first one's size)."""

    first = images[0].convert("RGB")
    size = first.size
    frames = [np.asarray(first)] + [np.asarray(im.convert("RGB").resize(size)) for im in images[1:]]
    n = len(frames)
    return VideoClip(name, np.stack(frames), list(range(n)), [i / fps for i in range(n)], fps, 1, n)


def generation_options(kw: dict | None, default_max_new_tokens: int) -> tuple[GenerationOptions, list[str]]:
    """lmms-eval's ``generation_kwargs`` as :class:`GenerationOptions`, and its ``until`` strings."""
    kw = dict(kw or {})
    until = kw.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(kw.get("temperature") or 0.0)
    greedy = not kw.get("do_sample", False) or temperature == 0.0
    opts = GenerationOptions(
        max_new_tokens=int(kw.get("max_new_tokens") or default_max_new_tokens), greedy=greedy,
        temperature=None if greedy else temperature, top_p=None if greedy else kw.get("top_p"),
    )  # fmt: skip
    return opts, until


def cut_at(text: str, until: list[str]) -> str:
    """``text`` up to the first of the stop strings (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
