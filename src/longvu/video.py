"""Video intake, decoding and frame sampling (paper Sec. 3, input: frames sampled at 1 fps).

**Sampling.** The reference samples source frames ``range(0, len(video), round(avg_fps))``
with decord.  PyAV decodes the same frames bit for bit (checked against the golden
frames), so we decode every frame in order with PyAV and keep every ``step``-th one,
converting only the kept frames to RGB.  ``fps``, ``max_frames``, ``start`` and ``end``
change which frames are kept; with their defaults the selection is exactly the reference's.

**Intake: every file is hostile until checked.**

* Only regular files are opened (a directory, fifo or device is refused), and the file is
  opened once by us: FFmpeg reads it through a Python file object and never sees its name.
* The demuxer is chosen by FFmpeg's content probe alone (no name, so no extension hint)
  and must be in :data:`CONTAINER_FORMATS` (FFmpeg's ``format_whitelist`` refuses any
  other demuxer before it reads a byte past the probe).  Playlists and lists of other
  files (HLS, concat, DASH, SDP, image sequences, ...) are never demuxed.
* Nothing but that one file is read: the protocol whitelist is empty (a nested open of
  ``file:``, ``http:``, ``data:``, ``subfile:`` ... fails) and nested opens through the
  demuxer's I/O callback are refused.  Either alone stops the concat and HLS tricks;
  the tests check each layer on its own.
* :class:`MediaLimits` bounds the work while decoding (pixels per frame, decoded frames,
  seconds by the stream's own clock), whatever the header claims.

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
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import MediaLimitError, VideoError

# Demuxers (FFmpeg names) a video may be read with: self-contained containers and raw
# elementary streams.  None of them opens other files.
CONTAINER_FORMATS = (
    "mov",  # also mp4, m4v, 3gp (FFmpeg's "mov,mp4,m4a,3gp,3g2,mj2")
    "matroska",  # also webm
    "avi",
    "mpegts",
    "mpeg",  # MPEG program stream (.mpg, .vob)
    "flv",
    "asf",  # .wmv
    "ogg",
    "ivf",  # raw VP8/VP9/AV1
    "h264",
    "hevc",
    "m4v",  # raw MPEG-4 part 2
)

# First bytes of text files that name other media; matched only to say what was refused.
_REFERENCE_KINDS = (
    (b"#EXTM3U", "an HLS/M3U playlist"),
    (b"#EXT", "an M3U playlist"),
    (b"ffconcat", "an FFmpeg concat list"),
    (b"file ", "an FFmpeg concat list"),
    (b"<MPD", "a DASH manifest"),
    (b"<?xml", "an XML manifest"),
    (b"v=0", "an SDP session description"),
    (b"[playlist]", "a PLS playlist"),
    (b"data:", "a data: URL"),
)

_ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MediaLimits:
    """Bounds on the work one video may cost; ``None`` is no bound (the CLI's default).

    Each is enforced while decoding, from the frames themselves, so a stream with no
    duration in its header (raw ``.h264``) or a patched header is stopped all the same.
    Going over one raises :class:`~longvu.errors.MediaLimitError`.

    Args:
        max_seconds: longest video, by the stream's own clock (frame PTS, or the decoded
            frame count over the frame rate, whichever is later).
        max_frames: most frames decoded (not sampled): the bound on decoding cost,
            whatever the timestamps say.  A server should set it with ``max_seconds``.
        max_pixels: largest frame, width x height.  Also given to the decoder, which
            then refuses to allocate a larger picture.
    """

    max_seconds: float | None = None
    max_frames: int | None = None
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_frames", "max_pixels"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise VideoError(f"MediaLimits.{name} must be positive, got {value}")

    def check_size(self, width: int, height: int, path: str) -> None:
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise MediaLimitError(
                f"frames of {width}x{height} are larger than the limit of {self.max_pixels} pixels",
                path,
                limit="max_pixels",
            )

    def check_progress(self, frames: int, seconds: float, path: str) -> None:
        """After ``frames`` decoded frames reaching ``seconds`` into the stream."""
        if self.max_frames is not None and frames > self.max_frames:
            raise MediaLimitError(
                f"the video has more than {self.max_frames} frames (the limit)", path, limit="max_frames"
            )
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise MediaLimitError(
                f"the video lasts more than {self.max_seconds:g}s (the limit)", path, limit="max_seconds"
            )


NO_LIMITS = MediaLimits()


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


@dataclass(frozen=True)
class MediaInfo:
    """What the header of an accepted video says (hints: decoding is what counts).

    ``width`` and ``height`` are as stored (before rotation); ``duration`` and ``frames``
    are ``None`` when the header does not say.
    """

    format: str
    codec: str
    width: int
    height: int
    avg_fps: float
    duration: float | None
    frames: int | None


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


# ---------------------------------------------------------------------- intake
class _Unnamed:
    """A read-only view of an open file with no ``name``: FFmpeg must not learn the path.

    PyAV passes a file object's ``name`` to FFmpeg, which would use its extension when
    probing and resolve relative references against it.
    """

    def __init__(self, raw) -> None:
        self._raw = raw

    def read(self, n: int) -> bytes:
        return self._raw.read(n)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


class _NestedOpen(Exception):
    """Raised by our I/O callback: the demuxer tried to open another file or URL."""


def _refuse_nested_open(url: str, flags: int, options: dict):
    raise _NestedOpen()


def _os_reason(e: OSError) -> str:
    return (e.strerror or type(e).__name__).lower()


def _stat_kind(mode: int) -> str | None:
    """Why a file of this mode is not a video file (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a video file"
    if stat.S_ISFIFO(mode):
        return "is a fifo, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    return "is not a regular file"


def _open_regular_file(path: str):
    """Open ``path`` for reading if it is a regular, non-empty file; else a :class:`VideoError`."""
    try:
        st = os.stat(path)
        if _stat_kind(st.st_mode) is None:  # only then open: opening a device can have effects
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
        else:
            fd = None
    except ValueError:  # os.stat's "embedded null byte"
        raise VideoError("the path contains a NUL byte", path) from None
    except FileNotFoundError:
        raise VideoError("no such file", path) from None
    except OSError as e:
        raise VideoError(f"cannot open the file ({_os_reason(e)})", path) from None
    if fd is None:
        raise VideoError(_stat_kind(st.st_mode), path)
    st = os.fstat(fd)  # the file we opened, whatever the path points to by now
    if _stat_kind(st.st_mode) is not None or st.st_size == 0:
        os.close(fd)
        raise VideoError(_stat_kind(st.st_mode) or "empty file", path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=1 << 16)


def _refuse_text(head: bytes, path: str) -> None:
    """Refuse a text file, naming what kind of reference list it is when we know.

    Every allowed container is binary; the format whitelist refuses these anyway, this
    only gives a clearer message.
    """
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if b"\0" in head or not text:
        return
    for magic, kind in _REFERENCE_KINDS:
        if text[: len(magic)].lower() == magic.lower():
            raise VideoError(f"not a readable video file (it is {kind}, which refers to other files or URLs)", path)
    printable = sum(32 <= b < 127 or b in b"\t\r\n" for b in head)
    if printable >= 0.95 * len(head):
        raise VideoError("not a readable video file (it is text)", path)


def _ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or type(e).__name__
    return " ".join(str(msg).split()).rstrip(".")


def _container_options(formats: tuple[str, ...] | None) -> dict[str, str]:
    options = {"protocol_whitelist": ""}  # empty: no protocol at all for nested opens
    if formats is not None:
        options["format_whitelist"] = ",".join(formats)
    return options


def _einval_errors() -> tuple[type[Exception], ...]:
    """PyAV's exception for EINVAL: ``ArgumentError`` since PyAV 16, ``ValueError`` before."""
    import av

    return tuple(getattr(av.error, n) for n in ("ArgumentError", "ValueError") if hasattr(av.error, n))


def _open_av(f, path: str):
    import av

    options = _container_options(CONTAINER_FORMATS)
    try:
        return av.open(_Unnamed(f), container_options=options, io_open=_refuse_nested_open, metadata_errors="replace")
    except _NestedOpen:
        raise VideoError("not a readable video file (it refers to other files or URLs)", path) from None
    except _einval_errors():  # EINVAL: a demuxer outside the whitelist, or a refused nested open
        raise VideoError(
            "not a readable video file (accepted: mp4/mov, mkv/webm, avi, ts, mpg, flv, wmv, ogg, ivf,"
            " raw h264/hevc/mpeg-4)",
            path,
        ) from None
    except av.error.FFmpegError as e:
        raise VideoError(f"not a readable video file ({_ffmpeg_reason(e)})", path) from None


def _video_stream(container, path: str):
    """The video stream: the first one that is not an attached picture (cover art) and has a decoder."""
    pictures = undecodable = 0
    for s in container.streams.video:
        disposition = getattr(s, "disposition", 0)
        if getattr(disposition, "value", disposition) & _ATTACHED_PIC:
            pictures += 1
        elif s.codec_context is None:
            undecodable += 1
        else:
            return s
    kinds = sorted({s.type for s in container.streams})
    if undecodable:
        raise VideoError("the video codec is unknown or not supported", path)
    if pictures:
        raise VideoError("no video stream (only a cover picture)", path)
    what = "audio-only file" if kinds == ["audio"] else f"streams: {', '.join(kinds) or 'none'}"
    raise VideoError(f"no video stream ({what})", path)


@contextmanager
def _open(path: str, limits: MediaLimits):
    """Open ``path`` as described in the module docstring; yields ``(container, video stream)``."""
    f = _open_regular_file(path)
    try:
        _refuse_text(f.read(4096), path)
        f.seek(0)
        container = _open_av(f, path)
        try:
            stream = _video_stream(container, path)
            limits.check_size(stream.codec_context.width, stream.codec_context.height, path)
            yield container, stream
        finally:
            container.close()
    finally:
        f.close()


def open_video(path: str | os.PathLike, limits: MediaLimits | None = None):
    """Open a video the only accepted way: ``with open_video(path) as (container, stream): ...``.

    A regular file, its container format chosen by content from the allow-list, no nested
    opens, the real video stream (see the module docstring); anything else is a VideoError.
    """
    return _open(os.fspath(path), limits or NO_LIMITS)


def probe_fps(stream, path: str | None = None) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError("the video stream has no frame rate", path)
    return float(Fraction(rate))


def _header_duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def probe_video(path: str | os.PathLike, limits: MediaLimits | None = None) -> MediaInfo:
    """Check that ``path`` is an accepted video file and read its header.

    Fails fast (a :class:`VideoError`) on anything :func:`iter_frames` would refuse
    before decoding, including a header that is over ``limits`` (a header under them
    proves nothing: decoding checks again).
    """
    path, limits = os.fspath(path), limits or NO_LIMITS
    with _open(path, limits) as (container, stream):
        cc = stream.codec_context
        duration = _header_duration(container, stream)
        if duration is not None:
            limits.check_progress(0, duration, path)
        return MediaInfo(
            format=container.format.name,
            codec=cc.name,
            width=int(cc.width),
            height=int(cc.height),
            avg_fps=probe_fps(stream, path),
            duration=duration,
            frames=int(stream.frames) or None,
        )


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
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((shape[1], shape[0]), Image.BICUBIC))


