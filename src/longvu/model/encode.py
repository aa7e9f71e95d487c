"""Video -> per-frame connector features, streamed in bounded memory.

This is the question-independent half of the pipeline: decode, DINOv2, the per-window
similarities of stage 1, SigLIP and the SVA sampler.  Its result,
:class:`VisualFeatures`, is what the feature cache stores and what every question (or
chat turn) about the same video starts from.  Its named parts:

* :func:`_decoded_frames` - decoding on its own thread, a bounded queue ahead of the
  encoder; each frame is reduced at once to what the encoder needs of it (DINOv2's
  pixels, and SigLIP's input: the frame itself when small, its padded and resized
  square otherwise), so memory per frame is bounded whatever the resolution;
* :class:`_Stage1` - DINOv2 on each 16-frame window as soon as it is complete, stage 1's
  similarities right away (the window is all they depend on), and the frames that can
  still be kept (window survivors, plus every frame while the video is shorter than any
  question's frame budget) spilled to disk by :class:`_Spill`;
* :func:`_siglip_pass` - after the last frame, stage 1's cap picks the stored frames
  (:func:`~longvu.model.compress.select_frames`, the rule every question applies) and SigLIP +
  the connector run on them in chunks.

The arithmetic is the reference's, so the result equals the in-memory path (the parity
tests run through this code).  ``cancel`` is checked every few decoded frames (sampled or not), for
every sampled frame and every chunk.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import VideoError
from ..files import OWNER, owner_tag, remove_orphans
from .compress.temporal import select_frames, select_in_window, window_similarity
from .devices import decode_threads, host_batch, preprocess_workers, upload
from .intake import MediaLimits, VideoSource, source_name
from .observe import Observer
from .preprocess import ImageSpec, normalize, pad_and_resize, preprocess_frame
from .video import (
    Sampling,
    StreamInfo,
    VideoClip,
    check_cancel,
    count_frames,
    iter_frames,
    planned_indices,
    sampled_indices,
)

# A decoded frame up to this size is held as it is until stage 1 decides whether SigLIP
# needs it (720p and smaller: the cheap path); a larger one is padded and resized for
# SigLIP as soon as it is decoded, which bounds memory per frame.
HOLD_RGB_BYTES = 1280 * 720 * 3
# Decoded frames waiting for preprocessing at most, in bytes (at least one frame).
INFLIGHT_BYTES = 64 << 20
PREFETCH_FRAMES = 32


@dataclass
class VisualFeatures:
    """Everything about one video that does not depend on the question.

    Attributes:
        source_indices, timestamps: per sampled frame (N of them).
        similarity: ``[N]`` stage-1 window similarities (before the middle-frame rule).
        window_sizes: frames per stage-1 window.
        stored: sampled-frame positions whose connector output is in ``sampled``.
        sampled: ``[K, Q, vh]`` SVA sampler output (before ``mm_projector``) per stored frame.
        all_frames: every sampled frame is stored (short videos).
        timings: seconds spent per step (``cache_hit`` when read from the cache).
        sampling: the :class:`~longvu.model.video.Sampling` the frames were chosen by, when known.
    """

    path: str
    source_indices: list[int]
    timestamps: list[float]
    avg_fps: float
    step: int
    num_frames_total: int
    frame_hw: tuple[int, int]
    similarity: torch.Tensor
    window_sizes: list[int]
    stored: list[int]
    sampled: torch.Tensor
    all_frames: bool
    timings: dict[str, float] = field(default_factory=dict)
    sampling: Sampling | None = None  # how the frames were chosen (set by LongVU.features; not cached)
    covered: tuple[float, float] | None = None  # a live stream's span [start, end] in stream seconds (not cached)

    def __len__(self) -> int:
        return len(self.source_indices)

    @property
    def from_cache(self) -> bool:
        return "cache_hit" in self.timings

    def sampled_for(self, positions: list[int], device: torch.device | None = None) -> torch.Tensor:
        """``[len(positions), Q, vh]`` sampler outputs of the given sampled-frame positions.

        With ``device``, the stored outputs move there first and stay (:meth:`to`), so that
        every later question about this video (a chat's turns) finds them there.
        """
        where = {p: i for i, p in enumerate(self.stored)}
        missing = [p for p in positions if p not in where]
        if missing:
            raise RuntimeError(f"frames {missing[:5]} were not encoded (stored: {len(self.stored)} frames)")
        sampled = self.to(device).sampled if device is not None else self.sampled
        return sampled[torch.tensor([where[p] for p in positions], dtype=torch.long, device=sampled.device)]

    def to(self, device: torch.device) -> VisualFeatures:
        """Keep the stored sampler outputs on ``device`` (in place; a no-op once they are there)."""
        self.sampled = upload(self.sampled, torch.device(device))
        return self


@dataclass
class _Frame:
    """One sampled frame on its way through the encoder."""

    index: int  # in the decoded stream
    time: float
    hw: tuple[int, int]
    dino: Future  # -> [3, S, S] float32 DINOv2 pixels
    siglip: Future  # -> (uint8 image, resized): the frame, or its padded and resized square


def _siglip_input(rgb: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, bool]:
    """What the SigLIP pass needs of a frame, in at most ``max(HOLD_RGB_BYTES, S*S*3)`` bytes."""
    if rgb.nbytes <= HOLD_RGB_BYTES:
        return rgb, False
    return pad_and_resize(rgb, spec), True


def siglip_pixels(item: tuple[np.ndarray, bool], spec: ImageSpec) -> np.ndarray:
    """``[3, S, S]`` float32 SigLIP pixels from :func:`_siglip_input`'s result (bit-identical either way)."""
    image, resized = item
    return normalize(image, spec) if resized else preprocess_frame(image, spec)


class _Prefetch:
    """Run an iterator on a background thread, ``size`` items ahead; errors re-raise here."""

    _END = object()

    def __init__(self, it: Iterator, size: int = PREFETCH_FRAMES) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(it,), daemon=True, name="longvu-decode")
        self.thread.start()

    def _run(self, it: Iterator) -> None:
        try:
            for item in it:
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            self.error = e
        finally:
            if hasattr(it, "close"):
                it.close()
            self.q.put(self._END)

    def __iter__(self) -> Iterator:
        try:
            while (item := self.q.get()) is not self._END:
                yield item
            if self.error is not None:
                raise self.error
        finally:
            self.stop.set()
            self.thread.join(timeout=5)


