"""Answering groups of questions: in this process, in local worker processes, or on Ray actors.

A worker holds one model and answers one group (the questions about one video) at a
time, so the driver always knows which group each worker holds.  A worker that dies (the
OOM killer, a segfault) is seen at once, replaced, and its group put back in the queue.
A group that was in its worker's hands at two deaths is given up as an error line (the
next run retries it), so one video that always kills its worker cannot stall the run;
workers that keep dying before they answer anything (a model too large to load) end it.

Local workers are our own processes rather than a ``concurrent.futures.ProcessPoolExecutor``:
when one of its workers dies, the executor fails every pending task and stops all the
others (each would reload a multi-GB model), and it cannot say which task was to blame.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any

import torch

from ..errors import LongVUError
from ..model.devices import ray_cpus_per_gpu, worker_threads

DEATHS_PER_GROUP = 2  # a group whose worker died this many times is given up (retried next run)
STARTUP_DEATHS = 3  # this many deaths in a row with no answer in between end the run

Task = tuple[int, list[dict]]  # (group number, the group's items as dicts)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Worker:
    """One model, built by ``evaluator(**kw)``; a failure to build is reported on first use."""

    def __init__(self, evaluator: Callable[..., Any], kw: dict) -> None:
        self.error: str | None = None
        try:
            self.ev = evaluator(**kw)
        except Exception as e:  # reported by run_group, where the driver sees it
            self.error = str(e) if isinstance(e, LongVUError) else one_line(e)

    def run_group(self, group: list[dict], preset) -> list[dict]:
        if self.error is not None:
            raise LongVUError(f"a worker could not load the model: {self.error}")
        return self.ev.run_group(group, preset)


class Queue:
    """Groups still to answer, and the bookkeeping of worker deaths."""

    def __init__(self, groups: list[list[dict]], give_up: Callable[[list[dict], str], list[dict]]) -> None:
        self.todo: deque[Task] = deque(enumerate(groups))
        self.deaths: Counter[int] = Counter()
        self.startup_deaths = 0
        self.give_up = give_up

    def take(self) -> Task | None:
        return self.todo.popleft() if self.todo else None

    def answered(self) -> None:
        self.startup_deaths = 0

    def died_at_start(self, why: str) -> None:
        self.startup_deaths += 1
        if self.startup_deaths >= STARTUP_DEATHS:
            raise LongVUError(f"{STARTUP_DEATHS} workers in a row died before answering anything ({why}); "
                              "is the model too large for this machine?")  # fmt: skip

    def died(self, task: Task, fresh: bool, why: str) -> list[dict] | None:
        """The worker holding ``task`` died; error lines for the group if it is given up."""
        if fresh:
            self.died_at_start(why)
        self.deaths[task[0]] += 1
        if self.deaths[task[0]] >= DEATHS_PER_GROUP:
            return self.give_up(task[1], f"worker died {self.deaths[task[0]]} times on this video ({why})")
        print(f"\rlongvu: a worker died ({why}); its video goes back in the queue", file=sys.stderr, flush=True)
        self.todo.appendleft(task)
        return None


# ------------------------------------------------------------------ local processes
def _worker_main(conn, evaluator, kw: dict, gpu: str | None, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops its workers itself
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before CUDA starts in this process

    torch.set_num_threads(threads)
    worker = Worker(evaluator, kw)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            conn.send(("done", worker.run_group(*msg)))
        except LongVUError as e:
            conn.send(("fatal", str(e)))
        except Exception as e:  # run_group records per-question errors itself; this is anything else
            conn.send(("failed", one_line(e)))


class _Process:
    def __init__(self, ctx, slot: int, evaluator, kw: dict, n: int) -> None:
        self.conn, child = ctx.Pipe()
        args = (child, evaluator, kw, gpu_for_slot(slot, kw.get("device", "auto")), worker_threads(n))
        self.proc = ctx.Process(target=_worker_main, args=args, daemon=True, name=f"longvu-eval-{slot}")
        self.proc.start()
        child.close()
        self.task: Task | None = None
        self.answered = 0

    def receive(self):
        """The worker's message, or None if it died."""
        try:
            if self.conn.poll():
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        return None

    def why_dead(self) -> str:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return f"killed by {name}" + (", out of memory?" if code == -signal.SIGKILL else "")
        return f"exit status {code}"

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass

    def stop(self, wait: bool) -> None:
        """Stop the worker: let it exit (``wait``), else kill it."""
        self.ask_to_stop()
        self.proc.join(timeout=10 if wait else 0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def gpu_for_slot(slot: int, device: str) -> str | None:
    """The GPU that worker ``slot`` sees alone (round-robin over the visible ones), or None to leave it."""
    if device not in ("auto", "cuda"):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
    else:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    return ids[slot % len(ids)] if len(ids) > 1 else None


def local_results(queue: Queue, preset, evaluator, kw: dict, n: int) -> Iterator[list[dict]]:
    """Answer the queue with ``n`` spawned processes, replacing any that die."""

    ctx = mp.get_context("spawn")
    procs = [_Process(ctx, slot, evaluator, kw, n) for slot in range(n)]
    finished = False
    try:
        while True:
            _dispatch(procs, queue, preset, lambda slot: _Process(ctx, slot, evaluator, kw, n))
            busy = [p for p in procs if p.task is not None]
            if not busy:
                finished = True
                return
            ready = set(wait([p.conn for p in busy] + [p.proc.sentinel for p in busy]))
            for slot, p in enumerate(procs):
                if p.task is None or not ({p.conn, p.proc.sentinel} & ready):
                    continue
                task, msg = p.task, p.receive()
                p.task = None
                if msg is None:  # died holding a task
                    lines = queue.died(task, p.answered == 0, p.why_dead())
                    p.stop(wait=False)
                    procs[slot] = _Process(ctx, slot, evaluator, kw, n)
                    if lines is not None:
                        yield lines
                else:
                    yield from _handle(msg, task, queue, p)
    finally:
        for p in procs:  # all at once: each takes a moment to exit
            p.ask_to_stop()
        for p in procs:
            p.stop(wait=finished)


def _dispatch(procs: list[_Process], queue: Queue, preset, respawn: Callable[[int], _Process]) -> None:
    """Give each idle worker a group; one that died while idle is replaced first (its death is no group's fault)."""
    for slot in range(len(procs)):
        while procs[slot].task is None and (task := queue.take()) is not None:
            try:
                procs[slot].conn.send((task[1], preset))
            except OSError:
                queue.todo.appendleft(task)
                if procs[slot].answered == 0:
                    queue.died_at_start(procs[slot].why_dead())
                procs[slot].stop(wait=False)
                procs[slot] = respawn(slot)
                continue
            procs[slot].task = task


def _handle(msg: tuple, task: Task, queue: Queue, holder) -> Iterator[list[dict]]:
    kind, payload = msg
    if kind == "fatal":
        raise LongVUError(payload)
    if kind == "failed":
        yield queue.give_up(task[1], payload)
        return
    holder.answered += 1
    queue.answered()
    yield payload


# ------------------------------------------------------------------ Ray actors
def ray_results(queue: Queue, preset, evaluator, kw: dict, n: int, address: str, gpus: float | None):
    """Answer the queue with ``n`` Ray actors, replacing any that die."""
    # lazy: ray comes with the eval/serve-ray extras
    import ray

    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(1, n), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    cpus = max(1, int(ray_cpus_per_gpu(ray.nodes()) * gpus)) if gpus else 1  # a GPU actor: its share of the cores
    actor_cls = ray.remote(num_gpus=gpus, num_cpus=cpus)(Worker)
    slots = [_Actor(actor_cls, evaluator, kw) for _ in range(n)]
    try:
        yield from _drive_actors(queue, preset, slots, actor_cls, evaluator, kw)
    finally:
        for s in slots:
            s.kill()
        if started:
            ray.shutdown()


class _Actor:
    def __init__(self, actor_cls, evaluator, kw: dict) -> None:
        self.actor = actor_cls.remote(evaluator, kw)
        self.ref = None
        self.task: Task | None = None
        self.answered = 0

    def kill(self) -> None:
        # lazy: ray comes with the eval/serve-ray extras
        import ray

        try:
            ray.kill(self.actor)
        except Exception:  # already gone
            pass


def _drive_actors(queue: Queue, preset, slots: list[_Actor], actor_cls, evaluator, kw: dict):
    # lazy: ray comes with the eval/serve-ray extras
    import ray

    while True:
        for s in slots:
            if s.task is None and (task := queue.take()) is not None:
                s.task, s.ref = task, s.actor.run_group.remote(task[1], preset)
        busy = {s.ref: i for i, s in enumerate(slots) if s.task is not None}
        if not busy:
            return
        [ref], _ = ray.wait(list(busy), num_returns=1)
        i = busy[ref]
        s, task = slots[i], slots[i].task
        s.task = s.ref = None
        try:
            lines = ray.get(ref)
        except ray.exceptions.RayActorError:  # the actor's process died (the OOM killer, a crash)
            given_up = queue.died(task, s.answered == 0, "its Ray actor died")
            s.kill()
            slots[i] = _Actor(actor_cls, evaluator, kw)
            if given_up is not None:
                yield given_up
            continue
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, LongVUError):
                raise LongVUError(str(cause)) from None
            yield queue.give_up(task[1], one_line(cause))
            continue
        s.answered += 1
        queue.answered()
        yield lines
