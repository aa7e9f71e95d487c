"""An OpenAI-compatible HTTP server around one :class:`~longvu.pipeline.LongVU`.

``POST /v1/chat/completions`` takes the video as a content part
``{"type": "video_url", "video_url": {"url": ...}}`` (as vLLM does), where the url is
a ``data:video/...;base64,`` URL, a file id from ``POST /v1/files``, a local path under
``--allowed-local-media-path``, or (with ``--allow-remote-urls``) an http(s) URL.
``stream: true`` answers with Server-Sent Events chunks like OpenAI's.  Also
``GET /v1/models``, ``GET /health``, ``/v1/files`` and a web page at ``/``.

One model instance serves requests one at a time from a bounded queue (503 with
Retry-After when it is full).  Every error is a 4xx/5xx JSON body in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from .errors import Cancelled, ContextOverflowError, LongVUError, MediaLimitError, VideoError
from .generation import GenerationOptions
from .pipeline import LongVU
from .server_guard import LOOPBACK_HOSTS
from .server_media import Media, add_part, client_wait_s, frames_from_images, parse_media_io_kwargs
from .server_store import MediaStore, QuotaExceeded, UploadError, UploadTooLarge, receive_upload
from .video import MediaLimits

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}  # what /static/ serves, by name


@dataclass
class ServerSettings:
    """Limits and policies of the server; every default can be changed on the command line.

    README "Security model" says what each one guards against.
    """

    model_name: str = "longvu"
    allowed_local_media_path: str | None = None
    allow_remote_urls: bool = False
    api_key: str | None = None
    max_upload_mb: float = 1024.0  # one uploaded, data: URL or downloaded file
    max_upload_total_mb: float = 10240.0  # every stored file together (uploads; data: URLs and downloads in flight)
    max_json_mb: float = 256.0  # a JSON request body, data: URLs included
    max_image_frames_mb: float = 2048.0  # one request's image frames, decoded (RGB), held together
    max_video_seconds: float = 4 * 3600.0  # by the stream's own clock, while decoding
    max_video_frames: int = 4 * 3600 * 60  # decoded frames of one video (4 hours at 60 fps)
    max_pixels: int = 4096 * 2160  # width x height of one frame (DCI 4K)
    max_messages: int = 1024
    max_text_chars: int = 1_000_000  # all text of one request
    request_timeout_s: float = 1800.0
    queue_size: int = 8
    max_waiting: int = 64  # requests waiting for a queue slot at most (see server_media.client_wait_s)
    max_new_tokens: int = 512
    max_tokens_limit: int = 4096
    upload_dir: str | None = None
    upload_ttl_s: float = 24 * 3600.0
    sweep_interval_s: float = 60.0  # how often files older than upload_ttl_s are removed
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names answered ("*": any)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (none: CORS off)
    docs: bool = False  # /docs, /redoc and /openapi.json (behind the API key when there is one)
    remote_timeout_s: float = 120.0  # one download, every hop and byte included
    max_redirects: int = 5
    shutdown_timeout_s: float = 5.0  # after SIGTERM/SIGINT, running jobs are cancelled; this long at most

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def limits(self) -> MediaLimits:
        """What one video may cost to decode (enforced while decoding: 413 above)."""
        return MediaLimits(max_seconds=self.max_video_seconds, max_frames=self.max_video_frames,
                           max_pixels=self.max_pixels)  # fmt: skip


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Worker:
    """Runs jobs one at a time on a thread (one model), fed by a bounded queue.

    Each job runs on a daemon thread of its own: a job that is cancelled but still busy
    (a forward pass cannot be interrupted) never holds up the process's exit.
    """

    def __init__(self, size: int, max_waiting: int = 0, concurrency: int = 1) -> None:
        self.jobs: asyncio.Queue | None = None
        self.size = size
        self.max_waiting, self.waiting = max_waiting, 0
        self.concurrency = concurrency  # jobs running at once (one per model: 1 here, N with Ray Serve replicas)
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.jobs = asyncio.Queue(maxsize=self.size)
        self.tasks = [asyncio.create_task(self._loop()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def _loop(self) -> None:
        while True:
            fn, fut = await self.jobs.get()
            if fut.cancelled():
                continue
            try:
                result = await _on_daemon_thread(fn)
                if not fut.cancelled():
                    fut.set_result(result)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as e:  # handed to the request
                if not fut.cancelled():
                    fut.set_exception(e)

    async def submit_waiting(self, fn, wait_s: float) -> asyncio.Future:
        """Like :meth:`submit`, but a full queue is waited on for up to ``wait_s`` seconds
        (by at most ``max_waiting`` requests at once) before the 503."""
        if wait_s <= 0 or not self.jobs.full():
            return self.submit(fn)
        if self.waiting >= self.max_waiting:
            return self.submit(fn)  # raises the 503
        fut = asyncio.get_running_loop().create_future()
        self.waiting += 1
        try:
            await asyncio.wait_for(self.jobs.put((fn, fut)), timeout=wait_s)
        except asyncio.TimeoutError:
            raise APIError(503, f"the server is busy: no queue slot freed within {wait_s:g}s; retry later",
                           "server_error", "queue_full", headers={"Retry-After": "5"}) from None  # fmt: skip
        finally:
            self.waiting -= 1
        return fut

    def submit(self, fn) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        try:
            self.jobs.put_nowait((fn, fut))
        except asyncio.QueueFull:
            raise APIError(503, "the server is busy: too many requests are queued; retry later", "server_error",
                           "queue_full", headers={"Retry-After": "5"}) from None  # fmt: skip
        return fut


def _on_daemon_thread(fn) -> asyncio.Future:
    """``fn()`` on a new daemon thread, as a future of this loop."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(setter, value) -> None:
        if not fut.done():
            setter(value)

    def run() -> None:
        try:
            result = fn()
        except BaseException as e:  # handed to the awaiting task
            outcome = (fut.set_exception, e if isinstance(e, Exception) else RuntimeError(type(e).__name__))
        else:
            outcome = (fut.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, daemon=True, name="longvu-job").start()
    return fut


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


