"""The streaming encoder on a live source: features of every completed window, at any time.

:func:`~longvu.model.encode.encode_video` runs stage 1 window by window as frames arrive and
SigLIP + the connector once, after the last frame, on the frames stage 1's cap picks.  A
live stream has no last frame, and a question may come at any time, so here the same
parts run per window instead:

* decoding (:func:`~longvu.model.live.live_frames`) and preprocessing on their own threads,
  frames queued for the encoder in a bounded *backlog*;
* :class:`~longvu.model.encode._Stage1` (DINOv2, the window's similarities, the frames that
  can still be kept spilled to disk), one window at a time;
* :func:`~longvu.model.encode._siglip_pass` at once on that window's spilled frames; their
  connector outputs go to a per-window file (:class:`_FeatureLog`) and the spill is emptied.

:meth:`LiveEncoder.snapshot` is then a :class:`VisualFeatures` of the completed windows
(all of them, or those within the horizon), built exactly as the offline encoder builds
its result: the stored frames are stage 1's cap over those windows' survivors (every frame
while there are fewer than ``keep_all_below``), so each question's compose/generate path is
the usual one.  Frames of a window that is not complete yet are not in it: coverage trails
the decoded stream by up to one window (16 sampled frames: 16 s at 1 fps).

**Memory** is flat: a window's frames leave memory once it is encoded; what stays is a
few numbers per sampled frame (indices, times, similarities: ~100 bytes).  **Disk**: the
connector outputs of the frames kept by stage 1 (every frame with a horizon, since any of
them may start a short snapshot); with a horizon, windows older than it are deleted.

**Falling behind** (encoding slower than the stream): the backlog holds at most
``FollowOptions.max_backlog`` sampled frames; when a new frame finds it full, every other queued frame
is dropped (the newest kept), so the encoder catches up with the stream's present at a
sparser sampling, never losing the newest data; ``status()`` reports ``behind`` and the
frames dropped.  ``max_backlog=None`` never drops: decoding waits for the encoder instead
(the stream's bytes wait in the file or pipe).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Cancelled, VideoError
from .compress.temporal import select_frames
from .devices import decode_threads, preprocess_workers
from .encode import VisualFeatures, _Frame, _siglip_input, _siglip_pass, _Spill, _Stage1
from .intake import MediaLimits
from .live import LiveSource, live_frames
from .preprocess import preprocess_frame
from .video import Sampling, StreamInfo


@dataclass
class _Window:
    """One encoded stage-1 window: its frames' positions, times, indices and similarities."""

    number: int  # its place in the stream (0 for the first window)
    start: int  # position of its first frame in the stream
    times: list[float]
    indices: list[int]
    similarity: torch.Tensor  # [size]
    logged: list[int]  # positions whose connector outputs are in the log

    @property
    def size(self) -> int:
        return len(self.times)


class _FeatureLog:
    """Connector outputs of the logged frames, one file per window (deleted when the window leaves the horizon)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.where: dict[int, tuple[str, int]] = {}  # position -> (file, row)
        self.shape: tuple[int, ...] | None = None
        self.dtype: torch.dtype | None = None
        self.bytes = 0

    def add(self, window: int, positions: list[int], sampled: torch.Tensor) -> None:
        host = sampled.detach().cpu().contiguous()
        self.shape, self.dtype = tuple(host.shape[1:]), host.dtype
        path = os.path.join(self.folder, f"w{window}.bin")
        raw = host.view(torch.uint8).numpy().tobytes()
        with open(path, "wb") as f:
            f.write(raw)
        self.bytes += len(raw)
        self.where.update({p: (path, i) for i, p in enumerate(positions)})

    def drop(self, window: int, positions: list[int]) -> None:
        path = os.path.join(self.folder, f"w{window}.bin")
        if os.path.exists(path):
            self.bytes -= os.path.getsize(path)
            os.remove(path)
        for p in positions:
            self.where.pop(p, None)

    def read(self, positions: list[int]) -> torch.Tensor:
        """``[len(positions), Q, vh]`` in the model's dtype, on the host."""
        row = int(np.prod(self.shape)) * torch.empty((), dtype=self.dtype).element_size()
        out = torch.empty((len(positions), *self.shape), dtype=self.dtype)
        view = out.view(len(positions), -1).view(torch.uint8).numpy()
        for k, p in enumerate(positions):
            path, i = self.where[p]
            with open(path, "rb") as f:
                f.seek(i * row)
                f.readinto(memoryview(view[k]))
        return out


