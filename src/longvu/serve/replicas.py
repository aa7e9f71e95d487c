"""Scale-out serving on Ray Serve: ``longvu serve --replicas N [--ray ADDRESS]``.

Two deployments make one Serve application:

* ``Ingress`` (one replica, no model): the same FastAPI app as ``longvu serve``
  (:func:`longvu.serve.app.create_app`: the OpenAI-compatible API, uploads, the web page,
  limits, the API key), whose chat jobs go to the model replicas instead of a local model;
  its queue holds ``--queue-size`` requests beyond the N running ones.
* ``ModelReplica`` (N replicas, ``ray_actor_options`` for CPUs/GPUs): one
  :class:`~longvu.LongVU` each, one request at a time (``max_ongoing_requests=1``), so
  Serve's router sends each job to a free replica (it routes by queue length).

A video's follow-up turns prefer the replica that encoded it: each job is sent with
Serve's multiplexed-model id set to the video's key, and a replica that served the video
registers that id (``@serve.multiplexed``), so the router tries it first.  All replicas
share the feature cache folder (``--cache-dir``; on a cluster, put it, ``--upload-dir``
and ``--allowed-local-media-path`` on storage every node mounts), so any replica reads
the features of a video another one encoded.

A replica that dies before a job has streamed any text: the job is retried once on
another replica (the response's ``longvu.replica_retries`` says 1); after that the client
gets a 503 (or an error event in its stream).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import torch
from ray import serve

from ..errors import Cancelled, LongVUError
from ..pipeline.api import LongVU
from ..pipeline.cache import FeatureCache
from .app import create_app
from .errors import APIError, public_error
from .jobs import ChatJob, ProgressFeed, run_chat_job
from .settings import ServerSettings

APP_NAME = "longvu"


# On shutdown a replica waits this long at most for its running job (the ingress cancels them first).
_SHUTDOWN = {"graceful_shutdown_wait_loop_s": 0.5, "graceful_shutdown_timeout_s": 3.0}


@serve.deployment(max_ongoing_requests=1, **_SHUTDOWN)
class ModelReplica:
    """One LongVU model; streams a chat job's text pieces, then its Answer."""

    def __init__(self, model: str, load: dict, cache_dir: str | None, threads: int | None) -> None:

        if threads:
            torch.set_num_threads(threads)
        cache = False if cache_dir == "" else FeatureCache(cache_dir)
        self.lv = LongVU.from_pretrained(model, cache=cache, **load)
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    @serve.multiplexed(max_num_models_per_replica=64)
    async def hold(self, video_key: str) -> str:
        """Registers this replica as holding ``video_key``'s features (the router prefers it)."""
        return video_key

    async def answer(self, job: ChatJob):
        """Yield ``("progress", dict)`` and ``("piece", text)`` items, then ``("answer", Answer)`` or
        ``("error", kind, message)``."""
        key = serve.get_multiplexed_model_id()
        if key:
            await self.hold(key)
        loop, pieces, cancel = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def work():
            feed = ProgressFeed(lambda p: loop.call_soon_threadsafe(pieces.put_nowait, ("progress", p)))
            stream = run_chat_job(self.lv, job, cancel, feed)
            for piece in stream:
                loop.call_soon_threadsafe(pieces.put_nowait, ("piece", piece))
            stream.answer.trace.data["replica"] = self.name
            return stream.answer

        task = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            async for item in _drain_until_done(pieces, task):
                yield item
        except Cancelled:
            yield ("error", "cancelled", None)
        except LongVUError as e:  # the client's fault: sent back as data (the 4xx, no server path), not a crash
            err = public_error(e)
            yield ("error", "input", (err.status, err.message, err.type, err.code, err.param))
        finally:
            cancel.set()  # a cancelled request (the client left: Serve cancels this task) stops the work