class Jobs:
    """The cancel events of the requests in progress, so that a shutdown can stop them all at once."""

    def __init__(self) -> None:
        self.active: set[threading.Event] = set()
        self.closing = threading.Event()
        self.lock = threading.Lock()

    def new(self) -> threading.Event:
        cancel = threading.Event()
        with self.lock:
            self.active.add(cancel)
        if self.closing.is_set():
            cancel.set()
        return cancel

    def done(self, cancel: threading.Event) -> None:
        with self.lock:
            self.active.discard(cancel)

    def cancel_all(self) -> None:
        """Thread- and signal-safe: every running and queued job stops at its next check."""
        self.closing.set()
        with self.lock:
            for cancel in self.active:
                cancel.set()


def create_app(lv: LongVU | None, settings: ServerSettings | None = None, backend=None):
    """The FastAPI application serving ``lv``.

    ``backend`` runs the chat jobs instead of ``lv`` (``None``: a :class:`LocalBackend` on ``lv``);
    :mod:`longvu.serve_ray` passes one that spreads them over Ray Serve replicas.
    ``app.state.jobs.cancel_all()`` stops every request in progress (what a shutdown calls).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from .remote import Downloader

    settings = settings or ServerSettings()
    backend = backend or LocalBackend(lv)
    worker = Worker(settings.queue_size, settings.max_waiting, concurrency=backend.concurrency)
    store = MediaStore(settings.upload_dir, settings.upload_ttl_s, int(settings.max_upload_total_mb * 1024 * 1024))
    downloader = Downloader(deadline_s=settings.remote_timeout_s, max_redirects=settings.max_redirects)
    jobs = Jobs()

    @asynccontextmanager
    async def lifespan(app):
        await worker.start()
        sweeper = asyncio.create_task(store.sweep_every(settings.sweep_interval_s))
        yield
        jobs.cancel_all()
        sweeper.cancel()
        await worker.stop()
        downloader.close()
        store.close()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="longvu", version=_version(), lifespan=lifespan, **docs)
    app.state.lv, app.state.settings, app.state.store, app.state.jobs = lv, settings, store, jobs
    _error_handlers(app)
    _guards(app, settings)
    _info_routes(app, worker, settings)
    _file_routes(app, store, settings)
    _chat_route(app, backend, worker, store, settings, jobs, downloader)
    _media_routes(app, store, settings)
    _page_routes(app)
    return app


def _guards(app, settings: ServerSettings) -> None:
    """The front door (``longvu.server_guard``): Host, then CORS if configured, then origin, key and body checks."""
    from starlette.middleware.cors import CORSMiddleware

    from .server_guard import MULTIPART_SLACK, BodyRule, HostGuard, RequestGuard

    json_limit = int(settings.max_json_mb * 1024 * 1024)
    rules = {("POST", "/v1/chat/completions"): BodyRule("application/json", json_limit, "a chat request"),
             ("POST", "/v1/files"): BodyRule("multipart/form-data", settings.max_upload_bytes + MULTIPART_SLACK,
                                             "an upload", settings.max_upload_mb)}  # fmt: skip
    app.add_middleware(RequestGuard, rules=rules, api_key=settings.api_key, cors_origins=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"], max_age=600)  # fmt: skip
    app.add_middleware(HostGuard, allowed=settings.allowed_hosts)  # added last: runs first


def _error_handlers(app) -> None:
    """Every error in OpenAI's shape; an unexpected one is a 500 that names only its type."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(LongVUError)
    async def _input(request, exc: LongVUError):
        err = public_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc: ClientDisconnect):  # the body was cut short: nobody reads this answer
        return JSONResponse(APIError(400, "the request body ended early", code="incomplete_body").body(), 400)

    @app.exception_handler(QuotaExceeded)
    async def _quota(request, exc: QuotaExceeded):
        return JSONResponse(_quota_error().body(), status_code=413)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        msg = f"invalid request: {first.get('msg', 'malformed body')}" + (f" at {where}" if where else "")
        return JSONResponse(APIError(400, msg).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}", "server_error").body(), 500)


