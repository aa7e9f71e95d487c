"""Live sessions on the server: a client streams a video in chunks and chats about it meanwhile.

* ``POST /v1/live`` creates a session (optional JSON ``{"fps": 1, "horizon_s": 600}``) and answers
  ``{"id": "live-...", ...status}``; at most ``max_live_sessions`` at once (429 beyond).
* ``POST /v1/live/{id}`` appends the body's bytes: the next piece of one streamable container
  (MPEG-TS, Matroska/WebM as MediaRecorder writes it, fragmented MP4), in order.  ``?offset=N``
  (the byte offset the chunk starts at) makes a lost or repeated chunk a 409 instead of
  a corrupt stream.  The answer is the session's status.
* ``GET /v1/live/{id}`` the status; ``DELETE /v1/live/{id}`` ends the stream (what arrived is
  encoded to its end; the session stays answerable until it expires).
* A chat whose ``video_url.url`` is the session id answers over what is encoded at that moment;
  the response's ``longvu.covered_s`` is the span it saw, in stream seconds.

The bytes go to a file in the media store, under its total quota and ``max_upload_mb`` per
session, and are followed by :meth:`LongVU.watch <longvu.pipeline.api.LongVU.watch>`: the
same intake (content probe, allow-listed demuxers, no nested opens, the server's
:class:`MediaLimits` as frames arrive).  A chunk is refused, and nothing of the session is
lost, when it is not what it claims: the first one must probe as an accepted container with
a video stream; a later one must not be text, nor start a new container (a new header), nor
break MPEG-TS packet alignment; one past a quota is a 413.  A session untouched (no chunk, no
question) for ``live_idle_s`` is closed and its files deleted.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

from fastapi import Request

from ..errors import MediaLimitError, VideoError
from ..model.intake import open_stream, refuse_text
from ..model.live import FollowOptions, LiveSource
from ..model.video import Sampling
from .errors import APIError, clip, public_error
from .guard import BodyRule
from .openai import parse_json
from .settings import ServerSettings
from .store import MediaStore, QuotaExceeded

TS_PACKET = 188
_NEW_HEADERS = (b"\x1a\x45\xdf\xa3", b"ftyp")  # a Matroska/WebM header; an MP4 header at offset 4


class _Session:
    """One live stream: its spool file, the byte count, the live session following it."""

    def __init__(self, sid: str, path, live, source: LiveSource) -> None:
        self.id, self.path, self.live, self.source = sid, path, live, source
        self.bytes = 0
        self.format: str | None = None  # the container found by the first chunk's probe
        self.lock = threading.Lock()
        self.touched = time.monotonic()

    def status(self) -> dict:
        return {"id": self.id, "object": "live", "bytes_received": self.bytes, "format": self.format,
                **self.live.status()}  # fmt: skip


class LiveSessions:
    """The server's live sessions (see the module docstring)."""

    def __init__(self, lv, store: MediaStore, settings: ServerSettings) -> None:
        self.lv, self.store, self.settings = lv, store, settings
        self.sessions: dict[str, _Session] = {}
        self.lock = threading.Lock()
        self.closed = False

    def create(self, fps: float, horizon_s: float | None) -> _Session:
        if self.lv is None:
            raise APIError(501, "live sessions need the model in this process (not Ray Serve replicas)",
                           "server_error", "not_supported")  # fmt: skip
        self.sweep()
        sampling = Sampling(fps=fps)
        with self.lock:
            if len(self.sessions) >= self.settings.max_live_sessions:
                raise APIError(429, f"at most {self.settings.max_live_sessions} live sessions at once; end one "
                               "(DELETE /v1/live/ID) or retry later", code="too_many_live_sessions")  # fmt: skip
            sid, path = self.store.new_path("live")
            path.touch(mode=0o600)
            source = LiveSource.open_file(path, FollowOptions(idle_end_s=None))
            live = self.lv.watch(source, sampling=sampling, horizon_s=horizon_s, limits=self.settings.limits)
            session = self.sessions[sid] = _Session(sid, path, live, source)
        return session

    def get(self, sid: str) -> _Session:
        self.sweep()
        session = self.sessions.get(sid)
        if session is None:
            raise APIError(404, f"no live session {clip(sid)!r}", "not_found_error", "live_not_found")
        session.touched = time.monotonic()
        return session

    def append(self, sid: str, data: bytes, offset: int | None) -> dict:
        """Check the chunk, then add it to the stream (blocking: call it off the event loop)."""
        s = self.get(sid)
        with s.lock:
            if s.source.ended:
                raise APIError(409, "the live session has ended; start a new one", code="live_ended")
            if s.live.status()["error"]:
                raise APIError(409, f"the stream cannot be followed further ({s.live.status()['error']})",
                               code="live_failed")  # fmt: skip
            if offset is not None and offset != s.bytes:
                raise APIError(409, f"chunk out of order: it starts at byte {offset}, the stream is at byte {s.bytes}",
                               code="out_of_order")  # fmt: skip
            if not data:
                raise APIError(400, "the chunk is empty", code="empty_chunk")
            if s.bytes + len(data) > self.settings.max_upload_bytes:
                raise APIError(413, f"the live stream would pass this server's {self.settings.max_upload_mb:g} MB "
                               "limit per stream; end it and start a new session", code="live_too_large")  # fmt: skip
            self._check(s, data)
            try:
                self.store.reserve(len(data))
            except QuotaExceeded:
                raise APIError(413, "the server's storage is full; end a live session or retry later",
                               code="upload_quota_exceeded") from None  # fmt: skip
            with open(s.path, "ab") as f:
                f.write(data)
            s.bytes += len(data)
        return s.status()

    def _check(self, s: _Session, data: bytes) -> None:
        """Refuse a chunk that cannot be the next piece of this session's stream (415/400)."""
        try:
            refuse_text(data[:4096], "the chunk")
            if s.bytes == 0:
                with open_stream(io.BytesIO(data), "the chunk", self.settings.limits) as (container, _, _):
                    s.format = container.format.name
                return
        except MediaLimitError as e:
            raise public_error(e) from None
        except VideoError as e:
            raise APIError(415, f"not a video stream: {e.public_message}", code="invalid_chunk") from None
        if data.startswith(_NEW_HEADERS[0]) or data[4:8] == _NEW_HEADERS[1]:
            raise APIError(400, "the chunk starts a new video (a container header): send one stream per session",
                           code="invalid_chunk")  # fmt: skip
        if s.format == "mpegts":
            first = (-s.bytes) % TS_PACKET
            if any(data[i] != 0x47 for i in range(first, len(data), TS_PACKET)):
                raise APIError(400, "the chunk does not continue the MPEG-TS stream (packets out of step)",
                               code="invalid_chunk")  # fmt: skip

    def end(self, sid: str) -> dict:
        s = self.get(sid)
        s.live.end()
        return s.status()

    def features(self, sid: str):
        """What the session has encoded now (blocking: reads the features from disk)."""
        try:
            return self.get(sid).live.features()
        except VideoError as e:
            raise public_error(e) from None

    def _drop(self, sid: str) -> None:
        with self.lock:
            s = self.sessions.pop(sid, None)
        if s is not None:
            s.live.close()
            s.path.unlink(missing_ok=True)
            self.store.release(s.bytes)

    def sweep(self) -> None:
        """Close the sessions untouched for ``live_idle_s``."""
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.touched > self.settings.live_idle_s:
                self._drop(sid)

    def close(self) -> None:
        for sid in list(self.sessions):
            self._drop(sid)