def _decoded_frames(
    video: VideoSource | VideoClip, sampling: Sampling, info: StreamInfo, pool: ThreadPoolExecutor, model,
    limits: MediaLimits | None = None, cancel=None,
) -> Iterator[_Frame]:  # fmt: skip
    """Sampled frames, their preprocessing submitted to ``pool`` by a decoding thread."""
    if isinstance(video, VideoClip):
        info.avg_fps, info.step, info.total = video.avg_fps, video.step, video.num_frames_total
        frames: Iterator = zip(video.source_indices, video.timestamps, video.frames)
    else:
        wanted = planned_indices(video, sampling, limits, cancel) if sampling.max_frames is not None else None
        frames = iter_frames(
            video, sampling, info, only=wanted, limits=limits, thread_type=decode_threads(model.device), cancel=cancel
        )
    dino_spec, siglip_spec = model.dinov2.spec, model.siglip.spec

    def submit() -> Iterator[_Frame]:
        pending: deque[tuple[Future, Future, int]] = deque()  # decoded frames not yet reduced
        for index, t, rgb in frames:
            while pending and (all(f.done() for f in pending[0][:2]) or
                               sum(n for *_, n in pending) + rgb.nbytes > INFLIGHT_BYTES):  # fmt: skip
                for f in pending.popleft()[:2]:
                    f.result()
            dino = pool.submit(preprocess_frame, rgb, dino_spec)
            sig = pool.submit(_siglip_input, rgb, siglip_spec)
            pending.append((dino, sig, rgb.nbytes))
            yield _Frame(int(index), float(t), rgb.shape[:2], dino, sig)

    return iter(_Prefetch(submit()))


# A spill folder in the temporary folder, named after the process writing it (see longvu.files.owner_tag).
SPILL_DIR = re.compile(rf"longvu-spill-{OWNER}-\w+")


def remove_orphan_spills(folder: str | None = None) -> tuple[int, int]:
    """Remove spill folders of encoders killed mid-encode (their process is gone); ``(folders, bytes)``."""
    return remove_orphans(folder or tempfile.gettempdir(), SPILL_DIR)