class LiveEncoder:
    """Follows a :class:`LiveSource` on two threads and encodes it window by window (module docstring)."""

    def __init__(self, model, source: LiveSource, sampling: Sampling | None = None, *, keep_all_below: int,
                 horizon_s: float | None = None, limits: MediaLimits | None = None) -> None:  # fmt: skip
        if horizon_s is not None and not horizon_s > 0:
            raise VideoError(f"horizon_s must be positive, got {horizon_s}")
        self.model, self.source, self.sampling = model, source, sampling or Sampling()
        self.keep_all_below, self.horizon_s, self.limits = keep_all_below, horizon_s, limits
        self.max_backlog = source.options.max_backlog
        self.info = StreamInfo()
        self.timings = dict.fromkeys(("decode_wait", "dino", "siglip", "connector"), 0.0)
        self._lock = threading.Condition()
        self._backlog: deque[_Frame] = deque()
        self._windows: deque[_Window] = deque()
        self._decoded_s = self._seen_s = 0.0
        self._decoding_done = self._done = False
        self._dropped = self._frames = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._tmp = tempfile.mkdtemp(prefix="longvu-live-")
        self._log = _FeatureLog(self._tmp)
        self._pool = ThreadPoolExecutor(max_workers=preprocess_workers(model.device), thread_name_prefix="longvu-prep")
        self._threads = [threading.Thread(target=self._guard, args=(f,), daemon=True, name=f"longvu-live-{n}")
                         for n, f in (("decode", self._decode), ("encode", self._encode))]  # fmt: skip
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------ threads
    def _guard(self, work) -> None:
        try:
            work()
        except Cancelled:
            pass
        except BaseException as e:  # reported by status(); what was encoded stays answerable
            with self._lock:
                self.error = self.error or e
        finally:
            with self._lock:
                if work == self._decode:
                    self._decoding_done = True
                else:
                    self._done = True
                self._lock.notify_all()

    def _decode(self) -> None:
        model = self.model
        dino_spec, siglip_spec = model.dinov2.spec, model.siglip.spec
        frames = live_frames(self.source, self.sampling, self.info, self.limits, decode_threads(model.device))
        try:
            for index, t, rgb in frames:
                if self._stop.is_set():
                    return
                dino = self._pool.submit(preprocess_frame, rgb, dino_spec)
                sig = self._pool.submit(_siglip_input, rgb, siglip_spec)
                self._queue(_Frame(int(index), float(t), rgb.shape[:2], dino, sig))
        finally:
            frames.close()

    def _queue(self, frame: _Frame) -> None:
        with self._lock:
            if self.max_backlog is None:
                while len(self._backlog) >= 2 * self.model.cfg.dino_window and not self._stop.is_set():
                    self._lock.wait(0.1)
            elif len(self._backlog) >= self.max_backlog:  # behind: keep every other queued frame, the newest last
                queued = list(self._backlog)
                kept = queued[(len(queued) - 1) % 2 :: 2]  # the last one among them
                for dropped in queued[len(queued) % 2 :: 2]:  # their preprocessing is not needed any more
                    dropped.dino.cancel()
                    dropped.siglip.cancel()
                self._dropped += len(queued) - len(kept)
                self._backlog = deque(kept)
            self._backlog.append(frame)
            self._decoded_s = frame.time + self._frame_span()
            self._lock.notify_all()

    def _next(self) -> _Frame | None:
        with self._lock:
            while not self._backlog and not self._decoding_done and not self._stop.is_set():
                self._lock.wait(0.1)
            if self._stop.is_set():
                raise Cancelled()
            frame = self._backlog.popleft() if self._backlog else None
            self._lock.notify_all()
            return frame

    def _encode(self) -> None:
        keep_all = math.inf if self.horizon_s is not None else self.keep_all_below
        with _Spill(self._tmp) as spill:
            stage1 = _Stage1(self.model, spill, keep_all, None, self.timings)
            stage1.batch = self.model.cfg.dino_window  # one window at a time: answerable as soon as it is done
            while (frame := self._next()) is not None:
                stage1.add(frame)
                if not stage1.pending:  # the frame completed a window
                    self._publish(stage1, spill)
            if stage1.pending:  # the last, shorter window
                stage1.flush()
                self._publish(stage1, spill)

    def _publish(self, stage1: _Stage1, spill: _Spill) -> None:
        """Log the window stage 1 just finished (SigLIP + connector on its spilled frames)."""
        number, size = len(stage1.sizes) - 1, stage1.sizes[-1]
        start = len(stage1.indices) - size
        logged = sorted(spill.index)
        if logged:
            sampled = _siglip_pass(self.model, spill, logged, stage1.hw, self._pool, self._stop, None, self.timings)
            self._log.add(number, logged, sampled)
            spill.clear()
        window = _Window(number, start, stage1.times[start:], stage1.indices[start:], stage1.sims[-1], logged)
        with self._lock:
            self.frame_hw = stage1.hw
            self._windows.append(window)
            self._frames += len(logged)
            self._seen_s = window.times[-1] + self._frame_span()
            self._forget_old()
            self._lock.notify_all()

    def _forget_old(self) -> None:
        """Delete the windows wholly older than the horizon (their features and log files)."""
        while self.horizon_s is not None and len(self._windows) > 1:
            if self._windows[0].times[-1] >= self._seen_s - self.horizon_s:
                return
            old = self._windows.popleft()
            self._log.drop(old.number, old.logged)
            self._frames -= len(old.logged)

    def _frame_span(self) -> float:
        """Seconds one sampled frame stands for."""
        fps = self.info.avg_fps or 1.0
        return self.info.step / fps

    # ------------------------------------------------------------ public
    def status(self) -> dict:
        """Where following stands (see :class:`longvu.pipeline.live.LiveSession.status`)."""
        with self._lock:
            first = self._windows[0].times[0] if self._windows else 0.0
            lag = max(0.0, self._decoded_s - self._seen_s)
            return {
                "seen_s": round(self._seen_s, 3),
                "covered_s": [round(first, 3), round(self._seen_s, 3)] if self._windows else None,
                "decoded_s": round(self._decoded_s, 3),
                "lag_s": round(lag, 3),
                "behind": len(self._backlog) > self.model.cfg.dino_window,
                "backlog_frames": len(self._backlog),
                "dropped_frames": self._dropped,
                "frames_kept": self._frames,
                "windows": len(self._windows),
                "bytes_read": self.source.bytes_read,
                "disk_bytes": self._log.bytes,
                "ended": self._done,
                "error": None if self.error is None else str(self.error),
            }

    def wait(self, seen_s: float | None = None, timeout: float | None = None) -> bool:
        """Wait until ``seen_s`` seconds are encoded (None: until the stream is done); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._done and (seen_s is None or self._seen_s < seen_s):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(0.1 if left is None else min(left, 0.1))
            return True

    def snapshot(self) -> VisualFeatures:
        """The completed windows (those within the horizon) as :class:`VisualFeatures`."""
        horizon_s = self.horizon_s
        with self._lock:
            windows = list(self._windows)
            seen = self._seen_s
            error = self.error
        if horizon_s is not None:
            windows = [w for w in windows if w.times[-1] >= seen - horizon_s] or windows[-1:]
        if not windows:
            if error is not None:
                raise error if isinstance(error, VideoError) else VideoError(str(error), self.source.name)
            raise VideoError("nothing of the stream is encoded yet (a window of frames must arrive first)",
                             self.source.name)  # fmt: skip
        return self._features(windows, seen)

    def _features(self, windows: list[_Window], seen: float) -> VisualFeatures:
        cfg, base = self.model.cfg, windows[0].start
        sims = torch.cat([w.similarity for w in windows])
        sizes = [w.size for w in windows]
        n = len(sims)
        if n < self.keep_all_below:
            stored, all_frames = list(range(n)), True
        else:
            stored = select_frames(sims, sizes, max_frames=0, threshold=cfg.dino_threshold, window=cfg.dino_window,
                                   cap=cfg.max_frames_cap, fix_middle_frame=cfg.fix_dino_middle_frame).kept  # fmt: skip
            all_frames = False
        with self._lock:  # not while a window older than the horizon is being deleted
            sampled = self._log.read([base + p for p in stored])
        indices = [i for w in windows for i in w.indices]
        times = [t for w in windows for t in w.times]
        return VisualFeatures(
            path=self.source.name, source_indices=indices, timestamps=times, avg_fps=self.info.avg_fps,
            step=self.info.step, num_frames_total=indices[-1] + 1, frame_hw=self.frame_hw, similarity=sims,
            window_sizes=sizes, stored=stored, sampled=sampled, all_frames=all_frames, timings=dict(self.timings),
            sampling=self.sampling, covered=(times[0], seen),
        )  # fmt: skip

    def end(self) -> None:
        """The stream is over: what arrived is encoded to its last frame, then following stops."""
        self.source.end()

    def close(self) -> None:
        """Stop both threads and delete everything on disk."""
        self._stop.set()
        self.source.close()
        with self._lock:
            self._lock.notify_all()
        for t in self._threads:
            t.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