_resize_like = resize_like  # encode.py imports this name until it relies on iter_frames' resizing


def sampled_indices(total: int, avg_fps: float, sampling: Sampling) -> list[int]:
    """Source indices that :class:`Sampling` keeps out of ``total`` frames (``max_frames`` included)."""
    out = [i for i in range(total) if sampling.keeps(i, avg_fps)]
    if sampling.max_frames is not None and len(out) > sampling.max_frames:
        keep = np.linspace(0, len(out), sampling.max_frames, endpoint=False).astype(int).tolist()
        out = [out[i] for i in keep]
    return out


def planned_indices(path: str | os.PathLike, sampling: Sampling, limits: MediaLimits | None = None) -> set[int]:
    """The source indices to keep, known before decoding (counts the stream's packets).

    Needed when ``max_frames`` spreads frames over the whole video, so that frames can
    be picked while decoding instead of after.
    """
    total, fps = count_frames(path, limits)
    return set(sampled_indices(total, fps, sampling))


def count_frames(path: str | os.PathLike, limits: MediaLimits | None = None) -> tuple[int, float]:
    """Frames in the video stream, counted from its packets without decoding, and its fps.

    ``limits.max_frames`` stops the count early (a :class:`MediaLimitError`).
    """
    import av

    path, limits = os.fspath(path), limits or NO_LIMITS
    with _open(path, limits) as (container, stream):
        fps = probe_fps(stream, path)
        n = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    n += 1
                    limits.check_progress(n, 0.0, path)
        except av.error.FFmpegError as e:
            raise VideoError(f"the video is corrupt ({_ffmpeg_reason(e)})", path) from None
        return n, fps


