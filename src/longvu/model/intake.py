"""Video intake: every file is hostile until checked (paper Sec. 3 takes the frames as given).

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
* :class:`MediaLimits` bounds the work: each side, the aspect ratio and the pixels of a
  frame (on the header before decoding, then on every decoded frame), decoded frames and
  seconds by the stream's own clock, whatever the header claims.
* Probing decodes nothing: FFmpeg's stream probe (``avformat_find_stream_info``) would
  decode a frame of every stream, so a small file with a 64x64 stream beside six 8192x8192
  ones cost GBs before any check.  The probe may open no decoder (the sizes and rates we
  read come from the codec parameters and packet times), a file may have at most
  :data:`MAX_STREAMS` streams, and only the chosen stream is ever decoded.

Decoding and sampling the frames is :mod:`longvu.model.video`.
"""

from __future__ import annotations

import math
import os
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

from ..errors import MediaLimitError, VideoError

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

# Streams a file may have (FFmpeg's ``max_streams``; its default is 1000).  Real files have
# a video, a few audio and some subtitle streams; every stream costs a probe decoder.
MAX_STREAMS = 64


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MediaLimits:
    """Bounds on the work one video (or image frame) may cost; ``None`` is no bound.

    The size bounds are checked on the header (the stream's codec parameters, an image's
    header) before anything that grows with the size is allocated, and again on every
    decoded frame, so a stream with no size or duration in its header (raw ``.h264``) or a
    patched header is stopped all the same.  Going over one raises
    :class:`~longvu.errors.MediaLimitError`; a frame under :data:`MIN_SIDE` a side is a
    :class:`~longvu.errors.VideoError` whatever the limits.

    Args:
        max_seconds: longest video, by the stream's own clock (frame PTS, or the decoded
            frame count over the frame rate, whichever is later).
        max_frames: most frames decoded (not sampled): the bound on decoding cost,
            whatever the timestamps say.  A server should set it with ``max_seconds``.
        max_pixels: largest frame, width x height.  Also given to the decoder, which
            then refuses to allocate a larger picture.
        max_side: longest width or height.  The default (16384) passes 8K and 16K video.
        max_aspect: longest side over shortest.  Preprocessing pads a frame to a square of
            its long side, so a 1,000,000x1 frame of one megapixel costs like a square
            terapixel one; the default (8) passes every real shape (4K 16:9, 21:9 and 32:9
            wide screens, 9:16 and 9:21 phone video, 2:1 panoramas) and keeps at least one
            row of the model's coarsest (8x8) token grid.
    """

    max_seconds: float | None = None
    max_frames: int | None = None
    max_pixels: int | None = None
    max_side: int | None = 16384
    max_aspect: float | None = 8.0

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_frames", "max_pixels", "max_side", "max_aspect"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise VideoError(f"MediaLimits.{name} must be positive, got {value}")
        if self.max_aspect is not None and self.max_aspect < 1:
            raise VideoError(f"MediaLimits.max_aspect must be at least 1, got {self.max_aspect}")

    def check_size(self, width: int, height: int, path: str | None, *, header: bool = False) -> None:
        """Refuse a frame of ``width`` x ``height`` over the bounds, or under :data:`MIN_SIDE`.

        ``header``: the size comes from a header, where 0 means "not said" (checked again
        on the decoded frames).
        """
        if header and (width <= 0 or height <= 0):
            return
        what = f"frames of {width}x{height}"
        if self.max_side is not None and max(width, height) > self.max_side:
            raise MediaLimitError(f"{what} are over the limit of {self.max_side} pixels a side", path,
                                  limit="max_side")  # fmt: skip
        if self.max_aspect is not None and max(width, height) > self.max_aspect * min(width, height):
            raise MediaLimitError(f"{what} are more than {self.max_aspect:g} times longer than wide", path,
                                  limit="max_aspect")  # fmt: skip
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise MediaLimitError(f"{what} are larger than the limit of {self.max_pixels} pixels", path,
                                  limit="max_pixels")  # fmt: skip
        if min(width, height) < MIN_SIDE:
            raise VideoError(f"{what} are too small (at least {MIN_SIDE} pixels a side)", path)

    def check_progress(self, frames: int, seconds: float, path: str | None) -> None:
        """After ``frames`` decoded frames reaching ``seconds`` into the stream."""
        if self.max_frames is not None and frames > self.max_frames:
            raise MediaLimitError(
                f"the video has more than {self.max_frames} frames (the limit)", path, limit="max_frames"
            )
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise MediaLimitError(
                f"the video lasts more than {self.max_seconds:g}s (the limit)", path, limit="max_seconds"
            )

    @property
    def decoder_pixels(self) -> int:
        """The decoder's own ``max_pixels``: it counts padded sizes, so it gets headroom; ours is exact."""
        largest = self.max_pixels or (self.max_side or 1 << 16) ** 2
        return 2 * largest + (1 << 16)