def _info_routes(app, worker: Worker, settings: ServerSettings) -> None:
    @app.get("/health")
    async def health():
        q = worker.jobs.qsize() if worker.jobs else 0
        return {"status": "ok", "model": settings.model_name, "queued": q}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "longvu"}]}  # fmt: skip


def _file_routes(app, store: MediaStore, settings: ServerSettings) -> None:
    """``/v1/files``: upload (multipart, streamed into the store), look up and delete videos."""

    @app.post("/v1/files")
    async def upload(request: Request):
        from python_multipart.exceptions import FormParserError

        try:
            fid, path, fields = await receive_upload(request.stream(), request.headers.get("content-type", ""),
                                                     store, settings.max_upload_bytes)  # fmt: skip
        except UploadTooLarge:
            raise _too_large(settings) from None
        except UploadError as e:
            raise APIError(400, str(e), code="invalid_upload") from None
        except FormParserError:
            raise APIError(400, "malformed multipart upload", code="invalid_upload") from None
        purpose = fields.get("purpose", "vision")[:64]
        return store.register(fid, path, fields.get("filename", "upload"), purpose)

    @app.get("/v1/files/{fid}")
    async def file_info(fid: str):
        info = store.info(fid)
        if not info:
            raise APIError(404, f"no file {_clip(fid)!r}", "not_found_error")
        return info

    @app.delete("/v1/files/{fid}")
    async def file_delete(fid: str):
        if not store.delete(fid):
            raise APIError(404, f"no file {_clip(fid)!r}", "not_found_error")
        return {"id": fid, "object": "file", "deleted": True}


def _clip(text: str, n: int = 80) -> str:
    """Client text echoed in an error message, at most ``n`` characters."""
    return text if len(text) <= n else text[:n] + "..."