def body_rules(settings: ServerSettings) -> dict:
    """The guard's rule for chunk bodies (any media type, a session's bytes at most)."""
    return {("POST", "/v1/live/*"): BodyRule(None, settings.max_upload_bytes, "a live chunk", settings.max_upload_mb)}


def is_live(url: str | None) -> bool:
    return isinstance(url, str) and url.startswith("live-")


def add_live_routes(app, lv, store: MediaStore, settings: ServerSettings) -> LiveSessions:
    """Register the ``/v1/live`` routes on ``app`` (``app.state.live`` holds the sessions)."""
    live = app.state.live = LiveSessions(lv, store, settings)

    @app.post("/v1/live")
    async def live_create(request: Request):
        raw = await request.body()
        body = parse_json(raw) if raw.strip() else {}
        fps, horizon = _options(body)
        session = await asyncio.to_thread(live.create, fps, horizon)
        return session.status()

    @app.post("/v1/live/{sid}")
    async def live_append(sid: str, request: Request, offset: int | None = None):
        data = await request.body()  # the guard bounds it
        return await asyncio.to_thread(live.append, sid, data, offset)

    @app.get("/v1/live/{sid}")
    async def live_status(sid: str):
        return live.get(sid).status()

    @app.delete("/v1/live/{sid}")
    async def live_end(sid: str):
        return live.end(sid)

    return live


def _options(body) -> tuple[float, float | None]:
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object (or empty)")
    fps, horizon = body.get("fps", 1.0), body.get("horizon_s")
    for name, v in (("fps", fps), ("horizon_s", horizon)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1e6):
            raise APIError(400, f"'{name}' must be a positive number", param=name)
    if fps is None or fps > 30:
        raise APIError(400, "'fps' must be at most 30", param="fps")
    return float(fps), None if horizon is None else float(horizon)
