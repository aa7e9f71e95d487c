"""What a chat request's media parts mean, in the shapes OpenAI-style clients send them.

Beside ``video_url`` (one video) the server accepts:

* an ordered list of ``image_url`` parts: the frames of one video, in order (what
  lmms-eval's ``openai`` model and vLLM clients send when they decode the video
  themselves); they go through the same pipeline as a decoded video, ``fps`` apart;
* an ``audio_url`` part whose file holds a video stream (lmms-eval sends ``.webm`` files
  as audio): taken as the video; an audio-only file is a 400;
* ``media_io_kwargs: {"video": {"num_frames": N, "fps": F, "start": S, "end": E}}`` (vLLM's
  per-request sampling; ``start``/``end`` in seconds are our extension): how frames are
  sampled from the video (at most N frames, F per second, within [S, E)); for image
  frames, F is their rate (default 1) and N thins them evenly.

Several videos in one conversation (two ``video_url`` parts, or images beside a video)
are refused with a 400 whose code is ``multiple_videos``: LongVU answers about one video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import MediaLimitError, VideoError
from ..model.intake import NO_LIMITS, HeldFile, MediaLimits
from ..model.video import Sampling, VideoClip, evenly_spaced

# Image frames one request may carry at most (each is decoded to RGB in memory).
MAX_IMAGE_FRAMES = 1024


@dataclass
class Media:
    """The one video a conversation is about: a url, or image urls as its frames, and how to sample it."""

    video_url: str | None = None
    image_urls: list[str] = field(default_factory=list)
    from_audio_part: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    frames_fps: float = 1.0

    @property
    def empty(self) -> bool:
        return self.video_url is None and not self.image_urls

    def drop_payloads(self) -> None:
        """Forget the payloads of data: URLs once they are stored (a queued request holds no body)."""
        short = lambda u: u[: u.find(",") + 1][:80] if u.startswith("data:") else u  # noqa: E731
        self.video_url = None if self.video_url is None else short(self.video_url)
        self.image_urls = [short(u) for u in self.image_urls]


def add_part(media: Media, part: dict, i: int, error) -> bool:
    """Record a media part of ``messages[i]`` in ``media``; False if ``part`` is not a media part.

    ``error(message, code)`` builds the exception to raise (the server's 400).
    """
    kind = part.get("type")
    if kind not in ("video_url", "image_url", "audio_url"):
        return False
    v = part.get(kind)
    url = v.get("url") if isinstance(v, dict) else v
    if kind == "audio_url" and isinstance(v, dict) and url is None:
        url = v.get("data")
    if not isinstance(url, str) or not url:
        raise error(f"messages[{i}]: {kind} needs a 'url'", "invalid_media_part")
    if kind == "image_url":
        if media.video_url is not None:
            raise error(_MULTIPLE + " (image frames beside a video)", "multiple_videos")
        if len(media.image_urls) >= MAX_IMAGE_FRAMES:
            raise error(f"at most {MAX_IMAGE_FRAMES} image frames per request", "too_many_frames")
        media.image_urls.append(url)
        return True
    if media.video_url is not None or media.image_urls:
        raise error(_MULTIPLE, "multiple_videos")
    media.video_url, media.from_audio_part = url, kind == "audio_url"
    return True


_MULTIPLE = "only one video per conversation is supported; send one request per video"


def parse_media_io_kwargs(body: dict, media: Media, error) -> None:
    """Apply ``media_io_kwargs.video`` (vLLM's per-request sampling, plus start/end) to ``media``."""
    kw = body.get("media_io_kwargs")
    if kw is None:
        return
    video = kw.get("video") if isinstance(kw, dict) else None
    if not isinstance(video, dict):
        raise error('\'media_io_kwargs\' must be {"video": {"num_frames": N, "fps": F, ...}}', "media_io_kwargs")
    unknown = set(video) - {"num_frames", "fps", "start", "end"}
    if unknown:
        raise error(f"media_io_kwargs.video: unknown keys {sorted(unknown)} (known: num_frames, fps, start, end)",
                    "media_io_kwargs")  # fmt: skip
    n, fps, start, end = (video.get(k) for k in ("num_frames", "fps", "start", "end"))
    for name, v, lo in (("num_frames", n, 1), ("fps", fps, 1e-6), ("start", start, 0), ("end", end, 1e-6)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo):
            raise error(f"media_io_kwargs.video.{name} must be a number >= {lo:g} (finite)", "media_io_kwargs")
    if n is not None and int(n) != n:
        raise error("media_io_kwargs.video.num_frames must be an integer", "media_io_kwargs")
    if start is not None and end is not None and end <= start:
        raise error("media_io_kwargs.video.end must be after start", "media_io_kwargs")
    media.sampling = Sampling(fps=float(fps or 1.0), max_frames=None if n is None else int(n),
                              start=None if start is None else float(start), end=None if end is None else float(end))  # fmt: skip
    media.frames_fps = float(fps or 1.0)


# Image formats an image frame may be in (Pillow's names).  Not every format Pillow opens:
# some hand the file to other programs (EPS to Ghostscript) or are rarely fuzzed.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def frames_from_images(paths: list[str | HeldFile], media: Media, limits: MediaLimits | None = None,
                       max_bytes: int | None = None) -> VideoClip:  # fmt: skip
    """Image files as one video's frames (in order, ``frames_fps`` apart, thinned to ``num_frames``).

    Each frame must be within ``limits.max_pixels``, and the frames, decoded and resized to
    the first one's size, at most ``max_bytes`` together (they are held in memory at once):
    a :class:`~longvu.errors.MediaLimitError` otherwise.  Raises
    :class:`~longvu.errors.VideoError` for a file that is not a readable image.
    """
    # lazy: numpy only on this path (the module imports without it)
    import numpy as np

    limits = limits or NO_LIMITS
    keep = evenly_spaced(list(range(len(paths))), media.sampling.max_frames)
    frames, size = [], None
    for k in keep:
        frame = _image_frame(paths[k], k, limits, size)
        if size is None:
            size = (frame.shape[1], frame.shape[0])
            if max_bytes is not None and len(keep) * frame.nbytes > max_bytes:
                raise MediaLimitError(f"{len(keep)} image frames of {size[0]}x{size[1]} take more than this "
                                      f"server's {max_bytes / 2**20:g} MB", limit="max_image_frames_mb")  # fmt: skip
        frames.append(frame)
    fps = media.frames_fps
    return VideoClip("<image frames>", np.stack(frames), keep, [k / fps for k in keep], fps, 1, len(paths))


def _image_frame(path: str | HeldFile, k: int, limits: MediaLimits, size: tuple[int, int] | None):
    """``[H, W, 3]`` uint8 RGB of image frame ``k`` (resized to ``size`` if given)."""
    # lazy: numpy only on this path (the module imports without it)
    import numpy as np

    # lazy: PIL only on this path (the module imports without it)
    from PIL import Image

    try:
        with Image.open(path.reader() if isinstance(path, HeldFile) else path, formats=IMAGE_FORMATS) as im:
            limits.check_size(im.width, im.height, f"image frame {k + 1}")  # before decoding a pixel
            im = im.convert("RGB")
            return np.asarray(im if size is None or im.size == size else im.resize(size, Image.BICUBIC))
    except VideoError:  # over the limits, or too small: said with the frame's size
        raise
    except Image.DecompressionBombError:
        raise MediaLimitError(f"image frame {k + 1} is larger than the limit", limit="max_pixels") from None
    except Exception as e:  # Pillow's decoders raise many kinds of error on malformed files
        raise VideoError(f"image frame {k + 1} is not a readable image ({type(e).__name__})") from None


def client_wait_s(headers: Any, cap_s: float) -> float:
    """How long a request may wait for a queue slot: half the deadline its client states, at most ``cap_s``.

    The OpenAI SDKs send their read timeout as ``x-stainless-read-timeout``; any client may
    send ``x-longvu-queue-wait`` (seconds).  Half the deadline leaves the other half for the work;
    no stated deadline means no waiting (a full queue answers 503 at once, as before).
    """
    for name, share in (("x-longvu-queue-wait", 1.0), ("x-stainless-read-timeout", 0.5)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if value == value and value > 0:  # not NaN
            return min(value * share, cap_s)
    return 0.0