def _chat_route(app, backend, worker: Worker, store: MediaStore, settings: ServerSettings, jobs: Jobs,
                downloader) -> None:  # fmt: skip
    """``POST /v1/chat/completions``: parse, resolve the video, queue the job, answer or stream."""
    from fastapi.responses import StreamingResponse

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await asyncio.to_thread(_parse_json, await request.body())  # the guard bounds the body
        req = _parse_chat_request(body, settings)
        media: Media = req["media"]
        source, cleanup = await _resolve_media(media, settings, store, downloader)
        cancel = jobs.new()

        def finish() -> None:
            jobs.done(cancel)
            cleanup()

        try:
            req["wait_s"] = client_wait_s(request.headers, settings.request_timeout_s)
            job = ChatJob(req["system"], req["turns"], media, source, req["gen"], settings.limits,
                          _frames_budget(settings))  # fmt: skip
            prepare = _preparer(backend, job, cancel)
            cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
            if req["stream"]:
                return StreamingResponse(
                    _sse(worker, prepare, request, cancel, settings, cid, created, req, finish, jobs),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            answer = await _run_job(worker, lambda: _drain(prepare, cancel), request, cancel, settings,
                                    req["wait_s"], jobs)  # fmt: skip
        except BaseException:
            finish()
            raise
        finish()
        return _completion(cid, created, settings.model_name, answer)


def _preparer(backend, job: ChatJob, cancel: threading.Event):
    def prepare():
        if cancel.is_set():  # the client left (or the server is stopping) while the request was queued
            raise Cancelled()
        return backend.stream(job, cancel)

    return prepare


def _parse_json(raw: bytes) -> Any:
    """The body as JSON: UTF-8 only; malformed, badly encoded or too deeply nested -> 400."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise APIError(400, "the request body is not valid JSON (UTF-8)", code="invalid_json") from None


@dataclass
class ChatJob:
    """What one chat request asks of a model (picklable: it travels to Ray Serve replicas).

    ``source`` is the video's local path, or the image frames' paths (see :class:`Media`);
    ``limits`` bound its decoding, ``frames_bytes`` the decoded size of image frames.
    """

    system: str | None
    turns: list[tuple[str, str]]
    media: Media
    source: str | list[str]
    gen: GenerationOptions
    limits: MediaLimits
    frames_bytes: int

    @property
    def video_key(self) -> str:
        """Names the video for routing its follow-up turns to the replica holding its features."""
        return self.source if isinstance(self.source, str) else "frames:" + "|".join(self.source)


def _frames_budget(settings: ServerSettings) -> int:
    return int(settings.max_image_frames_mb * 1024 * 1024)


def run_chat_job(lv: LongVU, job: ChatJob, cancel: threading.Event):
    """Encode (or read from the cache) the job's video and start its answer: an AnswerStream.

    The server's :class:`~longvu.video.MediaLimits` apply while decoding (a
    :class:`~longvu.errors.MediaLimitError` past them), not from the header.
    """
    media = job.media
    if isinstance(job.source, list):  # image parts: the frames of one video
        clip = frames_from_images(job.source, media, job.limits, job.frames_bytes)
        feats = lv.features(clip, cancel=cancel, limits=job.limits)
    else:
        feats = lv.features(job.source, media.sampling, cancel=cancel, limits=job.limits)
    conv = lv.conversation(job.system, job.turns)
    return lv.generate(feats, conv, generation=job.gen, cancel=cancel)


class LocalBackend:
    """Runs chat jobs on the model in this process (one at a time)."""

    concurrency = 1

    def __init__(self, lv: LongVU) -> None:
        self.lv = lv

    def stream(self, job: ChatJob, cancel: threading.Event):
        return run_chat_job(self.lv, job, cancel)


def _media_routes(app, store: MediaStore, settings: ServerSettings) -> None:
    """What the web page shows of a video: the file itself (its player) and JPEG thumbnails at timestamps.

    ``video`` is a file id or a path under the allowed folder (never a data URL or a remote
    URL: these endpoints only read what the server already holds).  Both open the file
    through the intake with the server's limits; ``/v1/video`` serves only an accepted
    video, with the media type of its container as found by content.  Behind the API key.
    """
    from fastapi.responses import FileResponse, Response

    def held(video: str) -> str:
        if video.startswith("data:") or re.match(r"^https?://", video, re.I):
            raise APIError(400, "name a file id or a path under the allowed folder", code="invalid_video")
        if video.startswith("file-"):
            path = store.get(video)
            if path is None:
                raise APIError(404, f"no uploaded file {_clip(video)!r}", "not_found_error", "file_not_found")
            return str(path)
        local = video[len("file://") :] if video.startswith("file://") else video
        return str(_allowed_local(local, settings))

    @app.get("/v1/thumbnail")
    async def thumbnail(video: str, t: float, w: int = 160):
        from .thumbnails import thumbnail_jpeg

        data = await asyncio.to_thread(thumbnail_jpeg, held(video), t, w, settings.limits)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/video")
    async def video_file(video: str):
        from .video import probe_video

        path = held(video)
        info = await asyncio.to_thread(probe_video, path, settings.limits)
        return FileResponse(path, media_type=VIDEO_TYPES.get(info.format, "application/octet-stream"),
                            headers={"X-Content-Type-Options": "nosniff", "Content-Disposition": "inline"})  # fmt: skip


# Media types of the accepted containers (``longvu.video.CONTAINER_FORMATS``), for the page's player.
VIDEO_TYPES = {"mov,mp4,m4a,3gp,3g2,mj2": "video/mp4", "matroska,webm": "video/webm", "avi": "video/x-msvideo",
               "mpegts": "video/mp2t", "mpeg": "video/mpeg", "flv": "video/x-flv", "asf": "video/x-ms-asf",
               "ogg": "video/ogg"}  # fmt: skip


def _page_routes(app) -> None:
    """The web page and its static files (served by the app: no CDN); a fixed list of files, no paths."""
    from fastapi.responses import FileResponse

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC_FILES:
            raise APIError(404, "not found", "not_found_error")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])


def _drain(prepare, cancel: threading.Event):
    stream = prepare()
    for _ in stream:
        if cancel.is_set():
            raise Cancelled()
    return stream.answer


def public_error(e: LongVUError) -> APIError:
    """The 4xx for an error of the request's content, in words that name no server path.

    A video over the server's limits is a 413; another video error a 400 with the error's
    :attr:`~longvu.errors.VideoError.public_message`; a prompt that cannot fit a 400 with
    OpenAI's code ``context_length_exceeded``.
    """
    if isinstance(e, MediaLimitError):
        return APIError(413, e.public_message, code="media_too_large", param=e.limit)
    if isinstance(e, VideoError):
        return APIError(400, e.public_message, code="invalid_video")
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), code="context_length_exceeded", param="messages")
    return APIError(400, str(e), code="bad_input")


def _quota_error() -> APIError:
    return APIError(413, "the server's upload storage is full; delete files (DELETE /v1/files/ID) or retry later",
                    code="upload_quota_exceeded")  # fmt: skip


def _ended(jobs: Jobs) -> APIError:
    """The error for a job stopped by its cancel event: the client left, or the server is stopping."""
    if jobs.closing.is_set():
        return APIError(503, "the server is shutting down; retry later", "server_error", "shutting_down")
    return APIError(499, "the client went away", code="cancelled")


def _outcome(fut: asyncio.Future, jobs: Jobs):
    """The job's result, or the APIError its failure means (an unexpected error propagates: a 500)."""
    try:
        return fut.result()
    except Cancelled:
        raise _ended(jobs) from None
    except LongVUError as e:
        raise public_error(e) from None


