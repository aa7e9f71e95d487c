"""Video decoding and frame sampling (paper Sec. 3, input: frames sampled at 1 fps).

**Sampling.** The reference samples source frames ``range(0, len(video), round(avg_fps))``
with decord.  PyAV decodes the same frames bit for bit (checked against the golden
frames), so we decode every frame in order with PyAV and keep every ``step``-th one,
converting only the kept frames to RGB.  ``fps``, ``max_frames``, ``start`` and ``end``
change which frames are kept; with their defaults the selection is exactly the reference's.

Files are opened through :mod:`longvu.model.intake`.

**Correctness beyond the reference** (decord ignores these; none changes which frames
are sampled):

* rotation metadata (the display matrix, read from the first sampled frame) is applied, so
  portrait phone videos are upright;
* timestamps are presentation times (PTS) relative to the first frame, so variable
  frame rate videos do not drift (``index / avg_fps`` when the stream has no PTS).  The
  *sampling* rule still counts decoded frames, as the reference does;
* attached pictures (cover art) are never taken for the video stream;
* every pixel format (10-bit included) is converted to 8-bit RGB by swscale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import Cancelled, VideoError
from .intake import NO_LIMITS, MediaLimits, VideoSource, ffmpeg_reason, open_container, probe_fps, source_name


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

    ``start`` and ``end`` select by decoded frame index (``index / avg_fps``), as the
    reference does, not by timestamp.
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


# ---------------------------------------------------------------------- results
@dataclass
class VideoClip:
    """Frames sampled from one video.

    Attributes:
        frames: ``[N, H, W, 3]`` uint8 RGB, upright, all of the first frame's size.
        source_indices: index of each kept frame in the decoded stream.
        timestamps: seconds of each kept frame (its PTS relative to the first frame's;
            ``index / avg_fps`` for a stream without PTS).
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


@dataclass
class StreamInfo:
    """What decoding learned about the stream: average fps, sampling step, frame count, first PTS."""

    avg_fps: float = 0.0
    step: int = 1
    total: int = 0
    first_pts: int | None = None

    def seconds(self, frame, index: int) -> float:
        """Seconds of decoded frame ``index`` since the first: by PTS (exact arithmetic), else by index."""
        if frame.pts is None or self.first_pts is None or frame.time_base is None:
            return index / self.avg_fps
        return float((frame.pts - self.first_pts) * Fraction(frame.time_base))


# ---------------------------------------------------------------------- frames
@dataclass(frozen=True)
class Orientation:
    """How to turn a stored frame upright: transpose (swap axes), then mirror columns and/or rows."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False

    @classmethod
    def of(cls, frame) -> Orientation:
        """From the frame's display matrix (side data), if any.

        The matrix maps a stored pixel ``(x, y)`` to ``(a x + c y, b x + d y)``, rows
        ``[a b u; c d v; ...]`` in 16.16 fixed point.  Phones store portrait video as
        landscape with such a matrix.  FFmpeg applies it only in its command-line tool, so
        we do it here; other angles are rounded to the nearest axis-aligned transform.
        Read once per video: PyAV's side-data view keeps its frame alive until the cyclic
        garbage collector runs, which costs tens of MB if done for every frame.
        """
        # lazy: av only on this path (the module imports without it)
        from av.sidedata.sidedata import Type

        sd = frame.side_data.get(Type.DISPLAYMATRIX)
        if sd is None:
            return cls()
        m = np.frombuffer(bytes(sd), dtype="<i4")[:9].reshape(3, 3).astype(float)
        a, b, c, d = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
        if abs(a) + abs(d) >= abs(b) + abs(c):  # axes stay: x' = a x, y' = d y
            return cls(False, bool(a < 0), bool(d < 0))
        return cls(True, bool(c < 0), bool(b < 0))  # axes swap: x' = c y, y' = b x

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb[H, W, 3]`` upright (``[W, H, 3]`` when the axes swap)."""
        if self == UPRIGHT:
            return rgb
        out = rgb.transpose(1, 0, 2) if self.transpose else rgb
        out = out[:, ::-1] if self.flip_x else out
        out = out[::-1] if self.flip_y else out
        return np.ascontiguousarray(out)


UPRIGHT = Orientation()