async def _drain_until_done(pieces: asyncio.Queue, task: asyncio.Future):
    """Items of ``pieces`` as they come until ``task`` ends, then ``("answer", task's result)``."""
    while True:
        getter = asyncio.ensure_future(pieces.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield getter.result()
            continue
        getter.cancel()
        while not pieces.empty():
            yield pieces.get_nowait()
        yield ("answer", task.result())
        return


class RayBackend:
    """The ingress's backend: runs chat jobs on ``ModelReplica`` s through a Serve handle."""

    def __init__(self, handle, replicas: int) -> None:
        self.handle, self.concurrency = handle, replicas

    def stream(self, job: ChatJob, cancel: threading.Event, progress=None) -> RemoteStream:
        return RemoteStream(self.handle, job, cancel, progress)


class RemoteStream:
    """Text pieces of a job answered by a replica; ``.answer`` at the end (like an AnswerStream)."""

    def __init__(self, handle, job: ChatJob, cancel: threading.Event, progress=None) -> None:
        self.handle, self.job, self.cancel = handle, job, cancel
        self.progress = progress  # called with the replica's progress, as a local job's would be
        self.answer = None

    def __iter__(self):
        # lazy: ray comes with the eval/serve-ray extras
        from ray.exceptions import RayError

        for attempt in range(2):
            gen = self.handle.options(stream=True, multiplexed_model_id=self.job.video_key).answer.remote(self.job)
            sent = False
            watch = _on_cancel(self.cancel, gen.cancel)  # reaches the replica mid-encode, when no item comes
            try:
                for item in gen:
                    if self.cancel.is_set():
                        raise Cancelled()
                    if item[0] == "piece":
                        sent = True
                        yield item[1]
                    elif item[0] == "progress":
                        if self.progress is not None:
                            self.progress(**item[1])
                    elif item[0] == "error":
                        raise Cancelled() if item[1] == "cancelled" else APIError(*item[2])
                    else:
                        self.answer = item[1]
                        self.answer.trace.data["replica_retries"] = attempt  # the response's longvu field
                return
            except (Cancelled, APIError):
                raise
            except Exception as e:
                if self.cancel.is_set():  # the request was cancelled under us (Serve's cancellation error)
                    raise Cancelled() from None
                if not isinstance(e, RayError):
                    raise
                if sent or attempt:  # text already went out, or the retry failed too: fail cleanly
                    raise APIError(503, f"a model replica failed ({type(e).__name__}); retry", "server_error",
                                   "replica_failed", headers={"Retry-After": "5"}) from None  # fmt: skip
            finally:
                watch.set()


def _on_cancel(cancel: threading.Event, fn) -> threading.Event:
    """Call ``fn()`` once ``cancel`` is set, from a small watcher thread; set the returned event to stop watching."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if cancel.wait(0.2):
                if not stop.is_set():
                    fn()
                return

    threading.Thread(target=watch, daemon=True, name="longvu-cancel-watch").start()
    return stop


@serve.deployment(num_replicas=1, max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0}, **_SHUTDOWN)
@serve.ingress()
class Ingress:
    """The HTTP front: :func:`longvu.serve.app.create_app` with a :class:`RayBackend`."""

    def __init__(self, replicas_handle, settings: ServerSettings, replicas: int) -> None:
        self._asgi = create_app(None, settings, backend=RayBackend(replicas_handle, replicas))

    def __serve_build_asgi_app__(self):
        return self._asgi


def build_app(model: str, load: dict, settings: ServerSettings, *, replicas: int, gpus: float = 0.0,
              cpus: float = 1.0, cache_dir: str | None = None):  # fmt: skip
    """The Serve application: N model replicas behind the ingress (``ray_actor_options`` per replica)."""
    threads = max(1, int(cpus)) if not gpus else None
    replica = ModelReplica.options(num_replicas=replicas, ray_actor_options={"num_cpus": cpus, "num_gpus": gpus})
    return Ingress.bind(replica.bind(model, load, cache_dir, threads), settings, replicas)


def start(model: str, load: dict, settings: ServerSettings, *, host: str, port: int, replicas: int,
          address: str | None = None, gpus: float | None = None, cpus: float = 1.0, cache_dir: str | None = None,
          ray_init: dict | None = None) -> str:  # fmt: skip
    """Connect to (``address``) or start a local Ray cluster, deploy, and return the HTTP base URL."""
    # lazy: ray comes with the eval/serve-ray extras
    import ray

    if not ray.is_initialized():
        kw = dict(ray_init or {})
        if address not in (None, "local"):
            kw["address"] = address
        ray.init(log_to_driver=False, include_dashboard=False, **kw)
    if gpus is None:
        want_gpu = load.get("device") not in ("cpu", "mps")
        gpus = 1.0 if want_gpu and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    serve.start(http_options={"host": host, "port": port})
    app = build_app(model, load, settings, replicas=replicas, gpus=gpus, cpus=cpus, cache_dir=cache_dir)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def run(model: str, load: dict, settings: ServerSettings, **kw) -> None:
    """``longvu serve --replicas N``: deploy, then serve until interrupted (Ctrl-C or SIGTERM).

    On the way out the application is deleted and a local Ray cluster this process started
    is stopped (SIGTERM is turned into KeyboardInterrupt so that this cleanup runs).
    """

    # lazy: ray comes with the eval/serve-ray extras
    import ray

    def _interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        url = start(model, load, settings, **kw)
        print(f"longvu: serving {settings.model_name} on {url} with {kw['replicas']} Ray Serve replicas", flush=True)
        while True:
            time.sleep(3600)
    finally:
        if ray.is_initialized():
            if kw.get("address") in (None, "local"):
                serve.shutdown()  # our own local cluster
            else:
                serve.delete(APP_NAME)  # a shared cluster: remove only our application
            ray.shutdown()