async def _run_job(worker: Worker, fn, request, cancel: threading.Event, settings: ServerSettings, wait_s: float,
                   jobs: Jobs):  # fmt: skip
    """Queue ``fn`` (waiting up to ``wait_s`` for a slot); wait for it while watching for a disconnect and the time limit."""
    fut = await worker.submit_waiting(fn, wait_s)
    start = time.monotonic()
    while True:
        done, _ = await asyncio.wait({fut}, timeout=0.25)
        if done:
            return _outcome(fut, jobs)
        if await request.is_disconnected():
            cancel.set()
            fut.cancel()
            raise APIError(499, "the client went away", code="cancelled")
        if time.monotonic() - start > settings.request_timeout_s:
            cancel.set()
            fut.cancel()
            raise _timed_out(settings)


def _timed_out(settings: ServerSettings) -> APIError:
    return APIError(504, f"the request took longer than {settings.request_timeout_s:g}s", "server_error", "timeout")


def _event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _sse(worker, prepare, request, cancel, settings, cid, created, req, cleanup, jobs: Jobs):
    """Server-Sent Events for ``stream: true``: role chunk, content chunks, finish chunk, [DONE].

    An error after the status line was sent is an event in OpenAI's error shape.
    """
    pieces: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def job():
        stream = prepare()
        for piece in stream:
            if cancel.is_set():
                raise Cancelled()
            loop.call_soon_threadsafe(pieces.put_nowait, piece)
        return stream.answer

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": settings.model_name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})  # fmt: skip

    finished = False
    try:
        try:
            fut = await worker.submit_waiting(job, req.get("wait_s", 0.0))
        except APIError as e:
            finished = True
            yield _event(e.body())
            return
        yield chunk({"role": "assistant", "content": ""})
        async for piece in _pieces(fut, pieces, request, settings):
            yield chunk({"content": piece})
        try:
            answer = _outcome(fut, jobs)
        except APIError as e:  # the request's fault, a cancel, or a Ray Serve replica that failed mid-answer
            finished = True
            yield _event(e.body())
            return
        except Exception as e:  # reported in-stream: the status line was sent already
            finished = True
            yield _event(APIError(500, f"internal error: {type(e).__name__}", "server_error").body())
            return
        extra = {"longvu": _trace_summary(answer.trace.data)}
        if req.get("include_usage"):
            extra["usage"] = _usage(answer)
        finished = True
        yield chunk({}, _finish_reason(answer), **extra)
        yield _event("[DONE]")
    except _Abandoned as e:
        if e.error is not None:
            yield _event(e.error.body())
    finally:
        # A client that disconnects ends this generator early (Starlette cancels it at a
        # yield): stop the generation so the worker is free for the next request.
        if not finished:
            cancel.set()
        cleanup()


class _Abandoned(Exception):
    """The stream stops before the job ends: the client left (``error`` None) or the time ran out."""

    def __init__(self, error: APIError | None = None) -> None:
        self.error = error