def _decode(
    container, stream, limits: MediaLimits, path: str, info: StreamInfo, thread_type: str = "SLICE"
) -> Iterator[tuple[int, object]]:
    """Every decoded frame as ``(index, av.VideoFrame)``, within ``limits``."""
    import av

    stream.thread_type = thread_type  # SLICE unless the cores are free (the model is off the CPU)
    if limits.max_pixels is not None:
        # The decoder's own bound stops it before it allocates a huge picture; it counts
        # padded sizes, so it gets headroom and the exact check is ours, per frame.
        stream.codec_context.options = {"max_pixels": str(2 * limits.max_pixels + (1 << 16))}
    try:
        for index, frame in enumerate(container.decode(stream)):
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
            f"the video is corrupt or truncated after frame {info.total} ({_ffmpeg_reason(e)})", path
        ) from None


def iter_frames(
    path: str | os.PathLike,
    sampling: Sampling | None = None,
    info: StreamInfo | None = None,
    only: set[int] | None = None,
    *,
    limits: MediaLimits | None = None,
    thread_type: str = "SLICE",
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
    otherwise idle, see :func:`longvu.devices.decode_threads`); the frames are the same either way.
    """
    sampling = sampling or Sampling()
    info = info if info is not None else StreamInfo()
    path, limits = os.fspath(path), limits or NO_LIMITS
    shape = orientation = None
    with _open(path, limits) as (container, stream):
        info.avg_fps = probe_fps(stream, path)
        info.step = sampling.step(info.avg_fps)
        for index, frame in _decode(container, stream, limits, path, info, thread_type):
            if not sampling.keeps(index, info.avg_fps) or (only is not None and index not in only):
                continue
            orientation = orientation or Orientation.of(frame)
            rgb = orientation.apply(to_rgb(frame))
            shape = shape or rgb.shape
            yield index, info.seconds(frame, index), resize_like(rgb, shape)
    if info.total == 0:
        raise VideoError("no decodable video frame", path)
    if shape is None:
        raise VideoError(
            f"no frame in the requested time range (the video lasts {info.total / info.avg_fps:.2f}s)", path
        )


def load_video(
    path: str | os.PathLike, sampling: Sampling | None = None, *, limits: MediaLimits | None = None
) -> VideoClip:
    """Decode and sample a video into memory (see :class:`Sampling`)."""
    sampling = sampling or Sampling()
    path = os.fspath(path)
    info = StreamInfo()
    got = list(iter_frames(path, sampling, info, limits=limits))
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