class _Spill:
    """Append-only on-disk store of frames' SigLIP inputs and DINOv2 features, by position.

    Spilled data sits in the page cache, not in the process's memory, so an hour of
    video costs disk space (only for frames that survive stage 1), not RAM.  Features are
    stored as their raw bytes in the model's dtype (a bf16 model spills half of float32).
    """

    def __init__(self, folder: str) -> None:
        self.images = open(os.path.join(folder, "siglip.bin"), "w+b")  # noqa: SIM115 (closed in close())
        self.feats = open(os.path.join(folder, "dino.bin"), "w+b")  # noqa: SIM115
        self.index: dict[int, tuple] = {}
        self.dtype: torch.dtype | None = None

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc) -> None:
        self.images.close()
        self.feats.close()

    def put(self, items: list[tuple[int, tuple[np.ndarray, bool]]], feats: torch.Tensor) -> None:
        """Append frames: ``(position, SigLIP input)`` each, and their features ``[k, 576, C]``.

        The features come to the host in one copy, whatever ``k``.
        """
        host = feats.detach().cpu().contiguous()  # [k, 576, C] in the model's dtype
        self.dtype = host.dtype
        raw = host.view(torch.uint8).numpy()  # [k, 576, C * itemsize]: the bytes, whatever the dtype
        self.images.seek(0, os.SEEK_END)
        self.feats.seek(0, os.SEEK_END)
        for (pos, (image, resized)), f in zip(items, raw):
            self.index[pos] = (self.images.tell(), image.shape, resized, self.feats.tell(), f.shape)
            self.images.write(np.ascontiguousarray(image).tobytes())
            self.feats.write(f.tobytes())

    def clear(self) -> None:
        """Forget every frame and give the disk space back (the live encoder does so after each window)."""
        for f in (self.images, self.feats):
            f.seek(0)
            f.truncate()
        self.index.clear()

    def get(self, pos: int) -> tuple[tuple[np.ndarray, bool], np.ndarray]:
        """A frame's SigLIP input and its features' bytes (``[576, C * itemsize]`` uint8; view as :attr:`dtype`)."""
        o_img, s_img, resized, o_feat, s_feat = self.index[pos]
        image = np.empty(s_img, dtype=np.uint8)
        self.images.seek(o_img)
        self.images.readinto(memoryview(image).cast("B"))
        feat = np.empty(s_feat, dtype=np.uint8)
        self.feats.seek(o_feat)
        self.feats.readinto(memoryview(feat).cast("B"))
        return (image, resized), feat