async def _pieces(fut: asyncio.Future, pieces: asyncio.Queue, request, settings: ServerSettings):
    """The job's text pieces as they come, until it ends; raises :class:`_Abandoned` on a disconnect or timeout."""
    start = last_check = time.monotonic()
    while not (fut.done() and pieces.empty()):
        try:
            yield await asyncio.wait_for(pieces.get(), timeout=0.25)
        except asyncio.TimeoutError:
            pass
        now = time.monotonic()
        if now - last_check > 0.5:
            last_check = now
            if await request.is_disconnected():
                raise _Abandoned()
        if now - start > settings.request_timeout_s:
            raise _Abandoned(_timed_out(settings))


def _finish_reason(answer) -> str:
    return "stop" if answer.trace.data["generation"]["stopped_by"] != "max_new_tokens" else "length"


def _parse_chat_request(body: Any, settings: ServerSettings) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", param="model")
    # Any other name is answered by the one served model, as llama.cpp's server does, so that a client whose
    # default names another model works (lmms-eval's openai: grok-2-latest); the response names the served one.
    system, turns, media = _parse_messages(body.get("messages"), settings)
    parse_media_io_kwargs(body, media, _media_error)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    return {"system": system, "turns": turns, "media": media, "gen": _parse_generation(body, settings),
            "stream": stream, "include_usage": bool(isinstance(opts, dict) and opts.get("include_usage"))}  # fmt: skip


def _parse_messages(messages: Any, settings: ServerSettings) -> tuple[str | None, list[tuple[str, str]], Media]:
    """The system prompt, the user/assistant turns and the one video (:class:`Media`) of ``messages``."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    if len(messages) > settings.max_messages:
        raise APIError(400, f"at most {settings.max_messages} messages per request", code="too_many_messages",
                       param="messages")  # fmt: skip
    system = None
    turns: list[tuple[str, str]] = []
    media = Media()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}] must have a role of system, user or assistant", param="messages")
        had_media = not media.empty
        text = _content(msg.get("content"), i, media)
        if not had_media and not media.empty and msg["role"] != "user":
            raise APIError(400, f"messages[{i}]: only user messages may carry a video", param="messages")
        if msg["role"] == "system":
            system = text
        else:
            turns.append((msg["role"], text))
    _check_text(system, turns, settings)
    if media.empty:
        raise APIError(400, "no video: add a content part {'type': 'video_url', 'video_url': {'url': ...}} "
                       "(or image_url parts: a video's frames)", code="no_video", param="messages")  # fmt: skip
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message must come from the user", param="messages")
    if turns[0][0] != "user":
        raise APIError(400, "the first non-system message must come from the user", param="messages")
    return system, turns, media


def _check_text(system: str | None, turns: list[tuple[str, str]], settings: ServerSettings) -> None:
    """At most ``max_text_chars`` in all, and valid Unicode (a lone surrogate cannot be tokenised)."""
    texts = [system or ""] + [t for _, t in turns]
    if sum(map(len, texts)) > settings.max_text_chars:
        raise APIError(400, f"the messages hold more than {settings.max_text_chars} characters of text",
                       code="too_much_text", param="messages")  # fmt: skip
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "the messages hold invalid Unicode (a lone surrogate)", param="messages") from None


def _parse_generation(body: dict, settings: ServerSettings) -> GenerationOptions:
    """Decoding options from OpenAI's fields; ``max_tokens`` above the server's limit is refused."""
    max_tokens = body.get("max_completion_tokens")
    max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
    max_tokens = settings.max_new_tokens if max_tokens is None else max_tokens  # null: the default, as OpenAI's
    if isinstance(max_tokens, float) and max_tokens.is_integer():
        max_tokens = int(max_tokens)
    if isinstance(max_tokens, float):
        raise APIError(400, "'max_tokens' must be a whole number", param="max_tokens")
    temperature, top_p, seed = body.get("temperature"), body.get("top_p"), body.get("seed")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > settings.max_tokens_limit:
        raise APIError(400, f"'max_tokens' is {max_tokens}; this server allows at most {settings.max_tokens_limit}",
                       code="max_tokens_too_large", param="max_tokens")  # fmt: skip
    for name, v, lo, hi in (("max_tokens", max_tokens, 1, settings.max_tokens_limit), ("temperature", temperature, 0, 2),
                            ("top_p", top_p, 0, 1)):  # fmt: skip
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
            raise APIError(400, f"'{name}' must be a number in [{lo}, {hi}]", param=name)
    if top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0", param="top_p")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise APIError(400, "'seed' must be an integer in [0, 2^63)", param="seed")
    greedy = temperature == 0
    return GenerationOptions(max_new_tokens=int(max_tokens), greedy=greedy, temperature=None if greedy else temperature,
                             top_p=None if greedy else top_p, seed=seed)  # fmt: skip


def _content(content: Any, i: int, media: Media) -> str:
    """Text of one message's content (a string or a list of parts); its media parts go to ``media``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"messages[{i}].content must be a string or a list of parts", param="messages")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif not (isinstance(part, dict) and add_part(media, part, i, _media_error)):
            raise APIError(400, f"messages[{i}]: unsupported content part type {kind!r} (use 'text', 'video_url', "
                           "'image_url' frames or an 'audio_url' video)", code="unsupported_content",
                           param="messages")  # fmt: skip
    return "\n".join(texts)


