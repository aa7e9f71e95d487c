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
* :class:`MediaLimits` bounds the work while decoding (pixels per frame, decoded frames,
  seconds by the stream's own clock), whatever the header claims.

Decoding and sampling the frames is :mod:`longvu.model.video`.
"""

from __future__ import annotations

import os
import stat
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


def ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or type(e).__name__
    return " ".join(str(msg).split()).rstrip(".")


def _container_options(formats: tuple[str, ...] | None) -> dict[str, str]:
    options = {"protocol_whitelist": ""}  # empty: no protocol at all for nested opens
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
def open_container(path: str, limits: MediaLimits):
    """Open ``path`` as described in the module docstring; yields ``(container, video stream)``."""
    f = _open_regular_file(path)
    try:
        _refuse_text(f.read(4096), path)
        f.seek(0)
        with open_stream(f, path, limits) as opened:
            yield opened
    finally:
        f.close()


@contextmanager
def open_stream(f, path: str, limits: MediaLimits):
    """Open an already checked file object the same way; yields ``(container, video stream)``.

    ``f`` without ``seek`` is read as a stream, front to back (a pipe, a growing file: see
    :mod:`longvu.model.live`); its first bytes must have been through the text check.
    """
    container = _open_av(f, path)
    try:
        stream = _video_stream(container, path)
        limits.check_size(stream.codec_context.width, stream.codec_context.height, path)
        yield container, stream
    finally:
        container.close()


def refuse_text(head: bytes, path: str) -> None:
    """Refuse the first bytes of a would-be video that are text (see :func:`_refuse_text`)."""
    _refuse_text(head, path)


def open_video(path: str | os.PathLike, limits: MediaLimits | None = None):
    """Open a video the only accepted way: ``with open_video(path) as (container, stream): ...``.

    A regular file, its container format chosen by content from the allow-list, no nested
    opens, the real video stream (see the module docstring); anything else is a VideoError.
    """
    return open_container(os.fspath(path), limits or NO_LIMITS)


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
    with open_container(path, limits) as (container, stream):
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
