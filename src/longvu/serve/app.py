"""An OpenAI-compatible HTTP server around one :class:`~longvu.pipeline.api.LongVU`.

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
import os
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from python_multipart.exceptions import FormParserError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import LongVUError
from ..model.encode import remove_orphan_spills
from ..model.intake import HeldFile, probe_video
from ..pipeline.api import LongVU
from .errors import APIError, clip, disk_full_error, public_error, quota_error, too_large
from .guard import MULTIPART_SLACK, BodyRule, HostGuard, RequestGuard
from .http import uvicorn_config
from .jobs import ChatJob, Jobs, LocalBackend, Worker, drain, frames_budget, preparer, run_job
from .live import add_live_routes, body_rules, is_live
from .media import held_file_response, hold_local, resolve_media
from .openai import BodiesInFlight, completion, parse_chat_request, parse_json, read_body, sse, start_stream
from .parts import Media, client_wait_s
from .remote import Downloader
from .settings import ServerSettings
from .store import DiskFull, MediaStore, QuotaExceeded, UploadError, UploadTooLarge, receive_upload
from .thumbnails import ThumbnailPool, thumbnail_jpeg

STATIC = Path(__file__).parent / "static"


STATIC_FILES = {
    "app.js": "text/javascript",
    "live.js": "text/javascript",
    "style.css": "text/css",
}  # what /static/ serves, by name


def create_app(lv: LongVU | None, settings: ServerSettings | None = None, backend=None):
    """The FastAPI application serving ``lv``.

    ``backend`` runs the chat jobs instead of ``lv`` (``None``: a :class:`LocalBackend` on ``lv``);
    :mod:`longvu.serve.replicas` passes one that spreads them over Ray Serve replicas.
    ``app.state.jobs.cancel_all()`` stops every request in progress (what a shutdown calls).
    """

    settings = settings or ServerSettings()
    backend = backend or LocalBackend(lv)
    worker = Worker(settings.queue_size, settings.max_waiting, concurrency=backend.concurrency)
    store = MediaStore(settings.upload_dir, settings.upload_ttl_s, int(settings.max_upload_total_mb * 1024 * 1024),
                       settings.max_upload_files)  # fmt: skip
    downloader = Downloader(deadline_s=settings.remote_timeout_s, max_redirects=settings.max_redirects)
    jobs = Jobs()
    thumbs = ThumbnailPool()

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(remove_orphan_spills)  # what encoders killed mid-encode left in the temp folder
        await worker.start()
        sweeper = asyncio.create_task(store.sweep_every(settings.sweep_interval_s))
        yield
        jobs.cancel_all()
        app.state.live.close()
        sweeper.cancel()
        await worker.stop()
        downloader.close()
        thumbs.close()
        store.close()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="longvu", version=_version(), lifespan=lifespan, **docs)
    app.state.lv, app.state.settings, app.state.store, app.state.jobs = lv, settings, store, jobs
    _error_handlers(app)
    _guards(app, settings)
    _info_routes(app, worker, settings)
    _file_routes(app, store, settings)
    _chat_route(app, backend, worker, store, settings, jobs, downloader)
    _media_routes(app, store, settings, thumbs)
    add_live_routes(app, lv, store, settings)
    _page_routes(app)
    return app


def _guards(app, settings: ServerSettings) -> None:
    """The front door (``longvu.serve.guard``): Host, then CORS if configured, then origin, key and body checks."""

    json_limit = int(settings.max_json_mb * 1024 * 1024)
    rules = {("POST", "/v1/chat/completions"): BodyRule("application/json", json_limit, "a chat request"),
             ("POST", "/v1/files"): BodyRule("multipart/form-data", settings.max_upload_bytes + MULTIPART_SLACK,
                                             "an upload", settings.max_upload_mb), **body_rules(settings)}  # fmt: skip
    app.add_middleware(RequestGuard, rules=rules, api_key=settings.api_key, cors_origins=settings.cors_origins,
                       deadlines=(settings.body_idle_timeout_s, settings.body_timeout_s),
                       max_headers=settings.max_headers)  # fmt: skip
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"], max_age=600)  # fmt: skip
    app.add_middleware(HostGuard, allowed=settings.allowed_hosts)  # added last: runs first


def _error_handlers(app) -> None:
    """Every error in OpenAI's shape; an unexpected one is a 500 that names only its type."""

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

    @app.exception_handler(DiskFull)
    async def _disk_full(request, exc: DiskFull):
        err = disk_full_error()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(QuotaExceeded)
    async def _quota(request, exc: QuotaExceeded):
        return JSONResponse(quota_error().body(), status_code=413)

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

        try:
            fid, path, fields = await receive_upload(request.stream(), request.headers.get("content-type", ""),
                                                     store, settings.max_upload_bytes)  # fmt: skip
        except UploadTooLarge:
            raise too_large(settings) from None
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
            raise APIError(404, f"no file {clip(fid)!r}", "not_found_error")
        return info

    @app.delete("/v1/files/{fid}")
    async def file_delete(fid: str):
        if not store.delete(fid):
            raise APIError(404, f"no file {clip(fid)!r}", "not_found_error")
        return {"id": fid, "object": "file", "deleted": True}