def to_rgb(frame) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of a decoded frame, with the colour matrix its stream is tagged with.

    An untagged frame gets swscale's default (BT.601), as decord gives it; a tagged one
    (BT.709, BT.2020 ...) is converted with its own matrix, as decord's FFmpeg does.  The
    matrix is passed explicitly because PyAV's default differs across versions: before
    PyAV 16 it ignores the tag (a BT.709 frame came out up to 38 levels off the reference).
    """
    cs = int(getattr(frame, "colorspace", 2) or 2)
    if cs in (0, 2):  # RGB or unspecified
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(format="rgb24", src_colorspace=cs, dst_colorspace="ITU601").to_ndarray()


def resize_like(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``frame`` resized (bicubic) to ``shape`` ``(H, W, 3)`` if it differs."""
    if frame.shape == shape:
        return frame
    # lazy: PIL only on this path (the module imports without it)
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((shape[1], shape[0]), Image.BICUBIC))


def evenly_spaced(items: list, at_most: int | None) -> list:
    """``items`` thinned to at most ``at_most``, evenly spread from the first (THE ``--max-frames`` rule,
    for ``ask`` and ``eval`` alike; ``None`` keeps all)."""
    if at_most is None or len(items) <= at_most:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items), at_most, endpoint=False).astype(int).tolist()]


def sampled_indices(total: int, avg_fps: float, sampling: Sampling) -> list[int]:
    """Source indices that :class:`Sampling` keeps out of ``total`` frames (``max_frames`` included)."""
    return evenly_spaced([i for i in range(total) if sampling.keeps(i, avg_fps)], sampling.max_frames)


def planned_indices(path: VideoSource, sampling: Sampling, limits: MediaLimits | None = None, cancel=None) -> set[int]:
    """The source indices to keep, known before decoding (counts the stream's packets).

    Needed when ``max_frames`` spreads frames over the whole video, so that frames can
    be picked while decoding instead of after.
    """
    total, fps = count_frames(path, limits, cancel)
    return set(sampled_indices(total, fps, sampling))


def count_frames(path: VideoSource, limits: MediaLimits | None = None, cancel=None) -> tuple[int, float]:
    """Frames in the video stream, counted from its packets without decoding, and its fps.

    ``limits.max_frames`` stops the count early (a :class:`MediaLimitError`), as does
    ``cancel`` (:class:`~longvu.errors.Cancelled`, checked every :data:`CANCEL_EVERY` packets).
    """
    # lazy: av only on this path (the module imports without it)
    import av

    source, path, limits = path, source_name(path), limits or NO_LIMITS
    with open_container(source, limits) as (container, stream):
        fps = probe_fps(stream, path)
        n = 0
        try:
            for i, packet in enumerate(container.demux(stream)):
                if i % CANCEL_EVERY == 0:
                    check_cancel(cancel)
                if packet.size:
                    n += 1
                    limits.check_progress(n, 0.0, path)
        except av.error.FFmpegError as e:
            raise VideoError(f"the video is corrupt ({ffmpeg_reason(e)})", path) from None
        return n, fps


# Decoded frames (or demuxed packets) between two looks at the cancel event: a few ms of decoding,
# whatever the sampling skips, so that a client that leaves frees the worker at once.
CANCEL_EVERY = 4