def dino_batch(cfg) -> int:
    """Frames per DINOv2 forward pass: as many whole stage-1 windows as fit in ``encode_chunk`` (at least one)."""
    return cfg.dino_window * max(1, cfg.encode_chunk // cfg.dino_window)


class _Stage1:
    """Stage 1 as frames stream in: DINOv2 per window, its similarities, the frames to keep.

    With ``encode_chunk`` of at least two windows (a GPU setting), DINOv2 runs on several
    windows per forward pass; the similarities and decisions stay per window.
    """

    def __init__(self, model, spill: _Spill, keep_all_below: int, observer: Observer | None, timings: dict) -> None:
        self.model, self.spill, self.keep_all_below = model, spill, keep_all_below
        self.observer, self.timings = observer, timings
        self.batch = dino_batch(model.cfg)
        self.pending: list[tuple[int, _Frame]] = []
        self.indices: list[int] = []
        self.times: list[float] = []
        self.sims: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.hw: tuple[int, int] | None = None
        self.trimmed_at = 0

    def add(self, frame: _Frame) -> None:
        self.hw = self.hw or (int(frame.hw[0]), int(frame.hw[1]))
        self.pending.append((len(self.indices), frame))
        self.indices.append(frame.index)
        self.times.append(frame.time)
        if len(self.pending) == self.batch:
            self.flush()
            if len(self.sizes) - self.trimmed_at >= 32:
                self.trimmed_at = len(self.sizes)
                _release_freed_memory()

    def flush(self) -> None:
        """DINOv2 on the buffered frames; per window, its similarities and the frames to spill."""
        if not self.pending:
            return
        t0 = time.perf_counter()
        cfg, device = self.model.cfg, self.model.device
        pixels = host_batch([f.dino.result() for _, f in self.pending], device)
        feats = self.model.dinov2(pixels, cfg.aux_side)  # [b, 576, C] on the device
        w = cfg.dino_window
        for i in range(0, len(self.pending), w):
            self._window(self.pending[i : i + w], pixels[i : i + w], feats[i : i + w])
        self.pending.clear()
        self.timings["dino"] += time.perf_counter() - t0

    def _window(self, window: list[tuple[int, _Frame]], pixels: torch.Tensor, feats: torch.Tensor) -> None:
        """One stage-1 window: ``pixels`` (host) and ``feats [w, 576, C]`` (device)."""
        cfg = self.model.cfg
        sim = window_similarity(feats.float()).cpu()  # [w], to the host: the decisions below need no device
        keep = set(select_in_window(sim, cfg.dino_threshold, cfg.fix_dino_middle_frame).tolist())
        self.sims.append(sim)
        self.sizes.append(len(window))
        rows = [i for i, (pos, _) in enumerate(window) if i in keep or pos < self.keep_all_below]
        if rows:
            picked = feats[torch.tensor(rows, dtype=torch.long, device=feats.device)]
            self.spill.put([(window[i][0], window[i][1].siglip.result()) for i in rows], picked)
        if self.observer:
            spec = self.model.siglip.spec
            self.observer.on_window(
                positions=[p for p, _ in window], pixels=pixels, features=feats,
                siglip_pixels=lambda: torch.from_numpy(np.stack([siglip_pixels(f.siglip.result(), spec)
                                                                 for _, f in window])),
            )  # fmt: skip

    def stored(self) -> tuple[list[int], bool]:
        """Positions SigLIP must encode, and whether that is every sampled frame."""
        n, cfg = len(self.indices), self.model.cfg
        if n < self.keep_all_below:
            return list(range(n)), True
        kept = select_frames(
            torch.cat(self.sims),
            self.sizes,
            max_frames=0,
            threshold=cfg.dino_threshold,
            window=cfg.dino_window,
            cap=cfg.max_frames_cap,
            fix_middle_frame=cfg.fix_dino_middle_frame,
        )
        return kept.kept, False  # fmt: skip


def _siglip_pass(model, spill: _Spill, stored: list[int], hw, pool, cancel, observer, timings,
                 progress: _Progress | None = None) -> torch.Tensor:  # fmt: skip
    """SigLIP and the connector on the stored frames, in chunks of ``encode_chunk``.

    The next chunk's frames are read and preprocessed while the current one runs.
    Returns ``[K, Q, vh]`` on the model's device.
    """
    cfg, conn, siglip, device = model.cfg, model.connector, model.siglip, model.device
    dtype = next(conn.parameters()).dtype

    def submit(part: list[int]) -> list[tuple[Future, np.ndarray]]:
        return [(pool.submit(siglip_pixels, img, siglip.spec), feat) for img, feat in map(spill.get, part)]

    parts = [stored[i : i + cfg.encode_chunk] for i in range(0, len(stored), cfg.encode_chunk)]
    chunks = []
    pending = submit(parts[0]) if parts else []
    for k, part in enumerate(parts):
        check_cancel(cancel)
        current, pending = pending, submit(parts[k + 1]) if k + 1 < len(parts) else []
        t0 = time.perf_counter()
        sig = siglip(host_batch([fut.result() for fut, _ in current], device), cfg.aux_side)  # [n, 576, C]
        t1 = time.perf_counter()
        dino = upload(host_batch([d for _, d in current], device).view(spill.dtype), sig.device, dtype)
        with torch.inference_mode():
            aux = conn.project_aux([sig.to(dtype), dino])
            sampled = conn.sample(aux, hw, fix_orientation=cfg.fix_unpad_orientation)  # [n, Q, vh]
        chunks.append(sampled)
        if progress is not None:
            progress.stage("encoding", sum(map(len, parts[: k + 1])), len(stored))
        timings["siglip"] += t1 - t0
        timings["connector"] += time.perf_counter() - t1
        if observer:
            observer.on_siglip_chunk(positions=part, features=sig, aux=aux, sampled=sampled)
    return torch.cat(chunks)


def encode_video(
    model,
    video: VideoSource | VideoClip,
    sampling: Sampling | None = None,
    *,
    keep_all_below: int,
    cancel=None,
    observer: Observer | None = None,
    progress: bool | ProgressCallback = False,
    limits: MediaLimits | None = None,
) -> VisualFeatures:
    """Decode and encode a video into :class:`VisualFeatures`.

    Args:
        model: a loaded :class:`longvu.loading.load.LongVUModel`.
        keep_all_below: if the video has fewer sampled frames than this, every frame is
            encoded (a question's frame budget may skip stage 1 for it); take the
            largest ``max_frames_dino`` any question can have.
        cancel: an object with ``is_set()``; once set, :class:`~longvu.errors.Cancelled` is raised.
        observer: gets each window's and chunk's tensors (see :class:`~longvu.model.observe.Observer`).
        progress: ``True`` shows a progress bar on stderr; a callable is called as
            ``progress(stage, done, total)`` (see :data:`ProgressCallback`).
        limits: bounds on duration, frames and frame size, enforced while decoding
            (a :class:`~longvu.errors.MediaLimitError` past them).
    """
    sampling = sampling or Sampling()
    path = video.path if isinstance(video, VideoClip) else source_name(video)
    info = StreamInfo()
    timings = dict.fromkeys(("decode_wait", "dino", "siglip", "connector"), 0.0)
    t_start = time.perf_counter()
    bar = _Progress(video, sampling, progress)
    pool = ThreadPoolExecutor(max_workers=preprocess_workers(model.device), thread_name_prefix="longvu-prep")
    try:
        with tempfile.TemporaryDirectory(prefix=f"longvu-spill-{owner_tag()}-") as tmp, _Spill(tmp) as spill:
            stage1 = _Stage1(model, spill, keep_all_below, observer, timings)
            with closing(_decoded_frames(video, sampling, info, pool, model, limits, cancel)) as frames:
                for frame in _timed(frames, timings):
                    check_cancel(cancel)
                    stage1.add(frame)
                    bar.frame()
            stage1.flush()
            _check_nonempty(stage1.indices, info, path)
            stored, all_frames = stage1.stored()
            bar.stage("encoding", 0, len(stored))
            sampled = _siglip_pass(model, spill, stored, stage1.hw, pool, cancel, observer, timings, bar)
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
    timings["total"] = time.perf_counter() - t_start
    return VisualFeatures(
        path=path, source_indices=stage1.indices, timestamps=stage1.times, avg_fps=info.avg_fps, step=info.step,
        num_frames_total=info.total, frame_hw=stage1.hw, similarity=torch.cat(stage1.sims),
        window_sizes=stage1.sizes, stored=stored, sampled=sampled, all_frames=all_frames, timings=timings,
    )  # fmt: skip


def _timed(frames: Iterator[_Frame], timings: dict) -> Iterator[_Frame]:
    """``frames``, adding the time spent waiting for each to ``timings["decode_wait"]``."""
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        timings["decode_wait"] += time.perf_counter() - t0
        if frame is None:
            return
        yield frame


def _check_nonempty(indices: list[int], info: StreamInfo, path: str) -> None:
    if indices:
        return
    if info.total == 0:
        raise VideoError("no decodable video frame", path)
    raise VideoError(f"no frame in the requested time range (the video lasts {info.total / info.avg_fps:.2f}s)", path)


def _release_freed_memory() -> None:
    """Hand memory freed by finished windows back to the OS (glibc keeps it otherwise).

    Decoding, preprocessing and encoding allocate from several threads, and glibc's
    per-thread arenas hold on to freed blocks; without this, peak RSS creeps up with the
    video's length although nothing is kept.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (probe: not every libc has it)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, called from the encoding thread: ``"decoding"`` counts the sampled
frames decoded and run through DINOv2 and frame reduction (what the CLI's bar counts; ``total`` 0
until the frames are counted, which happens on a thread beside it), then ``"encoding"`` counts the
kept frames through SigLIP and the connector.  It must return quickly."""


class _Progress:
    """Encoding progress: a tqdm bar on stderr (``enabled is True``) and/or a :data:`ProgressCallback`.

    The decoding total (sampled frames) is counted on a thread, not waited for.
    """

    def __init__(self, video, sampling: Sampling, enabled: bool | ProgressCallback) -> None:
        self.callback = enabled if callable(enabled) else None
        self.bar = (
            tqdm(total=None, unit="frame", desc="encoding", leave=False, dynamic_ncols=True)
            if enabled is True
            else None
        )
        self.done, self.total = 0, None
        if self.bar is None and self.callback is None:
            return
        if isinstance(video, VideoClip):
            self._set_total(len(video))
        else:
            threading.Thread(target=self._count, args=(video, sampling), daemon=True, name="longvu-count").start()
        self.stage("decoding", 0, self.total or 0)

    def _count(self, video, sampling: Sampling) -> None:
        try:
            total, fps = count_frames(video)
            self._set_total(len(sampled_indices(total, fps, sampling)))
        except Exception:  # an estimate only: never fail the run for it
            pass

    def _set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def frame(self) -> None:
        """One more sampled frame through the first pass."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.callback is not None:
            self.callback("decoding", self.done, max(self.total, self.done) if self.total else 0)

    def stage(self, name: str, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(name, done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