def _media_error(message: str, code: str) -> APIError:
    return APIError(400, message, code=code, param="messages")


class _Budget:
    """Bytes one request may bring with it (data: URLs, downloads): ``max_upload_mb`` for all its files together."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.left, self.what = limit, limit, what

    def take(self, n: int) -> None:
        if n > self.left:
            raise APIError(413, f"{self.what} is larger than this server's limit ({self.limit / 2**20:.3g} MB)",
                           code="file_too_large")  # fmt: skip
        self.left -= n


async def _resolve_media(media: Media, settings: ServerSettings, store: MediaStore, downloader):
    """A local video path, or a list of local image paths (the frames), and one cleanup function."""
    if media.video_url is not None:
        accept = ("video/", "audio/") if media.from_audio_part else ("video/",)
        budget = _Budget(settings.max_upload_bytes, "the video")
        return await _resolve_video(media.video_url, settings, store, downloader, budget, accept)
    budget = _Budget(settings.max_upload_bytes, "the request's image frames together")
    paths, cleanups = [], []
    try:
        for url in media.image_urls:
            path, cleanup = await _resolve_video(url, settings, store, downloader, budget, ("image/",))
            paths.append(path)
            cleanups.append(cleanup)
    except BaseException:
        for c in cleanups:
            c()
        raise
    return paths, lambda: [c() for c in cleanups]


async def _resolve_video(url: str, settings: ServerSettings, store: MediaStore, downloader, budget: _Budget,
                         accept: tuple[str, ...] = ("video/",)):  # fmt: skip
    """A local file path for the request's video (or image: ``accept``), and a cleanup function.

    Files the request brings are stored under the server's own names (``longvu.server_store``).
    """
    noop = lambda: None  # noqa: E731
    m = _DATA_URL.match(url)
    if m:
        _check_data_url(m, accept)
        path, cleanup = await asyncio.to_thread(_store_data_url, url, m.end(), budget, store)
        return str(path), cleanup
    if url.startswith("file-"):
        path = store.get(url)
        if path is None:
            raise APIError(404, f"no uploaded file {_clip(url)!r}", "not_found_error", "file_not_found")
        return str(path), noop
    if re.match(r"^https?://", url, re.I):
        if not settings.allow_remote_urls:
            raise APIError(400, "remote URLs are disabled on this server (start it with --allow-remote-urls)",
                           code="remote_urls_disabled")  # fmt: skip
        return await _download(url, settings, store, downloader, budget)
    local = url[len("file://") :] if url.startswith("file://") else url
    return str(_allowed_local(local, settings)), noop


def _check_data_url(m: re.Match, accept: tuple[str, ...]) -> None:
    mime = (m.group("mime") or "").lower()
    if mime and not (mime.startswith(accept) or mime == "application/octet-stream"):
        what = "an image" if accept == ("image/",) else "a video"
        raise APIError(415, f"unsupported media type {_clip(mime)!r}: send {what}", code="unsupported_media_type")
    if not m.group("b64"):
        raise APIError(400, "data URLs must be base64-encoded", code="invalid_data_url")


def _store_data_url(url: str, start: int, budget: _Budget, store: MediaStore):
    """Decode a data: URL's payload (``url[start:]``) into a store file (blocking: run off the event loop)."""
    budget.take((len(url) - start) * 3 // 4)
    try:
        data = base64.b64decode(url[start:], validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the data URL is not valid base64", code="invalid_data_url") from None
    if not data:
        raise APIError(400, "the data URL holds no data", code="invalid_data_url")
    return store.write_temp(data)


class _Reserving:
    """A store file that reserves every chunk against the store's quota and the request's budget."""

    def __init__(self, out, store: MediaStore, budget: _Budget) -> None:
        self.out, self.store, self.budget, self.reserved = out, store, budget, 0

    def write(self, chunk: bytes) -> None:
        self.budget.take(len(chunk))
        self.store.reserve(len(chunk))
        self.reserved += len(chunk)
        self.out.write(chunk)


async def _download(url: str, settings: ServerSettings, store: MediaStore, downloader, budget: _Budget):
    """Fetch ``url`` on the downloader's threads into a store file (see :mod:`longvu.remote`)."""
    from .remote import RemoteRefused, RemoteTooLarge

    _, path = store.new_path("tmp")
    with open(path, "xb") as out:
        sink = _Reserving(out, store, budget)
        try:
            await asyncio.wrap_future(downloader.submit(url, sink, settings.max_upload_bytes))
        except BaseException as e:
            path.unlink(missing_ok=True)
            store.release(sink.reserved)
            if isinstance(e, RemoteTooLarge):
                raise _too_large(settings) from None
            if isinstance(e, RemoteRefused):  # one message for every reason: no oracle of what is reachable
                raise APIError(400, "could not download the video from that URL", code="download_failed") from None
            raise

    def cleanup() -> None:
        path.unlink(missing_ok=True)
        store.release(sink.reserved)

    return str(path), cleanup


def _allowed_local(path: str, settings: ServerSettings) -> Path:
    """Resolve ``path`` (symlinks and ``..`` included) and require it inside the allowed folder.

    Outside the folder (by its name, then by where it leads) is a 403 whether it exists or
    not; a path that cannot be resolved (a NUL byte, a symlink loop, a name too long) a 400.
    """
    if not settings.allowed_local_media_path:
        raise APIError(400, "local paths are disabled on this server (start it with --allowed-local-media-path DIR)",
                       code="local_paths_disabled")  # fmt: skip
    outside = APIError(403, "the path is outside the allowed media folder", "permission_error", "path_not_allowed")
    root = Path(settings.allowed_local_media_path).resolve()
    if "\0" in path:
        raise APIError(400, "the path contains a NUL byte", code="invalid_path")
    lexical = Path(os.path.normpath(root / path))  # no file system access yet
    if lexical != root and root not in lexical.parents:
        raise outside
    try:
        real = lexical.resolve()
        inside = real == root or root in real.parents
        is_file = inside and real.is_file()
    except (OSError, RuntimeError, ValueError):  # a symlink loop (RuntimeError before Python 3.13), ENAMETOOLONG
        raise APIError(400, "the path cannot be resolved (a symlink loop, or a name too long)",
                       code="invalid_path") from None  # fmt: skip
    if not inside:
        raise outside
    if not is_file:
        raise APIError(404, "no such file in the allowed media folder", "not_found_error", "file_not_found")
    return real


def _too_large(settings: ServerSettings) -> APIError:
    return APIError(413, f"the file is larger than this server's {settings.max_upload_mb:g} MB limit",
                    code="file_too_large")  # fmt: skip


def _usage(answer) -> dict:
    prompt = answer.trace.data["counts"]["sequence_length"]
    done = len(answer.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _trace_summary(t: dict) -> dict:
    """The compression trace a client sees: frames kept, high-res frames, tokens per stage."""
    frames = t["frames"]
    return {
        "sampled_timestamps": t["video"].get("timestamps", []),
        "kept_indices": frames["kept"],
        "kept_timestamps": frames["kept_timestamps"],
        "high_res_indices": frames["high_res"],
        "high_res_timestamps": frames["high_res_timestamps"],
        "tokens_per_frame": t.get("tokens_per_frame"),
        "counts": t["counts"],
        "stc_applied": t["stc"]["applied"],
        "dropped_messages": t["prompt"].get("dropped_turns", 0),
        "from_cache": "encode_cache_hit" in t.get("timings", {}),
        # which Ray Serve replica answered, and how many replicas failed the job before it (serve_ray.py)
        **{k: t[k] for k in ("replica", "replica_retries") if k in t},
    }


def _completion(cid: str, created: int, model: str, answer) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": _finish_reason(answer),
            }
        ],
        "usage": _usage(answer),
        "longvu": _trace_summary(answer.trace.data),
    }


def _version() -> str:
    from . import __version__

    return __version__


def serve(lv: LongVU, settings: ServerSettings, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT.  Either cancels every running and queued job at once
    (encoding stops within a frame, generation within a token), so the requests end and
    uvicorn's graceful shutdown has nothing long to wait for; ``shutdown_timeout_s`` bounds
    the wait all the same."""
    import uvicorn

    app = create_app(lv, settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.jobs.cancel_all()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)))  # fmt: skip
    Server(config).run()