# Frames smaller than this a side are refused: the model's coarse token grid divides the
# frame's sides by 1.5, and a side of 0 tokens breaks unpadding (64 frames of 1x1 gave a 500).
MIN_SIDE = 2

NO_LIMITS = MediaLimits()


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


class HeldFile:
    """A file opened once and read only through that descriptor: what was checked is what is read.

    A server opens a client's local path without following links
    (:func:`longvu.files.open_beneath`) and passes this object wherever a path goes (probe,
    frame count, decoding, the feature cache's hash, the file served to the page).  Each
    :meth:`reader` reads the same open file at its own position (``os.pread``), so a name
    swapped for a link meanwhile changes nothing.  :meth:`close` may come while a reader is
    still at work (a request that ended while its job stops): the descriptor is closed when
    the last reader is, so its number is never reused under a reader.  ``name`` is for
    messages only.  Sent to another process (a Ray replica), it becomes its name: a
    descriptor cannot travel.
    """

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name
        self._lock, self._readers, self._closing = threading.Lock(), 0, False

    def reader(self) -> _FdReader:
        """A new reader at position 0; a :class:`VideoError` once the file is closed."""
        with self._lock:
            if self._closing:
                raise VideoError("the file was closed", self.name)
            self._readers += 1
        return _FdReader(self)

    def _release(self) -> None:
        with self._lock:
            self._readers -= 1
            last = self._closing and self._readers == 0
        if last:
            self._close_fd()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._readers == 0
        if idle:
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> HeldFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):
        return (str, (self.name,))


class _FdReader:
    """A read-only file object on a :class:`HeldFile`'s descriptor, with its own position."""

    def __init__(self, held: HeldFile) -> None:
        self.held, self.fd, self.pos = held, held.fd, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size() - self.pos)
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size()}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def fileno(self) -> int:
        return self.fd

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self.held._release()

    def __enter__(self) -> _FdReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


VideoSource = str | os.PathLike | HeldFile  # what the intake opens


def source_name(source: VideoSource) -> str:
    """The name of a video source, for messages (a :class:`HeldFile` is never opened by it)."""
    return source.name if isinstance(source, HeldFile) else os.fspath(source)


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


def _open_regular_file(source: VideoSource, path: str):
    """Open ``source`` for reading if it is a regular, non-empty file; else a :class:`VideoError`."""
    if isinstance(source, HeldFile):
        reader = source.reader()
        st = os.fstat(reader.fileno())
        if _stat_kind(st.st_mode) is not None or st.st_size == 0:
            reader.close()
            raise VideoError(_stat_kind(st.st_mode) or "empty file", path)
        return reader
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


def ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or type(e).__name__
    return " ".join(str(msg).split()).rstrip(".")


def _container_options(formats: tuple[str, ...] | None) -> dict[str, str]:
    options = {
        "protocol_whitelist": "",  # empty: no protocol at all for nested opens
        "max_streams": str(MAX_STREAMS),
        # The decoders FFmpeg's probe opens may be none of them: a frame of every stream would be
        # decoded otherwise.  (Per-stream probe options, e.g. skip_frame, cannot be used: PyAV 15
        # sizes their array by the streams known before the probe, and formats that find their
        # streams while probing, like MPEG-PS, then write past it.)  The decoder we open for the
        # chosen stream is a new one, not bound by this list.
        "codec_whitelist": "none",
    }
    if formats is not None:
        options["format_whitelist"] = ",".join(formats)
    return options


def _einval_errors() -> tuple[type[Exception], ...]:
    """PyAV's exception for EINVAL: ``ArgumentError`` since PyAV 16, ``ValueError`` before."""
    # lazy: av only on this path (the module imports without it)
    import av

    return tuple(getattr(av.error, n) for n in ("ArgumentError", "ValueError") if hasattr(av.error, n))


