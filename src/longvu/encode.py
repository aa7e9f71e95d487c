"""Video -> per-frame connector features, streamed in bounded memory.

This is the question-independent half of the pipeline: decode, DINOv2, the
per-window similarities of stage 1, SigLIP and the SVA sampler.  Its result,
:class:`VisualFeatures`, is what the feature cache stores and what every question
(or chat turn) about the same video starts from.

Memory does not grow with video length:

* decoding runs on its own thread, a bounded queue ahead of the encoder;
* DINOv2 runs on each 16-frame window as soon as it is complete, and stage 1's
  similarities are taken right away (the window is all they depend on);
* only the frames that can still be needed (window survivors, plus every frame
  while the video is shorter than any question's frame budget) are kept, and they
  are spilled to a temporary file, not held in memory;
* after the last frame, the 400-frame cap is applied and SigLIP + the connector run
  on the kept frames in chunks.

The arithmetic is the reference's, so the result equals the in-memory path
(the parity tests run through this code).
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .compress.temporal import cap_frames, select_in_window, window_similarity
from .errors import VideoError
from .preprocess import preprocess_frame
from .video import Sampling, StreamInfo, VideoClip, _resize_like, iter_frames, planned_indices


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
        stats: per-frame checksums for ``--trace-arrays`` (``*_all``: per sampled
            frame; otherwise per stored frame).
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
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source_indices)

    def sampled_for(self, positions: list[int]) -> torch.Tensor:
        """``[len(positions), Q, vh]`` sampler outputs of the given sampled-frame positions."""
        where = {p: i for i, p in enumerate(self.stored)}
        missing = [p for p in positions if p not in where]
        if missing:
            raise RuntimeError(f"frames {missing[:5]} were not encoded (stored: {len(self.stored)} frames)")
        return self.sampled[torch.tensor([where[p] for p in positions], dtype=torch.long)]

    def stored_stat(self, name: str, positions: list[int]) -> np.ndarray:
        where = {p: i for i, p in enumerate(self.stored)}
        return self.stats[name][[where[p] for p in positions]]


class _Prefetch:
    """Run an iterator on a background thread, ``size`` items ahead; errors re-raise here."""

    _END = object()

    def __init__(self, it: Iterator, size: int = 32) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(it,), daemon=True)
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
            while True:
                item = self.q.get()
                if item is self._END:
                    break
                yield item
            if self.error is not None:
                raise self.error
        finally:
            self.stop.set()
            self.thread.join(timeout=5)


class _Spill:
    """Append-only on-disk store of frames and their DINOv2 features, by position.

    Spilled data sits in the page cache, not in the process's memory, so an hour of
    video costs disk space (only for frames that survive stage 1), not RAM.
    """

    def __init__(self, folder: str) -> None:
        self.rgb = open(os.path.join(folder, "frames.bin"), "w+b")  # noqa: SIM115 (closed in close())
        self.feat = open(os.path.join(folder, "dino.bin"), "w+b")  # noqa: SIM115
        self.index: dict[int, tuple[int, tuple, int, tuple]] = {}

    def put(self, pos: int, rgb: np.ndarray, feat: torch.Tensor) -> None:
        f = feat.detach().float().cpu().numpy()
        self.rgb.seek(0, os.SEEK_END)
        self.feat.seek(0, os.SEEK_END)
        self.index[pos] = (self.rgb.tell(), rgb.shape, self.feat.tell(), f.shape)
        self.rgb.write(np.ascontiguousarray(rgb).tobytes())
        self.feat.write(f.tobytes())

    def get(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        o_rgb, s_rgb, o_feat, s_feat = self.index[pos]
        self.rgb.seek(o_rgb)
        rgb = np.frombuffer(self.rgb.read(int(np.prod(s_rgb))), dtype=np.uint8).reshape(s_rgb)
        self.feat.seek(o_feat)
        feat = np.frombuffer(self.feat.read(int(np.prod(s_feat)) * 4), dtype=np.float32).reshape(s_feat)
        return rgb, feat

    def close(self) -> None:
        self.rgb.close()
        self.feat.close()


def _frame_source(
    video: str | os.PathLike | VideoClip, sampling: Sampling, info: StreamInfo, prepare: Callable
) -> Iterator[tuple[int, float, np.ndarray, Future]]:
    """Frames with their DINOv2 preprocessing already submitted to a thread pool.

    A background thread decodes and submits; the bounded queue keeps it at most a few
    dozen frames ahead, so decoding and preprocessing overlap the encoder's forward passes.
    """
    if isinstance(video, VideoClip):
        info.avg_fps, info.step, info.total = video.avg_fps, video.step, video.num_frames_total
        frames = zip(video.source_indices, video.timestamps, video.frames)
    else:
        wanted = planned_indices(video, sampling) if sampling.max_frames is not None else None
        frames = iter_frames(video, sampling, info, only=wanted)
    return iter(_Prefetch((i, t, *prepare(rgb)) for i, t, rgb in frames))


def encode_video(
    model,
    video: str | os.PathLike | VideoClip,
    sampling: Sampling | None = None,
    *,
    keep_all_below: int,
    arrays: bool = False,
    progress: bool = False,
) -> VisualFeatures:
    """Decode and encode a video into :class:`VisualFeatures`.

    Args:
        model: a loaded :class:`longvu.model.LongVUModel`.
        keep_all_below: if the video has fewer sampled frames than this, every frame is
            encoded (a question's frame budget may skip stage 1 for it); take the
            largest ``max_frames_dino`` any question can have.
        arrays: also collect the per-frame checksums of ``--trace-arrays``.
        progress: show a progress bar on stderr.
    """
    cfg = model.cfg
    sampling = sampling or Sampling()
    path = video.path if isinstance(video, VideoClip) else str(video)
    win = cfg.dino_window
    info = StreamInfo()
    t_start = time.perf_counter()
    timings = {"decode_wait": 0.0, "dino": 0.0, "siglip": 0.0, "connector": 0.0}
    stats: dict[str, list] = {}
    source_indices: list[int] = []
    timestamps: list[float] = []
    sims: list[torch.Tensor] = []
    sizes: list[int] = []
    survivors: list[int] = []
    hw: tuple[int, int] | None = None
    dino, siglip, conn = model.dinov2, model.siglip, model.connector

    bar = _progress_bar(path, sampling, progress)
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, torch.get_num_threads())))
    tmp = tempfile.TemporaryDirectory(prefix="longvu-")
    spill = _Spill(tmp.name)
    try:
        buf: list[tuple[int, np.ndarray, Future]] = []

        def flush() -> None:
            t0 = time.perf_counter()
            positions = [p for p, _, _ in buf]
            rgbs = [f for _, f, _ in buf]
            px = torch.from_numpy(np.stack([fut.result() for _, _, fut in buf]))
            feats = dino(px, cfg.aux_side)  # (w, 576, C)
            sim = window_similarity(feats.float())
            keep = set(select_in_window(sim, cfg.dino_threshold, cfg.fix_dino_middle_frame).tolist())
            sims.append(sim.cpu())
            sizes.append(len(buf))
            for i, pos in enumerate(positions):
                if i in keep:
                    survivors.append(pos)
                if i in keep or pos < keep_all_below:
                    spill.put(pos, rgbs[i], feats[i])
            if arrays:
                pd = px.double()
                _add(stats, "pixels_dino_sum_all", pd.sum((1, 2, 3)).numpy())
                _add(stats, "pixels_dino_sq_sum_all", (pd**2).sum((1, 2, 3)).numpy())
                fd = feats.double()
                _add(stats, "features_dino_sum_all", fd.sum((1, 2)).cpu().numpy())
                _add(stats, "features_dino_l2_all", fd.flatten(1).norm(dim=1).cpu().numpy())
                ps = torch.from_numpy(np.stack(list(pool.map(lambda f: preprocess_frame(f, siglip.spec), rgbs))))
                _add(stats, "pixels_siglip_sum_all", ps.double().sum((1, 2, 3)).numpy())
                _add(stats, "pixels_siglip_sq_sum_all", (ps.double() ** 2).sum((1, 2, 3)).numpy())
                if positions[0] == 0:
                    stats["pixels_dino_frame0_crop"] = [px[0, :, :16, :16].numpy().copy()]
                    stats["pixels_siglip_frame0_crop"] = [ps[0, :, :16, :16].numpy().copy()]
            buf.clear()
            timings["dino"] += time.perf_counter() - t0

        first_shape: list[tuple] = []

        def prepare(rgb: np.ndarray) -> tuple[np.ndarray, Future]:
            # Runs on the decode thread.  The reference uses the first frame's size for
            # every frame, so a frame of another size is resized to it.
            if not first_shape:
                first_shape.append(rgb.shape)
            elif rgb.shape != first_shape[0]:
                rgb = _resize_like(rgb, first_shape[0])
            return rgb, pool.submit(preprocess_frame, rgb, dino.spec)

        t_wait = time.perf_counter()
        for index, t, rgb, fut in _frame_source(video, sampling, info, prepare):
            timings["decode_wait"] += time.perf_counter() - t_wait
            if hw is None:
                hw = (int(rgb.shape[0]), int(rgb.shape[1]))
            buf.append((len(source_indices), rgb, fut))
            source_indices.append(int(index))
            timestamps.append(float(t))
            if len(buf) == win:
                flush()
                if len(sizes) % 32 == 0:
                    _release_freed_memory()
            if bar is not None:
                bar.update(1)
            t_wait = time.perf_counter()
        if buf:
            flush()
        n = len(source_indices)
        if n == 0:
            if info.total == 0:
                raise VideoError(f"{path}: no decodable video frame")
            raise VideoError(
                f"{path}: no frame in the requested time range (the video lasts {info.total / info.avg_fps:.2f}s)"
            )
        all_frames = n < keep_all_below
        if all_frames:
            stored = list(range(n))
        elif n >= win and len(survivors) > cfg.max_frames_cap:
            stored = cap_frames(survivors, cfg.max_frames_cap)
        else:
            stored = survivors

        # SigLIP on the frames that can be kept, then the connector, in chunks; the next
        # chunk's frames are read and preprocessed while the current one runs.
        def submit(part: list[int]) -> list[tuple[Future, np.ndarray]]:
            out = []
            for p in part:
                rgb, dfeat = spill.get(p)
                out.append((pool.submit(preprocess_frame, rgb, siglip.spec), dfeat))
            return out

        parts = [stored[i : i + cfg.encode_chunk] for i in range(0, len(stored), cfg.encode_chunk)]
        chunks = []
        pending = submit(parts[0]) if parts else []
        for k in range(len(parts)):
            current = pending
            pending = submit(parts[k + 1]) if k + 1 < len(parts) else []
            t0 = time.perf_counter()
            px = torch.from_numpy(np.stack([fut.result() for fut, _ in current]))
            sig = siglip(px, cfg.aux_side)
            t1 = time.perf_counter()
            dt = next(conn.parameters()).dtype
            dfeat = torch.from_numpy(np.stack([d for _, d in current])).to(device=sig.device, dtype=dt)
            with torch.inference_mode():
                aux = conn.project_aux([sig.to(dt), dfeat])
                sampled = conn.sample(aux, hw)
            chunks.append(sampled)
            timings["siglip"] += t1 - t0
            timings["connector"] += time.perf_counter() - t1
            if arrays:
                _add(stats, "features_siglip_l2", sig.double().flatten(1).norm(dim=1).cpu().numpy())
                for i, a in enumerate(aux):
                    _add(stats, f"hook_mm_projector_aux_{i}_0_frame_sum", a.double().sum((1, 2)).cpu().numpy())
                _add(stats, "hook_vision_sampler_0_0_frame_sum", sampled.double().sum(-1).cpu().numpy())
    finally:
        if bar is not None:
            bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
        spill.close()
        tmp.cleanup()
    timings["total"] = time.perf_counter() - t_start
    return VisualFeatures(
        path=path,
        source_indices=source_indices,
        timestamps=timestamps,
        avg_fps=info.avg_fps,
        step=info.step,
        num_frames_total=info.total,
        frame_hw=hw,
        similarity=torch.cat(sims),
        window_sizes=sizes,
        stored=stored,
        sampled=torch.cat(chunks),
        all_frames=all_frames,
        stats={k: np.concatenate(v) if k.endswith(("_all", "_sum", "_l2")) else v[0] for k, v in stats.items()},
        timings=timings,
    )


def _release_freed_memory() -> None:
    """Hand memory freed by finished windows back to the OS (glibc keeps it otherwise).

    Decoding, preprocessing and encoding allocate from several threads, and glibc's
    per-thread arenas hold on to freed blocks; without this, peak RSS creeps up with the
    video's length although nothing is kept.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (probe: not every libc has it)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _add(stats: dict[str, list], key: str, value: np.ndarray) -> None:
    stats.setdefault(key, []).append(value)


def _progress_bar(path: str, sampling: Sampling, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = None
    try:
        total = _estimate_sampled(path, sampling)
    except Exception:  # an estimate only: never fail the run for it
        total = None
    return tqdm(total=total, unit="frame", desc="encoding", leave=False, dynamic_ncols=True)


def _estimate_sampled(path: str, sampling: Sampling) -> int | None:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0)
        n = s.frames
        if not n and s.duration and s.time_base:
            n = int(float(s.duration * s.time_base) * fps)
        if not n or not fps:
            return None
    first = 0 if sampling.start is None else math.ceil(sampling.start * fps)
    last = n if sampling.end is None else min(n, math.ceil(sampling.end * fps))
    count = max(0, math.ceil((last - first) / sampling.step(fps)))
    return min(count, sampling.max_frames) if sampling.max_frames else count
