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
import hmac
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import File, Form, Request, UploadFile

from .errors import Cancelled, ContextOverflowError, LongVUError
from .generation import GenerationOptions
from .pipeline import LongVU
from .server_media import Media, add_part, client_wait_s, frames_from_images, parse_media_io_kwargs

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerSettings:
    """Limits and policies of the server; every default can be changed on the command line."""

    model_name: str = "longvu"
    allowed_local_media_path: str | None = None
    allow_remote_urls: bool = False
    api_key: str | None = None
    max_upload_mb: float = 1024.0
    max_video_seconds: float = 4 * 3600.0
    request_timeout_s: float = 1800.0
    queue_size: int = 8
    max_waiting: int = 64  # requests waiting for a queue slot at most (see server_media.client_wait_s)
    max_new_tokens: int = 512
    max_tokens_limit: int = 4096
    upload_dir: str | None = None
    upload_ttl_s: float = 24 * 3600.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


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
    """Runs jobs one at a time on a thread (one model), fed by a bounded queue."""

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
                result = await asyncio.to_thread(fn)
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


class MediaStore:
    """Uploaded files: server-owned folder, generated names, removed when old."""

    def __init__(self, folder: str | None, ttl_s: float) -> None:
        self.own = folder is None
        self.root = Path(folder or tempfile.mkdtemp(prefix="longvu-uploads-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.meta: dict[str, dict] = {}

    def new_path(self, suffix: str = ".bin") -> tuple[str, Path]:
        fid = "file-" + uuid.uuid4().hex
        return fid, self.root / f"{fid}{suffix}"

    def register(self, fid: str, path: Path, filename: str, purpose: str) -> dict:
        info = {"id": fid, "object": "file", "bytes": path.stat().st_size, "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "path": path}  # fmt: skip
        self.meta[fid] = info
        return info

    def get(self, fid: str) -> Path | None:
        info = self.meta.get(fid)
        return info["path"] if info and info["path"].exists() else None

    def delete(self, fid: str) -> bool:
        info = self.meta.pop(fid, None)
        if info is None:
            return False
        info["path"].unlink(missing_ok=True)
        return True

    def sweep(self) -> None:
        now = time.time()
        for fid, info in list(self.meta.items()):
            if now - info["created_at"] > self.ttl_s:
                self.delete(fid)

    def close(self) -> None:
        if self.own:
            shutil.rmtree(self.root, ignore_errors=True)


def public(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "path"}


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


def create_app(lv: LongVU | None, settings: ServerSettings | None = None, backend=None):
    """The FastAPI application serving ``lv``.

    ``backend`` runs the chat jobs instead of ``lv`` (``None``: a :class:`LocalBackend` on ``lv``);
    :mod:`longvu.serve_ray` passes one that spreads them over Ray Serve replicas.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    settings = settings or ServerSettings()
    backend = backend or LocalBackend(lv)
    worker = Worker(settings.queue_size, settings.max_waiting, concurrency=backend.concurrency)
    store = MediaStore(settings.upload_dir, settings.upload_ttl_s)

    @asynccontextmanager
    async def lifespan(app):
        await worker.start()
        yield
        await worker.stop()
        store.close()

    app = FastAPI(title="longvu", version=_version(), lifespan=lifespan)
    app.state.lv, app.state.settings, app.state.store = lv, settings, store
    _error_handlers(app)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, key=settings.api_key)
    _info_routes(app, worker, settings)
    _file_routes(app, store, settings)
    _chat_route(app, backend, worker, store, settings)
    _media_routes(app, store, settings)
    _page_routes(app)
    return app


def _error_handlers(app) -> None:
    """Every error in OpenAI's shape; an unexpected one is a 500 that names only its type."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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
    """``/v1/files``: upload (multipart), look up and delete videos."""

    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form("vision")):  # noqa: B008 (FastAPI idiom)
        store.sweep()
        suffix = Path(file.filename or "").suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix or "") else ".bin"
        fid, path = store.new_path(suffix)
        size = 0
        try:
            with open(path, "wb") as out:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    _check_size(size, settings)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size == 0:
            path.unlink(missing_ok=True)
            raise APIError(400, "the uploaded file is empty", code="empty_file")
        return public(store.register(fid, path, Path(file.filename or "upload").name, purpose))

    @app.get("/v1/files/{fid}")
    async def file_info(fid: str):
        info = store.meta.get(fid)
        if not info:
            raise APIError(404, f"no file {fid!r}", "not_found_error")
        return public(info)

    @app.delete("/v1/files/{fid}")
    async def file_delete(fid: str):
        if not store.delete(fid):
            raise APIError(404, f"no file {fid!r}", "not_found_error")
        return {"id": fid, "object": "file", "deleted": True}


def _chat_route(app, backend, worker: Worker, store: MediaStore, settings: ServerSettings) -> None:
    """``POST /v1/chat/completions``: parse, resolve the video, queue the job, answer or stream."""
    from fastapi.responses import StreamingResponse

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
        req = _parse_chat_request(body, settings)
        media: Media = req["media"]
        source, cleanup = await _resolve_media(media, settings, store)
        req["wait_s"] = client_wait_s(request.headers, settings.request_timeout_s)
        cancel = threading.Event()
        created = int(time.time())
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]

        job = ChatJob(req["system"], req["turns"], media, source, req["gen"], settings.max_video_seconds)

        def prepare():
            if cancel.is_set():  # the client left while the request was queued
                raise Cancelled()
            return backend.stream(job, cancel)

        if not req["stream"]:
            try:
                answer = await _run_job(worker, lambda: _drain(prepare, cancel), request, cancel, settings,
                                        req["wait_s"])  # fmt: skip
            finally:
                cleanup()
            return _completion(cid, created, settings.model_name, answer)

        return StreamingResponse(
            _sse(worker, prepare, request, cancel, settings, cid, created, req, cleanup),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


@dataclass
class ChatJob:
    """What one chat request asks of a model (picklable: it travels to Ray Serve replicas).

    ``source`` is the video's local path, or the image frames' paths (see :class:`Media`).
    """

    system: str | None
    turns: list[tuple[str, str]]
    media: Media
    source: str | list[str]
    gen: GenerationOptions
    max_video_seconds: float

    @property
    def video_key(self) -> str:
        """Names the video for routing its follow-up turns to the replica holding its features."""
        return self.source if isinstance(self.source, str) else "frames:" + "|".join(self.source)


def run_chat_job(lv: LongVU, job: ChatJob, cancel: threading.Event):
    """Encode (or read from the cache) the job's video and start its answer: an AnswerStream."""
    media = job.media
    if isinstance(job.source, list):  # image parts: the frames of one video
        feats = lv.features(frames_from_images(job.source, media), cancel=cancel)
    else:
        _check_duration(job.source, job.max_video_seconds)
        feats = lv.features(job.source, media.sampling, cancel=cancel)
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
    URL: these endpoints only read what the server already holds).  Behind the API key like
    all of ``/v1/``.
    """
    from fastapi.responses import FileResponse, Response

    async def held(video: str) -> str:
        if video.startswith("data:") or re.match(r"^https?://", video, re.I):
            raise APIError(400, "name a file id or a path under the allowed folder", code="invalid_video")
        path, _ = await _resolve_video(video, settings, store)
        return path

    @app.get("/v1/thumbnail")
    async def thumbnail(video: str, t: float, w: int = 160):
        from .thumbnails import thumbnail_jpeg

        path = await held(video)
        try:
            data = await asyncio.to_thread(thumbnail_jpeg, path, t, w)
        except LongVUError as e:
            raise APIError(400, str(e), code="bad_input") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/video")
    async def video_file(video: str):
        import mimetypes

        path = await held(video)
        mime = mimetypes.guess_type(path)[0] or ""
        # only a video type is served inline; anything else (an uploaded .html, say) is a download
        mime = mime if mime.startswith("video/") else "application/octet-stream"
        return FileResponse(path, media_type=mime, headers={"X-Content-Type-Options": "nosniff"})


def _page_routes(app) -> None:
    """The web page and its static files (served by the app: no CDN)."""
    from fastapi.responses import FileResponse

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise APIError(404, "not found", "not_found_error")
        return FileResponse(path)


class APIKeyMiddleware:
    """Require ``Authorization: Bearer KEY`` on ``/v1/`` (plain ASGI, so the endpoints still see disconnects)."""

    def __init__(self, app, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(header, self.expected):
                from fastapi.responses import JSONResponse

                err = APIError(401, "missing or wrong API key (send it as 'Authorization: Bearer KEY')",
                               "authentication_error", "invalid_api_key")  # fmt: skip
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _drain(prepare, cancel: threading.Event):
    stream = prepare()
    for _ in stream:
        if cancel.is_set():
            raise Cancelled()
    return stream.answer


def _input_error(e: LongVUError) -> APIError:
    """The 400 for an error of the request's content (OpenAI's code for a prompt that cannot fit)."""
    code = "context_length_exceeded" if isinstance(e, ContextOverflowError) else "bad_input"
    return APIError(400, str(e), code=code, param="messages" if code == "context_length_exceeded" else None)


async def _run_job(worker: Worker, fn, request, cancel: threading.Event, settings: ServerSettings, wait_s: float = 0.0):
    """Queue ``fn`` (waiting up to ``wait_s`` for a slot); wait for it while watching for a disconnect and the time limit."""
    fut = await worker.submit_waiting(fn, wait_s)
    start = time.monotonic()
    while True:
        done, _ = await asyncio.wait({fut}, timeout=0.25)
        if done:
            try:
                return fut.result()
            except Cancelled:
                raise APIError(499, "the client went away", code="cancelled") from None
            except LongVUError as e:
                raise _input_error(e) from None
        if await request.is_disconnected():
            cancel.set()
            fut.cancel()
            raise APIError(499, "the client went away", code="cancelled")
        if time.monotonic() - start > settings.request_timeout_s:
            cancel.set()
            fut.cancel()
            raise APIError(504, f"the request took longer than {settings.request_timeout_s:g}s", "server_error",
                           "timeout")  # fmt: skip


async def _sse(worker, prepare, request, cancel, settings, cid, created, req, cleanup):
    """Server-Sent Events for ``stream: true``: role chunk, content chunks, finish chunk, [DONE]."""
    pieces: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def job():
        stream = prepare()
        for piece in stream:
            if cancel.is_set():
                raise Cancelled()
            loop.call_soon_threadsafe(pieces.put_nowait, ("piece", piece))
        return stream.answer

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": settings.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}  # fmt: skip
        return f"data: {json.dumps(data)}\n\n"

    finished = False
    try:
        try:
            fut = await worker.submit_waiting(job, req.get("wait_s", 0.0))
        except APIError as e:
            finished = True
            yield f"data: {json.dumps(e.body())}\n\n"
            return
        yield chunk({"role": "assistant", "content": ""})
        start = last_check = time.monotonic()
        while True:
            if fut.done() and pieces.empty():
                break
            try:
                _, piece = await asyncio.wait_for(pieces.get(), timeout=0.25)
                yield chunk({"content": piece})
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if now - last_check > 0.5:
                last_check = now
                if await request.is_disconnected():
                    return  # the finally block cancels the generation
            if now - start > settings.request_timeout_s:
                yield f"data: {json.dumps(APIError(504, 'request timed out', 'server_error', 'timeout').body())}\n\n"
                return
        try:
            answer = fut.result()
        except Cancelled:
            finished = True
            yield f"data: {json.dumps(APIError(499, 'cancelled', code='cancelled').body())}\n\n"
            return
        except LongVUError as e:
            finished = True
            yield f"data: {json.dumps(_input_error(e).body())}\n\n"
            return
        except APIError as e:  # e.g. a Ray Serve replica that failed mid-answer
            finished = True
            yield f"data: {json.dumps(e.body())}\n\n"
            return
        except Exception as e:  # reported in-stream: the status line was sent already
            finished = True
            yield f"data: {json.dumps(APIError(500, f'internal error: {type(e).__name__}', 'server_error').body())}\n\n"
            return
        finish = "stop" if answer.trace.data["generation"]["stopped_by"] != "max_new_tokens" else "length"
        extra = {"longvu": _trace_summary(answer.trace.data)}
        if req.get("include_usage"):
            extra["usage"] = _usage(answer)
        finished = True
        yield chunk({}, finish, **extra)
        yield "data: [DONE]\n\n"
    finally:
        # A client that disconnects ends this generator early (Starlette cancels it at a
        # yield): stop the generation so the worker is free for the next request.
        if not finished:
            cancel.set()
        cleanup()


def _parse_chat_request(body: Any, settings: ServerSettings) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != settings.model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {settings.model_name!r}",
                       "not_found_error", "model_not_found", "model")  # fmt: skip
    system, turns, media = _parse_messages(body.get("messages"))
    parse_media_io_kwargs(body, media, _media_error)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    return {"system": system, "turns": turns, "media": media, "gen": _parse_generation(body, settings),
            "stream": stream, "include_usage": bool(isinstance(opts, dict) and opts.get("include_usage"))}  # fmt: skip


def _parse_messages(messages: Any) -> tuple[str | None, list[tuple[str, str]], Media]:
    """The system prompt, the user/assistant turns and the one video (:class:`Media`) of ``messages``."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
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
    if media.empty:
        raise APIError(400, "no video: add a content part {'type': 'video_url', 'video_url': {'url': ...}} "
                       "(or image_url parts: a video's frames)", code="no_video", param="messages")  # fmt: skip
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message must come from the user", param="messages")
    if turns[0][0] != "user":
        raise APIError(400, "the first non-system message must come from the user", param="messages")
    return system, turns, media