def _open_av(f, path: str):
    # lazy: av only on this path (the module imports without it)
    import av

    options = _container_options(CONTAINER_FORMATS)
    source = _Unnamed(f) if hasattr(f, "seek") else f  # no seek: FFmpeg reads it as a stream (a pipe, a live feed)
    try:
        return av.open(source, container_options=options, io_open=_refuse_nested_open, metadata_errors="replace")
    except _NestedOpen:
        raise VideoError("not a readable video file (it refers to other files or URLs)", path) from None
    except _einval_errors():  # EINVAL: a demuxer outside the whitelist, or a refused nested open
        raise VideoError(
            "not a readable video file (accepted: mp4/mov, mkv/webm, avi, ts, mpg, flv, wmv, ogg, ivf,"
            " raw h264/hevc/mpeg-4)",
            path,
        ) from None
    except av.error.FFmpegError as e:
        raise VideoError(f"not a readable video file ({ffmpeg_reason(e)})", path) from None


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
def open_container(source: VideoSource, limits: MediaLimits):
    """Open ``source`` as described in the module docstring; yields ``(container, video stream)``."""
    with _open_checked(source, limits) as (container, stream, _):
        yield container, stream


@contextmanager
def _open_checked(source: VideoSource, limits: MediaLimits):
    """:func:`open_container`, also yielding the stream's ``(width, height)`` (``(0, 0)``: not known before decoding)."""
    path = source_name(source)
    f = _open_regular_file(source, path)
    try:
        _refuse_text(f.read(4096), path)
        f.seek(0)
        with open_stream(f, path, limits) as opened:
            yield opened
    finally:
        f.close()


@contextmanager
def open_stream(f, path: str, limits: MediaLimits):
    """Open an already checked file object the same way; yields ``(container, video stream, (width, height))``.

    ``f`` without ``seek`` is read as a stream, front to back (a pipe, a growing file: see
    :mod:`longvu.model.live`); its first bytes must have been through the text check.  Its size is
    then the codec parameters' (``(0, 0)`` if they have none: every decoded frame is checked anyway).
    """
    container = _open_av(f, path)
    try:
        stream = _video_stream(container, path)
        cc = stream.codec_context
        size = _stream_size(stream, f, path, limits) if hasattr(f, "seek") else (int(cc.width), int(cc.height))
        limits.check_size(*size, path, header=True)
        yield container, stream, size
    finally:
        container.close()


def refuse_text(head: bytes, path: str) -> None:
    """Refuse the first bytes of a would-be video that are text (see :func:`_refuse_text`)."""
    _refuse_text(head, path)


def _stream_size(stream, f, path: str, limits: MediaLimits) -> tuple[int, int]:
    """The stream's frame size: from its codec parameters, else from its first frame, decoded on its own.

    Some codecs (MPEG-4 part 2 in MP4, raw streams) give their size only to a decoder, and
    the probe decodes nothing (see the module docstring): the first frame is decoded by a
    decoder of its own, bounded by ``limits``, on a second demuxer of the same open file.
    """
    cc = stream.codec_context
    if cc.width > 0 and cc.height > 0:
        return int(cc.width), int(cc.height)
    # lazy: av only on this path (the module imports without it)
    import av

    pos = f.tell()
    try:
        f.seek(0)
        peek = _open_av(f, path)
        try:
            s = peek.streams[stream.index]
            s.codec_context.options = {"max_pixels": str(limits.decoder_pixels)}
            for frame in peek.decode(s):
                return int(frame.width), int(frame.height)
        except av.error.FFmpegError:
            pass  # decoding the stream gives the error
        finally:
            peek.close()
    finally:
        f.seek(pos)
    return 0, 0


def open_video(path: VideoSource, limits: MediaLimits | None = None):
    """Open a video the only accepted way: ``with open_video(path) as (container, stream): ...``.

    A regular file, its container format chosen by content from the allow-list, no nested
    opens, the real video stream (see the module docstring); anything else is a VideoError.
    """
    return open_container(path, limits or NO_LIMITS)


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


def probe_video(source: VideoSource, limits: MediaLimits | None = None) -> MediaInfo:
    """Check that ``path`` is an accepted video file and read its header.

    Fails fast (a :class:`VideoError`) on anything :func:`iter_frames` would refuse
    before decoding, including a header that is over ``limits`` (a header under them
    proves nothing: decoding checks again).
    """
    path, limits = source_name(source), limits or NO_LIMITS
    with _open_checked(source, limits) as (container, stream, (width, height)):
        cc = stream.codec_context
        duration = _header_duration(container, stream)
        if duration is not None:
            limits.check_progress(0, duration, path)
        return MediaInfo(
            format=container.format.name,
            codec=cc.name,
            width=width,
            height=height,
            avg_fps=probe_fps(stream, path),
            duration=duration,
            frames=int(stream.frames) or None,
        )