def _chat_route(app, backend, worker: Worker, store: MediaStore, settings: ServerSettings, jobs: Jobs,
                downloader) -> None:  # fmt: skip
    """``POST /v1/chat/completions``: parse, resolve the video, queue the job, answer or stream."""

    bodies = BodiesInFlight(int(settings.max_bodies_in_flight_mb * 1024 * 1024))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw, held = await read_body(request, bodies)  # the guard bounds each body; ``bodies`` all together
        try:
            req = parse_chat_request(await asyncio.to_thread(parse_json, raw), settings)
            del raw  # parsed: the body's bytes go now, its data: URLs once stored
            media: Media = req["media"]
            if is_live(media.video_url):  # a live session: what it has encoded now
                source, cleanup = await asyncio.to_thread(app.state.live.features, media.video_url), lambda: None
            else:
                source, cleanup = await resolve_media(media, settings, store, downloader)
            media.drop_payloads()
        finally:
            bodies.give(held)
        cancel = jobs.new()

        def finish() -> None:  # idempotent: the stream and its response both call it
            if not finished.is_set():
                finished.set()
                jobs.done(cancel)
                cleanup()

        finished = threading.Event()

        try:
            req["wait_s"] = client_wait_s(request.headers, settings.request_timeout_s)
            job = ChatJob(req["system"], req["turns"], media, source, req["gen"], settings.limits,
                          frames_budget(settings))  # fmt: skip
            prepare = preparer(backend, job, cancel)
            cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
            if req["stream"]:  # queued first: a full queue is a 503 with Retry-After, not a 200 and an error event
                fut, pieces = await start_stream(worker, prepare, cancel, req["wait_s"], jobs)
                return _EventStream(sse(fut, pieces, request, cancel, settings, cid, created, req, finish, jobs),
                                    on_end=lambda: (fut.done() or cancel.set(), finish()))  # fmt: skip
            answer = await run_job(worker, lambda: drain(prepare, cancel), request, cancel, settings,
                                    req["wait_s"], jobs)  # fmt: skip
        except BaseException:
            finish()
            raise
        finish()
        return completion(cid, created, settings.model_name, answer)


class _EventStream(StreamingResponse):
    """Server-Sent Events whose ``on_end`` runs however the response ends, even if the stream never started."""

    def __init__(self, content, on_end) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        self.on_end = on_end

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_end()


def _media_routes(app, store: MediaStore, settings: ServerSettings, thumbs: ThumbnailPool) -> None:
    """What the web page shows of a video: the file itself (its player) and JPEG thumbnails at timestamps.

    ``video`` is a file id or a path under the allowed folder (never a data URL or a remote
    URL: these endpoints only read what the server already holds).  Both open the file
    through the intake with the server's limits; ``/v1/video`` serves only an accepted
    video, with the media type of its container as found by content.  Behind the API key.
    """

    def held(video: str) -> HeldFile:
        """The named file, opened once: thumbnails and the player read this descriptor, never the name again."""
        if video.startswith("data:") or re.match(r"^https?://", video, re.I):
            raise APIError(400, "name a file id or a path under the allowed folder", code="invalid_video")
        if video.startswith("file-"):
            path = store.get(video)
            if path is None:
                raise APIError(404, f"no uploaded file {clip(video)!r}", "not_found_error", "file_not_found")
            try:
                return HeldFile(os.open(path, os.O_RDONLY | os.O_CLOEXEC), video)  # our own file, by our own name
            except FileNotFoundError:  # deleted meanwhile
                raise APIError(404, f"no uploaded file {clip(video)!r}", "not_found_error", "file_not_found") from None
        local = video[len("file://") :] if video.startswith("file://") else video
        return hold_local(local, settings)

    @app.get("/v1/thumbnail")
    async def thumbnail(request: Request, video: str, t: float, w: int = 160):
        source = held(video)
        data = await thumbs.run(lambda cancel: thumbnail_jpeg(source, t, w, settings.limits, cancel), request,
                                cleanup=source.close)  # fmt: skip
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/video")
    async def video_file(request: Request, video: str):
        source = held(video)
        try:
            info = await asyncio.to_thread(probe_video, source, settings.limits)
        except BaseException:
            source.close()
            raise
        return held_file_response(source, request.headers.get("range"),
                                  VIDEO_TYPES.get(info.format, "application/octet-stream"))  # fmt: skip


# Media types of the accepted containers (``longvu.model.intake.CONTAINER_FORMATS``), for the page's player.
VIDEO_TYPES = {"mov,mp4,m4a,3gp,3g2,mj2": "video/mp4", "matroska,webm": "video/webm", "avi": "video/x-msvideo",
               "mpegts": "video/mp2t", "mpeg": "video/mpeg", "flv": "video/x-flv", "asf": "video/x-ms-asf",
               "ogg": "video/ogg"}  # fmt: skip


def _page_routes(app) -> None:
    """The web page and its static files (served by the app: no CDN); a fixed list of files, no paths."""

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC_FILES:
            raise APIError(404, "not found", "not_found_error")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])


def _version() -> str:

    return __version__


def serve(lv: LongVU, settings: ServerSettings, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT.  Either cancels every running and queued job at once
    (encoding stops within a frame, generation within a token), so the requests end and
    uvicorn's graceful shutdown has nothing long to wait for; ``shutdown_timeout_s`` bounds
    the wait all the same."""

    app = create_app(lv, settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.jobs.cancel_all()
            super().handle_exit(sig, frame)

    Server(uvicorn_config(app, settings, host, port, log_level="info")).run()