def _parse_generation(body: dict, settings: ServerSettings) -> GenerationOptions:
    """Decoding options from OpenAI's fields; ``max_tokens`` above the server's limit is refused."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", settings.max_new_tokens))
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, "'seed' must be an integer", param="seed")
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


async def _resolve_media(media: Media, settings: ServerSettings, store: MediaStore):
    """A local video path, or a list of local image paths (the frames), and one cleanup function."""
    if media.video_url is not None:
        accept = ("video/", "audio/") if media.from_audio_part else ("video/",)
        return await _resolve_video(media.video_url, settings, store, accept=accept)
    paths, cleanups = [], []
    try:
        for url in media.image_urls:
            path, cleanup = await _resolve_video(url, settings, store, accept=("image/",))
            paths.append(path)
            cleanups.append(cleanup)
    except BaseException:
        for c in cleanups:
            c()
        raise
    return paths, lambda: [c() for c in cleanups]


async def _resolve_video(url: str, settings: ServerSettings, store: MediaStore, accept: tuple[str, ...] = ("video/",)):
    """A local file path for the request's video (or image: ``accept``), and a cleanup function."""
    noop = lambda: None  # noqa: E731
    m = _DATA_URL.match(url)
    if m:
        mime = (m.group("mime") or "").lower()
        if mime and not (mime.startswith(accept) or mime == "application/octet-stream"):
            what = "an image" if accept == ("image/",) else "a video"
            raise APIError(415, f"unsupported media type {mime!r}: send {what}", code="unsupported_media_type")
        if not m.group("b64"):
            raise APIError(400, "data URLs must be base64-encoded", code="invalid_data_url")
        payload = url[m.end() :]
        _check_size(len(payload) * 3 // 4, settings)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "the data URL is not valid base64", code="invalid_data_url") from None
        if not data:
            raise APIError(400, "the data URL holds no data", code="invalid_data_url")
        _, path = store.new_path(".video")
        path.write_bytes(data)
        return str(path), lambda: path.unlink(missing_ok=True)
    if url.startswith("file-"):
        path = store.get(url)
        if path is None:
            raise APIError(404, f"no uploaded file {url!r}", "not_found_error", "file_not_found")
        return str(path), noop
    if re.match(r"^https?://", url, re.I):
        if not settings.allow_remote_urls:
            raise APIError(400, "remote URLs are disabled on this server (start it with --allow-remote-urls)",
                           code="remote_urls_disabled")  # fmt: skip
        path = await asyncio.to_thread(_download, url, settings, store)
        return str(path), lambda: path.unlink(missing_ok=True)
    local = url[len("file://") :] if url.startswith("file://") else url
    return str(_allowed_local(local, settings)), noop


def _allowed_local(path: str, settings: ServerSettings) -> Path:
    """Resolve ``path`` (symlinks and ``..`` included) and require it inside the allowed folder."""
    if not settings.allowed_local_media_path:
        raise APIError(400, "local paths are disabled on this server (start it with --allowed-local-media-path DIR)",
                       code="local_paths_disabled")  # fmt: skip
    root = Path(settings.allowed_local_media_path).resolve()
    p = Path(path)
    if not p.is_absolute():
        p = root / p
    real = p.resolve()
    if real != root and root not in real.parents:
        raise APIError(403, "the path is outside the allowed media folder", "permission_error", "path_not_allowed")
    if not real.is_file():
        raise APIError(404, "no such file in the allowed media folder", "not_found_error", "file_not_found")
    return real


def _check_size(size: int, settings: ServerSettings) -> None:
    if size > settings.max_upload_bytes:
        raise APIError(413, f"the video is larger than the {settings.max_upload_mb:g} MB limit", code="file_too_large")


def _download(url: str, settings: ServerSettings, store: MediaStore) -> Path:
    import urllib.request

    _, path = store.new_path(".video")
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as out:  # noqa: S310 (opt-in)
            while chunk := r.read(1 << 20):
                size += len(chunk)
                _check_size(size, settings)
                out.write(chunk)
    except APIError:
        path.unlink(missing_ok=True)
        raise
    except Exception as e:  # network errors become a 400 for the client
        path.unlink(missing_ok=True)
        raise APIError(400, f"could not download the video ({type(e).__name__})", code="download_failed") from None
    return path


def _check_duration(path: str, max_video_seconds: float) -> None:
    """Refuse a video longer than the limit, counting its frames (a header's duration can lie)."""
    from .video import count_frames

    frames, fps = count_frames(path)
    seconds = frames / fps
    if seconds > max_video_seconds:
        raise LongVUError(f"the video lasts {seconds:.0f}s, more than this server's {max_video_seconds:g}s limit")


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
        **({"replica": t["replica"]} if "replica" in t else {}),  # which Ray Serve replica answered
    }


def _completion(cid: str, created: int, model: str, answer) -> dict:
    finish = "stop" if answer.trace.data["generation"]["stopped_by"] != "max_new_tokens" else "length"
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": finish}],
        "usage": _usage(answer),
        "longvu": _trace_summary(answer.trace.data),
    }


def _version() -> str:
    from . import __version__

    return __version__


def serve(lv: LongVU, settings: ServerSettings, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(lv, settings), host=host, port=port, log_level="info")
