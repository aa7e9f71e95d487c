"""Intake of a video that is still being written: a growing file or a readable stream.

The paper takes a finished video; a live one arrives byte by byte.  :class:`LiveSource`
is the file object FFmpeg reads such a video through: its ``read`` waits for more bytes
at the current end instead of ending, until the end is declared (:meth:`LiveSource.end`),
detected (a pipe's end of file, or a file that stopped growing for ``idle_end_s``), or the
reader is closed.  It has no ``seek`` and no ``name``, so FFmpeg demuxes it front to back
as it would a pipe, without the path.

Everything else is the intake of files (:mod:`longvu.model.intake`): the demuxer chosen by
content from the same allow-list, no nested opens, text refused, :class:`MediaLimits`
enforced frame by frame as the stream is decoded.  Only streamable containers can be
followed: MPEG-TS, Matroska/WebM and fragmented MP4 (an MP4 whose index is written at
the end cannot be read before it is finished).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import VideoError
from .intake import NO_LIMITS, MediaLimits, _stat_kind, open_stream, refuse_text
from .video import Sampling, StreamInfo, sampled_frames

HEAD_BYTES = 4096  # the bytes the text check looks at before FFmpeg probes


@dataclass(frozen=True)
class FollowOptions:
    """How a growing source is followed.

    Args:
        idle_end_s: a growing *file* that has not grown for this long is taken as finished
            (its writer is gone); None: only :meth:`LiveSource.end` ends it.  Pipes end at
            their end of file.
        poll_s: how often a file is checked for new bytes while none are there.
        max_backlog: sampled frames queued for the encoder at most; when a new frame finds
            the queue full, every other queued frame is dropped (the encoder is behind: it
            catches up at a sparser sampling and keeps the newest frames).  None: never drop,
            decoding waits for the encoder (the stream's bytes wait in the file or pipe).
    """

    idle_end_s: float | None = 30.0
    poll_s: float = 0.05
    max_backlog: int | None = 32

    def __post_init__(self) -> None:
        if self.max_backlog is not None and self.max_backlog < 2:
            raise VideoError(f"max_backlog must be at least 2 frames, got {self.max_backlog}")
        if self.idle_end_s is not None and not self.idle_end_s > 0:
            raise VideoError(f"idle_end_s must be positive, got {self.idle_end_s}")
        if not self.poll_s > 0:
            raise VideoError(f"poll_s must be positive, got {self.poll_s}")


class LiveSource:
    """A binary reader over a growing file or a stream whose ``read`` waits for data.

    Thread-safe to :meth:`end` and :meth:`close` from another thread while a read waits.
    """

    def __init__(self, fd: int, name: str, *, is_file: bool, options: FollowOptions | None = None,
                 owns_fd: bool = True) -> None:  # fmt: skip
        self.name, self.options = name, options or FollowOptions()
        self._fd, self._is_file, self._owns_fd = fd, is_file, owns_fd
        self._head = b""  # bytes read ahead for the text check, handed out first
        self._wake = threading.Event()
        self._ended = self._closed = self._eof = False
        self.bytes_read = 0
        self.last_growth = time.monotonic()

    # ------------------------------------------------------------ construction
    @classmethod
    def open_file(cls, path: str | os.PathLike, options: FollowOptions | None = None) -> LiveSource:
        """Follow a regular file (it may be empty still); a missing path or a non-file is a VideoError."""
        path = os.fspath(path)
        try:
            st = os.stat(path)
            if _stat_kind(st.st_mode) is not None:
                raise VideoError(_stat_kind(st.st_mode), path)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
        except ValueError:
            raise VideoError("the path contains a NUL byte", path) from None
        except FileNotFoundError:
            raise VideoError("no such file", path) from None
        except OSError as e:
            raise VideoError(f"cannot open the file ({(e.strerror or type(e).__name__).lower()})", path) from None
        if _stat_kind(os.fstat(fd).st_mode) is not None:  # swapped for something else since the stat
            os.close(fd)
            raise VideoError("is not a regular file", path)
        return cls(fd, path, is_file=True, options=options)

    @classmethod
    def open_stream(cls, stream, name: str = "<stdin>", options: FollowOptions | None = None) -> LiveSource:
        """Follow a readable binary stream with a file descriptor (standard input, a pipe, a socket)."""
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            raise VideoError("the stream has no file descriptor to follow", name) from None
        return cls(fd, name, is_file=False, options=options, owns_fd=False)

    # ------------------------------------------------------------ state
    @property
    def ended(self) -> bool:
        """The end is known (declared, detected, or closed); reads drain what is left and then end."""
        return self._ended or self._closed or self._eof

    def end(self) -> None:
        """Say the stream is over: reads return what is left, then end of file."""
        self._ended = True
        self._wake.set()

    def close(self) -> None:
        """Stop: a waiting read returns end of file at once; the descriptor is closed if we opened it."""
        self._closed = True
        self._wake.set()
        if self._owns_fd and self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    # ------------------------------------------------------------ reading
    def head(self, n: int = HEAD_BYTES) -> bytes:
        """Up to the first ``n`` bytes: waits for some, takes what else is there; kept for the reads that follow."""
        self._head = self._read_waiting(n)
        while self._head and len(self._head) < n and (more := self._read_now(n - len(self._head))):
            self._head += more
        self.bytes_read = len(self._head)
        return self._head

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, waiting until some arrive; ``b""`` only at the end of the stream."""
        n = 1 << 16 if n is None or n < 0 else n
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._read_waiting(n)

    def _read_waiting(self, n: int) -> bytes:
        while not self._closed:
            data = self._read_now(n)
            if data:
                self.bytes_read += len(data)
                self.last_growth = time.monotonic()
                return data
            if self._eof or (self._ended and data == b""):
                return b""
            idle = self.options.idle_end_s
            if self._is_file and idle is not None and time.monotonic() - self.last_growth > idle:
                self._ended = True  # the writer is gone: drain, then end
                continue
            self._wake.wait(self.options.poll_s)
            self._wake.clear()
        return b""

    def _read_now(self, n: int) -> bytes | None:
        """What is there now: bytes, ``b""`` (nothing at the moment) or None (closed)."""
        fd = self._fd
        if fd < 0:
            return None
        try:
            if not self._is_file:
                ready, _, _ = select.select([fd], [], [], self.options.poll_s)
                if not ready:
                    return b""
            data = os.read(fd, n)
        except (OSError, ValueError):  # closed under us
            return None
        if not data and not self._is_file:
            self._eof = True  # a pipe's writer closed it
        return data


@contextmanager
def open_live(source: LiveSource, limits: MediaLimits | None = None):
    """Open a live source with the files' intake rules; yields ``(container, video stream)``.

    Waits for the first bytes (the text check and FFmpeg's probe need them).
    """
    head = source.head()
    if not head:
        raise VideoError("the stream ended before any data arrived", source.name)
    refuse_text(head, source.name)
    with open_stream(source, source.name, limits or NO_LIMITS) as (container, stream, _):
        yield container, stream


def live_frames(
    source: LiveSource, sampling: Sampling, info: StreamInfo, limits: MediaLimits | None = None,
    thread_type: str = "SLICE",
) -> Iterator[tuple[int, float, np.ndarray]]:  # fmt: skip
    """Sampled frames of a live source as they arrive (see :func:`longvu.model.video.iter_frames`)."""
    limits = limits or NO_LIMITS
    with open_live(source, limits) as opened:
        yield from sampled_frames(opened, source.name, sampling, info, None, limits, thread_type, True)