def check_cancel(cancel) -> None:
    """Raise :class:`~longvu.errors.Cancelled` if ``cancel`` (an object with ``is_set()``, or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def _decode(
    container, stream, limits: MediaLimits, path: str, info: StreamInfo, thread_type: str = "SLICE", cancel=None
) -> Iterator[tuple[int, object]]:
    """Every decoded frame as ``(index, av.VideoFrame)``, within ``limits``, until ``cancel`` is set."""
    # lazy: av only on this path (the module imports without it)
    import av

    stream.thread_type = thread_type  # SLICE unless the cores are free (the model is off the CPU)
    # The decoder's own bound stops it before it allocates a huge picture; the exact check is ours, per frame.
    stream.codec_context.options = {"max_pixels": str(limits.decoder_pixels)}
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index % CANCEL_EVERY == 0:
                check_cancel(cancel)
            if index == 0:  # a stream whose first frame has no PTS is timed by index throughout
                info.first_pts = frame.pts
            info.total = index + 1
            limits.check_size(frame.width, frame.height, path)
            clock = 0.0 if limits.max_seconds is None else max(info.seconds(frame, index), index / info.avg_fps)
            limits.check_progress(info.total, clock, path)
            yield index, frame
    except av.error.FFmpegError as e:
        cc = stream.codec_context  # the decoder's guard refused a larger picture: say so
        limits.check_size(cc.width, cc.height, path)
        raise VideoError(
            f"the video is corrupt or truncated after frame {info.total} ({ffmpeg_reason(e)})", path
        ) from None


def iter_frames(
    path: VideoSource,
    sampling: Sampling | None = None,
    info: StreamInfo | None = None,
    only: set[int] | None = None,
    *,
    limits: MediaLimits | None = None,
    thread_type: str = "SLICE",
    cancel=None,
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode ``path`` and yield ``(source_index, seconds, rgb[H, W, 3])`` per sampled frame.

    Frames come in order, upright, all of the first yielded frame's size (the reference
    stacks them into one array, so a resolution change mid-stream is resized away), and
    only sampled frames are converted to RGB.  ``info`` (if given) is filled in as
    decoding goes; ``info.total`` is the number of decoded frames once the generator is
    exhausted.  ``max_frames`` is not applied here: pass the indices of
    :func:`planned_indices` as ``only``.  A video that yields no frame is a
    :class:`VideoError`; one over ``limits`` a :class:`MediaLimitError`.  ``thread_type`` is
    PyAV's: ``SLICE`` (the default) or ``AUTO`` (frame threading too: faster when the cores are
    otherwise idle, see :func:`longvu.model.devices.decode_threads`); the frames are the same either way.
    ``cancel`` (an object with ``is_set()``) is checked every :data:`CANCEL_EVERY` decoded frames,
    sampled or not: :class:`~longvu.errors.Cancelled` once it is set.
    """
    sampling = sampling or Sampling()
    info = info if info is not None else StreamInfo()
    source, path, limits = path, source_name(path), limits or NO_LIMITS
    got = 0
    with open_container(source, limits) as opened:
        for item in sampled_frames(opened, path, sampling, info, only, limits, thread_type, cancel=cancel):
            got += 1
            yield item
    if info.total == 0:
        raise VideoError("no decodable video frame", path)
    if got == 0:
        raise VideoError(
            f"no frame in the requested time range (the video lasts {info.total / info.avg_fps:.2f}s)", path
        )


def sampled_frames(
    opened: tuple, path: str, sampling: Sampling, info: StreamInfo, only: set[int] | None = None,
    limits: MediaLimits = NO_LIMITS, thread_type: str = "SLICE", by_time_without_rate: bool = False, cancel=None,
) -> Iterator[tuple[int, float, np.ndarray]]:  # fmt: skip
    """:func:`iter_frames`'s frames from an open ``(container, stream)`` (a file's or a live stream's).

    ``by_time_without_rate``: a stream that declares no average frame rate (a browser's WebM) is
    sampled by its timestamps, ``1 / fps`` apart, instead of counting frames at a guessed rate.
    """
    container, stream = opened
    shape = orientation = None
    info.avg_fps = probe_fps(stream, path)
    info.step = sampling.step(info.avg_fps)
    due = None if not (by_time_without_rate and not stream.average_rate) else (sampling.start or 0.0)
    for index, frame in _decode(container, stream, limits, path, info, thread_type, cancel):
        if due is not None:  # by time: the first frame at or after each sampling instant
            t = info.seconds(frame, index)
            if t < due - 1e-6:
                continue
            due += math.floor((t - due) * sampling.fps + 1e-6) / sampling.fps + 1 / sampling.fps
        elif not sampling.keeps(index, info.avg_fps) or (only is not None and index not in only):
            continue
        orientation = orientation or Orientation.of(frame)
        rgb = orientation.apply(to_rgb(frame))
        shape = shape or rgb.shape
        yield index, info.seconds(frame, index), resize_like(rgb, shape)


def load_video(
    path: VideoSource, sampling: Sampling | None = None, *, limits: MediaLimits | None = None, cancel=None
) -> VideoClip:
    """Decode and sample a video into memory (see :class:`Sampling`)."""
    sampling = sampling or Sampling()
    info = StreamInfo()
    got = list(iter_frames(path, sampling, info, limits=limits, cancel=cancel))
    path = source_name(path)
    if sampling.max_frames is not None and len(got) > sampling.max_frames:
        wanted = set(sampled_indices(info.total, info.avg_fps, sampling))
        got = [g for g in got if g[0] in wanted]
    return VideoClip(
        path=path,
        frames=np.stack([rgb for _, _, rgb in got]),
        source_indices=[i for i, _, _ in got],
        timestamps=[t for _, t, _ in got],
        avg_fps=info.avg_fps,
        step=info.step,
        num_frames_total=info.total,
    )
