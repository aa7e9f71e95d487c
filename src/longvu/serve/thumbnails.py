"""Small JPEG thumbnails of a video's frames at given timestamps, for the web page's frame strip.

The page asks for the frames the trace says were kept (``kept_timestamps``).  Each
thumbnail is made by seeking: PyAV jumps to the keyframe before the timestamp and decodes
only from there to the frame, on the CPU, so the model's path (the encoder, on the GPU
where there is one) never decodes the video a second time.  Keeping thumbnails while
encoding would instead tie the feature cache's format and the encoder to the page; seeking
costs at most one group of pictures per thumbnail, and the results are kept in a small
in-memory LRU.

Bounded per request and in total:

* the frame passes the server's :class:`~longvu.model.intake.MediaLimits` (sides, aspect,
  pixels) before it is converted, and is scaled by swscale straight to the thumbnail's
  size, which fits a ``w x MAX_SIDE`` box (``w`` at most ``MAX_SIDE``) whatever its shape;
* at most :data:`MAX_DECODED` frames are decoded from the keyframe (a video with one
  keyframe gets the frame reached by then, not an hour of decoding);
* thumbnails run on a :class:`ThumbnailPool` of their own (``WORKERS`` threads, at most
  ``QUEUE`` waiting: a 503 with Retry-After past that), never on the thread pool that the
  chat route's request handling uses, and stop within a frame once the client has left.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from ..errors import Cancelled, VideoError
from ..model.intake import NO_LIMITS, HeldFile, MediaLimits, VideoSource, open_video, probe_fps, source_name
from ..model.video import Orientation
from .errors import APIError

MAX_SIDE = 320  # a thumbnail's longest side, and its widest width
MAX_DECODED = 250  # frames decoded from the keyframe before the nearest one is taken
_CACHE: OrderedDict[tuple, bytes] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_ENTRIES = 1024


def thumbnail_jpeg(
    path: VideoSource, seconds: float, width: int = 160, limits: MediaLimits | None = None, cancel=None
) -> bytes:
    """A JPEG of the frame shown at ``seconds`` (the first frame at or after it), ``width`` pixels wide at most.

    ``limits`` bound the decoding as they bound the encoder's (frame size, and frames decoded
    while seeking forward from the keyframe): a :class:`~longvu.errors.MediaLimitError` past them.
    ``cancel`` (an object with ``is_set()``) stops it within a frame (:class:`~longvu.errors.Cancelled`).
    """
    if not (math.isfinite(seconds) and seconds >= 0):
        raise VideoError(f"the timestamp must be a number of seconds >= 0, got {seconds}")
    width = max(16, min(int(width), MAX_SIDE))
    key = _cache_key(path, seconds, width)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    data = _encode_jpeg(_frame_at(path, seconds, limits or NO_LIMITS, cancel), width)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = data
            while len(_CACHE) > _CACHE_ENTRIES:
                _CACHE.popitem(last=False)
    return data


def _cache_key(path: VideoSource, seconds: float, width: int) -> tuple | None:
    try:
        if isinstance(path, HeldFile):
            with path.reader() as f:
                st = os.fstat(f.fileno())
        else:
            st = os.stat(path)
    except (OSError, ValueError, VideoError):
        return None  # the intake gives the error
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, round(seconds, 3), width)


def _frame_at(source: VideoSource, seconds: float, limits: MediaLimits, cancel=None):
    """The decoded frame (a PyAV ``VideoFrame``) at ``seconds``: seek to the keyframe before, decode forward."""
    # lazy: av only on this path (the module imports without it)
    import av

    path = source_name(source)
    with open_video(source, limits) as (container, stream):
        half_frame = 0.5 / probe_fps(stream, path)
        if not stream.time_base:
            raise VideoError("the video stream has no time base to seek by", path)
        stream.codec_context.options = {"max_pixels": str(limits.decoder_pixels)}
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        target = int(min(start + seconds, 2.0**40) / stream.time_base)  # far past any end: the last frame
        last = None
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for n, frame in enumerate(container.decode(stream), 1):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                limits.check_size(frame.width, frame.height, path)
                limits.check_progress(n, 0.0, path)  # frames decoded from the keyframe
                last = frame
                if n >= MAX_DECODED or (frame.time is not None and frame.time - start >= seconds - half_frame):
                    return frame
        except (av.error.FFmpegError, OverflowError) as e:
            raise VideoError(f"could not decode a frame at {seconds:.2f}s ({type(e).__name__})", path) from None
    if last is None:
        raise VideoError(f"no frame at {seconds:.2f}s", path)
    return last  # past the end: the last frame


def thumbnail_size(width: int, height: int, box_width: int) -> tuple[int, int]:
    """The size of a ``width x height`` frame fit into a ``box_width x MAX_SIDE`` box (at least 1 a side)."""
    scale = min(box_width / width, MAX_SIDE / height)
    return max(1, min(box_width, round(width * scale))), max(1, min(MAX_SIDE, round(height * scale)))


def _encode_jpeg(frame, width: int) -> bytes:
    # lazy: PIL only on this path (the module imports without it)
    from PIL import Image

    orientation = Orientation.of(frame)
    w, h = (frame.height, frame.width) if orientation.transpose else (frame.width, frame.height)
    tw, th = thumbnail_size(w, h, width)
    stored = (th, tw) if orientation.transpose else (tw, th)
    small = frame.reformat(width=stored[0], height=stored[1], format="rgb24", interpolation="AREA").to_ndarray()
    buf = io.BytesIO()
    Image.fromarray(orientation.apply(small)).save(buf, format="JPEG", quality=80)  # upright, as the model saw it
    return buf.getvalue()


class ThumbnailPool:
    """Threads of the thumbnails alone: ``workers`` at once, ``queue`` more waiting, cancelled on disconnect."""

    def __init__(self, workers: int = 2, queue: int = 8) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="longvu-thumb")
        self.limit, self.pending = workers + queue, 0

    async def run(self, fn, request, cleanup=None) -> bytes:
        """``fn(cancel)`` on the pool; a 503 if the pool is full, a 499 (and ``cancel`` set) if the client leaves.

        ``cleanup()`` runs once ``fn`` has ended, or at once if it never runs.
        """
        if self.pending >= self.limit:
            if cleanup is not None:
                cleanup()
            raise APIError(503, "the server is busy making thumbnails; retry later", "server_error", "queue_full",
                           headers={"Retry-After": "1"})  # fmt: skip
        cancel = threading.Event()
        self.pending += 1
        job = self.pool.submit(fn, cancel)
        if cleanup is not None:
            job.add_done_callback(lambda _: cleanup())
        fut = asyncio.wrap_future(job)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.25)
                if done:
                    return fut.result()
                if await request.is_disconnected():
                    raise APIError(499, "the client went away", code="cancelled")
        finally:
            cancel.set()
            fut.cancel()
            self.pending -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
