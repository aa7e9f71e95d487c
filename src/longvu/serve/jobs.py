"""Chat jobs: a bounded queue, one worker per model, cancellation, and the job a model runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Cancelled, LongVUError
from ..model.encode import ProgressCallback
from ..model.generation import GenerationOptions
from ..model.intake import MediaLimits
from ..pipeline.api import LongVU
from .errors import APIError, ended, public_error, timed_out
from .parts import Media, frames_from_images
from .settings import ServerSettings


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


def frames_budget(settings: ServerSettings) -> int:
    return int(settings.max_image_frames_mb * 1024 * 1024)


def run_chat_job(lv: LongVU, job: ChatJob, cancel: threading.Event, progress: ProgressCallback | None = None):
    """Encode (or read from the cache) the job's video and start its answer: an AnswerStream.

    The server's :class:`~longvu.model.intake.MediaLimits` apply while decoding (a
    :class:`~longvu.errors.MediaLimitError` past them), not from the header.  ``progress`` hears
    the encoding's stages, then ``("answering", frames, frames)`` once the features are ready.
    """
    media = job.media
    if isinstance(job.source, list):  # image parts: the frames of one video
        clip = frames_from_images(job.source, media, job.limits, job.frames_bytes)
        feats = lv.features(clip, cancel=cancel, limits=job.limits, progress=progress)
    else:
        feats = lv.features(job.source, media.sampling, cancel=cancel, limits=job.limits, progress=progress)
    if progress is not None:
        progress("answering", len(feats), len(feats))
    conv = lv.conversation(job.system, job.turns)
    return lv.generate(feats, conv, generation=job.gen, cancel=cancel)


class ProgressFeed:
    """A job's progress, from its worker thread to ``post`` (which must be thread-safe).

    A new stage and a stage's last count go at once; counts in between at most every
    ``every_s`` seconds, so a fast encoder does not flood the stream.  ``post`` gets
    ``{"stage": ..., "done": int, "total": int}``.
    """

    def __init__(self, post: Callable[[dict], None], every_s: float = 0.5) -> None:
        self.post, self.every_s = post, every_s
        self.stage, self.last = None, float("-inf")

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage == self.stage and done != total and now - self.last < self.every_s:
            return
        self.stage, self.last = stage, now
        self.post({"stage": stage, "done": int(done), "total": int(total)})


class LocalBackend:
    """Runs chat jobs on the model in this process (one at a time)."""

    concurrency = 1

    def __init__(self, lv: LongVU) -> None:
        self.lv = lv

    def stream(self, job: ChatJob, cancel: threading.Event, progress: ProgressCallback | None = None):
        return run_chat_job(self.lv, job, cancel, progress)


def preparer(backend, job: ChatJob, cancel: threading.Event):
    """``prepare(progress=None)``: the job's answer stream, started on the worker thread that calls it."""

    def prepare(progress: ProgressCallback | None = None):
        if cancel.is_set():  # the client left (or the server is stopping) while the request was queued
            raise Cancelled()
        return backend.stream(job, cancel, progress)

    return prepare


def drain(prepare, cancel: threading.Event):
    stream = prepare()
    for _ in stream:
        if cancel.is_set():
            raise Cancelled()
    return stream.answer


def outcome(fut: asyncio.Future, jobs: Jobs):
    """The job's result, or the APIError its failure means (an unexpected error propagates: a 500)."""
    try:
        return fut.result()
    except Cancelled:
        raise ended(jobs) from None
    except LongVUError as e:
        raise public_error(e) from None


async def run_job(worker: Worker, fn, request, cancel: threading.Event, settings: ServerSettings, wait_s: float,
                   jobs: Jobs):  # fmt: skip
    """Queue ``fn`` (waiting up to ``wait_s`` for a slot); wait for it while watching for a disconnect and the time limit."""
    fut = await worker.submit_waiting(fn, wait_s)
    start = time.monotonic()
    while True:
        done, _ = await asyncio.wait({fut}, timeout=0.25)
        if done:
            return outcome(fut, jobs)
        if await request.is_disconnected():
            cancel.set()
            fut.cancel()
            raise APIError(499, "the client went away", code="cancelled")
        if time.monotonic() - start > settings.request_timeout_s:
            cancel.set()
            fut.cancel()
            raise timed_out(settings)
