"""Video decoding and frame sampling (paper Sec. 3, input: frames sampled at 1 fps).

The reference samples source frames ``range(0, len(video), round(avg_fps))`` with
decord.  PyAV decodes the same frames bit for bit (checked against the golden
frames), so we decode every frame in order with PyAV and keep every ``step``-th
one, converting only the kept frames to RGB.

``fps``, ``max_frames``, ``start`` and ``end`` change which frames are kept; with
their defaults the selection is exactly the reference's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import VideoError


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video go into the model.

    Args:
        fps: frames per second to sample; the step between kept source frames is
            ``round(avg_fps / fps)`` (Python rounding, as the reference's
            ``round(avg_fps)`` at the default 1 fps).
        max_frames: if more frames are sampled, keep this many, evenly spaced.
        start: first second of the video to use (inclusive).
        end: last second of the video to use (exclusive).
    """

    fps: float = 1.0
    max_frames: int | None = None
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise VideoError(f"fps must be positive, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise VideoError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.start is not None and self.start < 0:
            raise VideoError(f"start must be >= 0 seconds, got {self.start}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise VideoError(f"end ({self.end}s) must be after start ({self.start}s)")

    def step(self, avg_fps: float) -> int:
        return max(1, round(avg_fps / self.fps))

    def keeps(self, index: int, avg_fps: float) -> bool:
        """Whether source frame ``index`` is sampled (``max_frames`` aside)."""
        first = 0 if self.start is None else math.ceil(self.start * avg_fps - 1e-9)
        if index < first or (index - first) % self.step(avg_fps):
            return False
        return self.end is None or index / avg_fps < self.end


@dataclass
class VideoClip:
    """Frames sampled from one video.

    Attributes:
        frames: ``[N, H, W, 3]`` uint8 RGB.
        source_indices: index of each kept frame in the decoded stream.
        timestamps: seconds of each kept frame (``index / avg_fps``).
    """

    path: str
    frames: np.ndarray
    source_indices: list[int]
    timestamps: list[float]
    avg_fps: float
    step: int
    num_frames_total: int

    @property
    def frame_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _open(path: str):
    import av  # imported here so `longvu --help` stays fast

    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file")
    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video file ({_ffmpeg_reason(e)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        what = "audio-only file" if kinds == ["audio"] else f"streams: {', '.join(kinds) or 'none'}"
        raise VideoError(f"{path}: no video stream ({what})")
    return container


def probe_video(path: str | os.PathLike) -> None:
    """Fail fast (a :class:`VideoError`) if ``path`` is not a readable file with a video stream."""
    _open(str(path)).close()


def _ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).strip().rstrip(".")


def probe_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError("the video stream has no frame rate")
    return float(Fraction(rate))


@dataclass
class StreamInfo:
    """What decoding learned about the stream: average fps, sampling step, frame count."""

    avg_fps: float = 0.0
    step: int = 1
    total: int = 0


def sampled_indices(total: int, avg_fps: float, sampling: Sampling) -> list[int]:
    """Source indices that :class:`Sampling` keeps out of ``total`` frames (``max_frames`` included)."""
    out = [i for i in range(total) if sampling.keeps(i, avg_fps)]
    if sampling.max_frames is not None and len(out) > sampling.max_frames:
        keep = np.linspace(0, len(out), sampling.max_frames, endpoint=False).astype(int).tolist()
        out = [out[i] for i in keep]
    return out


def planned_indices(path: str | os.PathLike, sampling: Sampling) -> set[int]:
    """The source indices to keep, known before decoding (counts the stream's packets).

    Needed when ``max_frames`` spreads frames over the whole video, so that frames can
    be picked while decoding instead of after.
    """
    total, fps = count_frames(path)
    return set(sampled_indices(total, fps, sampling))


def count_frames(path: str | os.PathLike) -> tuple[int, float]:
    """Frames in the video stream, counted from its packets without decoding, and its fps."""
    container = _open(str(path))
    try:
        stream = container.streams.video[0]
        return sum(1 for p in container.demux(stream) if p.size), probe_fps(stream)
    finally:
        container.close()


def iter_frames(
    path: str | os.PathLike,
    sampling: Sampling | None = None,
    info: StreamInfo | None = None,
    only: set[int] | None = None,
    thread_type: str = "SLICE",
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode ``path`` and yield ``(source_index, seconds, rgb[H, W, 3])`` per sampled frame.

    Frames come in order and only sampled frames are converted to RGB; every frame has the
    first sampled frame's size.  ``info`` (if
    given) is filled in as decoding goes; ``info.total`` is the number of decoded frames
    once the generator is exhausted.  ``max_frames`` is not applied here: pass the
    indices of :func:`planned_indices` as ``only``.  ``thread_type`` is PyAV's: ``SLICE``
    (the default) or ``AUTO`` (frame threading too: faster when the cores are otherwise
    idle, see :func:`longvu.devices.decode_threads`); the frames are the same either way.
    """
    import av

    sampling = sampling or Sampling()
    info = info if info is not None else StreamInfo()
    path = str(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        info.avg_fps = probe_fps(stream)
        info.step = sampling.step(info.avg_fps)
        first_shape = None
        try:
            for index, frame in enumerate(container.decode(stream)):
                info.total = index + 1
                if not sampling.keeps(index, info.avg_fps) or (only is not None and index not in only):
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                # The reference stacks frames into one array and uses the first frame's size for
                # all of them, so a resolution change mid-stream is resized to the first size.
                first_shape = first_shape or rgb.shape
                yield index, index / info.avg_fps, _resize_like(rgb, first_shape)
        except av.error.FFmpegError as e:
            raise VideoError(
                f"{path}: the video is corrupt or truncated after frame {info.total} ({_ffmpeg_reason(e)})"
            ) from None
    finally:
        container.close()


def load_video(path: str | os.PathLike, sampling: Sampling | None = None) -> VideoClip:
    """Decode and sample a video into memory (see :class:`Sampling`)."""
    sampling = sampling or Sampling()
    path = str(path)
    info = StreamInfo()
    frames: list[np.ndarray] = []
    indices: list[int] = []
    times: list[float] = []
    for index, t, rgb in iter_frames(path, sampling, info):
        frames.append(rgb)
        indices.append(index)
        times.append(t)
    if info.total == 0:
        raise VideoError(f"{path}: no decodable video frame")
    if not frames:
        raise VideoError(
            f"{path}: no frame in the requested time range (the video lasts {info.total / info.avg_fps:.2f}s)"
        )
    if sampling.max_frames is not None and len(frames) > sampling.max_frames:
        wanted = set(sampled_indices(info.total, info.avg_fps, sampling))
        keep = [i for i, idx in enumerate(indices) if idx in wanted]
        frames = [frames[i] for i in keep]
        indices = [indices[i] for i in keep]
        times = [times[i] for i in keep]
    return VideoClip(
        path=path,
        frames=np.stack(frames),
        source_indices=indices,
        timestamps=times,
        avg_fps=info.avg_fps,
        step=info.step,
        num_frames_total=info.total,
    )


def _resize_like(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if frame.shape == shape:
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((shape[1], shape[0]), Image.BICUBIC))
