"""Small JPEG thumbnails of a video's frames at given timestamps, for the web page's frame strip.

The page asks for the frames the trace says were kept (``kept_timestamps``).  Each
thumbnail is made by seeking: PyAV jumps to the keyframe before the timestamp and decodes
only from there to the frame, on the CPU, in the web request's thread pool, so the model's
path (the encoder, on the GPU where there is one) never decodes the video a second time.
Keeping thumbnails while encoding would instead tie the feature cache's format and the
encoder to the page; seeking costs at most one group of pictures per thumbnail, and the
results are kept in a small in-memory LRU.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections import OrderedDict

from ..errors import VideoError
from ..model.intake import NO_LIMITS, MediaLimits, open_video, probe_fps
from ..model.video import Orientation

MAX_WIDTH = 320
_CACHE: OrderedDict[tuple, bytes] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_ENTRIES = 1024


def thumbnail_jpeg(path: str, seconds: float, width: int = 160, limits: MediaLimits | None = None) -> bytes:
    """A JPEG of the frame shown at ``seconds`` (the first frame at or after it), ``width`` pixels wide.

    ``limits`` bound the decoding as they bound the encoder's (frame size, and frames decoded
    while seeking forward from the keyframe): a :class:`~longvu.errors.MediaLimitError` past them.
    """
    if not (math.isfinite(seconds) and seconds >= 0):
        raise VideoError(f"the timestamp must be a number of seconds >= 0, got {seconds}")
    width = max(16, min(int(width), MAX_WIDTH))
    try:
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns, round(seconds, 3), width)
    except (OSError, ValueError):
        key = None  # the intake gives the error
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    data = _encode_jpeg(_frame_at(path, seconds, limits or NO_LIMITS), width)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = data
            while len(_CACHE) > _CACHE_ENTRIES:
                _CACHE.popitem(last=False)
    return data


def _frame_at(path: str, seconds: float, limits: MediaLimits):
    """The decoded frame (a PyAV ``VideoFrame``) at ``seconds``: seek to the keyframe before, decode forward."""
    # lazy: av only on this path (the module imports without it)
    import av

    with open_video(path, limits) as (container, stream):
        half_frame = 0.5 / probe_fps(stream, path)
        if not stream.time_base:
            raise VideoError("the video stream has no time base to seek by", path)
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        target = int(min(start + seconds, 2.0**40) / stream.time_base)  # far past any end: the last frame
        last = None
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for n, frame in enumerate(container.decode(stream), 1):
                limits.check_size(frame.width, frame.height, path)
                limits.check_progress(n, 0.0, path)  # frames decoded from the keyframe
                last = frame
                if frame.time is not None and frame.time - start >= seconds - half_frame:
                    return frame
        except (av.error.FFmpegError, OverflowError) as e:
            raise VideoError(f"could not decode a frame at {seconds:.2f}s ({type(e).__name__})", path) from None
    if last is None:
        raise VideoError(f"no frame at {seconds:.2f}s", path)
    return last  # past the end: the last frame


def _encode_jpeg(frame, width: int) -> bytes:
    # lazy: PIL only on this path (the module imports without it)
    from PIL import Image

    image = Image.fromarray(
        Orientation.of(frame).apply(frame.to_ndarray(format="rgb24"))
    )  # upright, as the model saw it
    height = max(1, round(image.height * width / image.width))
    buf = io.BytesIO()
    image.convert("RGB").resize((width, height)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()
