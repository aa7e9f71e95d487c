"""OpenAI's chat shapes: request parsing, the completion body and Server-Sent Events chunks."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ..errors import Cancelled
from ..model.generation import GenerationOptions
from .errors import APIError, ended, media_error, timed_out
from .jobs import Jobs, ProgressFeed, outcome
from .parts import Media, add_part, parse_media_io_kwargs
from .settings import ServerSettings


class BodiesInFlight:
    """Bytes of chat bodies being read and parsed, all requests together, under one budget.

    A body is held only until its media are stored and the request parsed (then it is
    dropped: a queued request keeps no body); past the budget a new one is refused with 503
    and Retry-After instead of growing the server's memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise APIError(503, "the server is busy reading other requests' bodies; retry later", "server_error",
                           "server_busy", headers={"Retry-After": "2"})  # fmt: skip
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


async def read_body(request, budget: BodiesInFlight) -> tuple[bytes, int]:
    """The whole body (``request.stream()``: Starlette's ``body()`` would keep a copy on the request), and the
    bytes it took from ``budget`` (the declared length at once, else as it arrives); the caller gives them back."""
    declared = request.headers.get("content-length", "")
    taken = int(declared) if declared.isdigit() else 0  # the guard bounds it by the route's limit
    budget.take(taken)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > taken:
                budget.take(size - taken)
                taken = size
        return b"".join(chunks), taken
    except BaseException:
        budget.give(taken)
        raise


def parse_json(raw: bytes) -> Any:
    """The body as JSON: UTF-8 only; malformed, badly encoded or too deeply nested -> 400."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise APIError(400, "the request body is not valid JSON (UTF-8)", code="invalid_json") from None


def parse_chat_request(body: Any, settings: ServerSettings) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", param="model")
    # Any other name is answered by the one served model, as llama.cpp's server does, so that a client whose
    # default names another model works (lmms-eval's openai: grok-2-latest); the response names the served one.
    system, turns, media = _parse_messages(body.get("messages"), settings)
    parse_media_io_kwargs(body, media, media_error)
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
        elif not (isinstance(part, dict) and add_part(media, part, i, media_error)):
            raise APIError(400, f"messages[{i}]: unsupported content part type {kind!r} (use 'text', 'video_url', "
                           "'image_url' frames or an 'audio_url' video)", code="unsupported_content",
                           param="messages")  # fmt: skip
    return "\n".join(texts)


def _event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def start_stream(worker, prepare, cancel, wait_s: float, jobs: Jobs) -> tuple[asyncio.Future, asyncio.Queue]:
    """Queue a streamed job before the stream starts, so that a refusal is a plain status (503 + Retry-After).

    Returns the job's future and the queue its text pieces arrive on (what :func:`sse` reads).
    """
    if cancel.is_set():  # the server is stopping
        raise ended(jobs)
    pieces: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    feed = ProgressFeed(lambda p: loop.call_soon_threadsafe(pieces.put_nowait, p))

    def job():
        stream = prepare(feed)
        for piece in stream:
            if cancel.is_set():
                raise Cancelled()
            loop.call_soon_threadsafe(pieces.put_nowait, piece)
        return stream.answer

    return await worker.submit_waiting(job, wait_s), pieces


async def sse(fut: asyncio.Future, pieces: asyncio.Queue, request, cancel, settings, cid, created, req, cleanup,
              jobs: Jobs):  # fmt: skip
    """Server-Sent Events for ``stream: true`` of a job :func:`start_stream` queued: role chunk, progress
    chunks, content chunks, finish chunk, [DONE].

    Until the first token, chunks with an empty delta carry ``"longvu": {"progress": {"stage", "done",
    "total"}}`` (:class:`~longvu.serve.jobs.ProgressFeed`; ``"queued"`` while the job waits), at
    least every :data:`PROGRESS_EVERY_S` seconds.  An error after the status line was sent is an
    event in OpenAI's error shape.
    """

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": settings.model_name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})  # fmt: skip

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for item in _pieces(fut, pieces, request, settings):
            yield chunk({}, longvu={"progress": item}) if isinstance(item, dict) else chunk({"content": item})
        try:
            answer = outcome(fut, jobs)
        except APIError as e:  # the request's fault, a cancel, or a Ray Serve replica that failed mid-answer
            finished = True
            yield _event(e.body())
            return
        except Exception as e:  # reported in-stream: the status line was sent already
            finished = True
            yield _event(APIError(500, f"internal error: {type(e).__name__}", "server_error").body())
            return
        extra = {"longvu": trace_summary(answer.trace.data)}
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


PROGRESS_EVERY_S = 2.0  # before the first token, the latest progress is repeated at least this often


async def _pieces(fut: asyncio.Future, pieces: asyncio.Queue, request, settings: ServerSettings):
    """The job's text pieces and, until the first of them, its progress (dicts), as they come, until it
    ends; raises :class:`_Abandoned` on a disconnect or timeout."""
    start = last_check = last_progress = time.monotonic()
    progress: dict | None = {"stage": "queued", "done": 0, "total": 0}  # None once text flows
    while not (fut.done() and pieces.empty()):
        try:
            item = await asyncio.wait_for(pieces.get(), timeout=0.25)
        except asyncio.TimeoutError:
            item = None
        now = time.monotonic()
        if isinstance(item, str):
            progress = None
            yield item
        elif item is not None and progress is not None:
            progress, last_progress = item, now
            yield item
        elif progress is not None and now - last_progress >= PROGRESS_EVERY_S:
            last_progress = now
            yield progress
        if now - last_check > 0.5:
            last_check = now
            if await request.is_disconnected():
                raise _Abandoned()
        if now - start > settings.request_timeout_s:
            raise _Abandoned(timed_out(settings))


def _finish_reason(answer) -> str:
    return "stop" if answer.trace.data["generation"]["stopped_by"] != "max_new_tokens" else "length"


def _usage(answer) -> dict:
    prompt = answer.trace.data["counts"]["sequence_length"]
    done = len(answer.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def trace_summary(t: dict) -> dict:
    """The compression trace a client sees: frames kept, high-res frames, tokens per stage."""
    frames = t["frames"]
    return {
        "sampled_timestamps": t["video"].get("timestamps", []),
        **({"covered_s": t["video"]["covered_s"]} if "covered_s" in t["video"] else {}),  # a live stream's span
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


def completion(cid: str, created: int, model: str, answer) -> dict:
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
        "longvu": trace_summary(answer.trace.data),
    }
