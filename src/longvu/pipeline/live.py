"""Questions about a video while it is still being recorded or streamed: :class:`LiveSession`.

``lv.watch(source)`` follows a growing file or a readable stream in the background with the
streaming encoder (:mod:`longvu.model.live_encode`); every question snapshots what is encoded
so far (or the last ``horizon_s`` seconds) into :class:`VisualFeatures` and runs the usual
question-dependent path (budgets, selection, STC, generation).  The answer's trace says
which span of the stream it saw: ``trace.data["video"]["covered_s"]`` is ``[start, end]``
in stream seconds.

>>> with lv.watch("lecture.ts") as live:  # doctest: +SKIP
...     live.wait(60)                      # the first minute is encoded
...     print(live.ask("What is on the board?").text, live.status()["lag_s"])
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import VideoError
from ..model.encode import VisualFeatures
from ..model.generation import GenerationOptions
from ..model.intake import MediaLimits
from ..model.live import FollowOptions, LiveSource
from ..model.live_encode import LiveEncoder
from ..model.video import Sampling

if TYPE_CHECKING:  # typing only: LongVU.watch makes the session (api imports this module, never the reverse)
    from .api import Answer, AnswerStream, ChatSession, LongVU

Source = str | os.PathLike | LiveSource  # or a readable binary stream with a file descriptor (sys.stdin.buffer)


class LiveSession:
    """A video being followed; a context manager (``close()`` on exit).

    Args:
        source: a path to a file still being written (MPEG-TS, Matroska/WebM, fragmented MP4),
            a readable binary stream with a file descriptor (standard input, a pipe), or a
            :class:`~longvu.model.live.LiveSource`.
        sampling: frame rate (``fps``) and ``start``; ``max_frames`` and ``end`` need the whole
            video and are refused.
        horizon_s: answer over the last this many seconds only; older windows are deleted
            from disk (disk stays bounded).  None: everything seen.
        follow: how the source is followed (:class:`~longvu.model.live.FollowOptions`:
            when a silent file counts as finished, the backlog policy).
        limits: :class:`MediaLimits` enforced as frames arrive; past one, following stops
            (``status()["error"]``) and what was encoded stays answerable.
    """

    def __init__(self, lv: LongVU, source: Source, *, sampling: Sampling | None = None,
                 horizon_s: float | None = None, follow: FollowOptions | None = None,
                 limits: MediaLimits | None = None) -> None:  # fmt: skip
        sampling = sampling or Sampling()
        if sampling.max_frames is not None or sampling.end is not None:
            raise VideoError("max_frames and end need the whole video; a live stream has no end yet")
        self.lv = lv
        self.source = _open(source, follow)
        try:
            self.encoder = LiveEncoder(lv.model, self.source, sampling, keep_all_below=lv.model.cfg.frame_budget(),
                                       horizon_s=horizon_s, limits=limits)  # fmt: skip
        except BaseException:
            self.source.close()
            raise

    # ------------------------------------------------------------ state
    def status(self) -> dict:
        """Where following stands.

        Keys: ``seen_s`` (seconds of the stream encoded: the end of the last complete window),
        ``lag_s`` (how far that trails the newest decoded frame), ``covered_s`` (the span a
        question now sees, None before the first window), ``frames_kept`` (frames whose
        features are kept), ``behind`` (the encoder has a backlog), ``dropped_frames`` (frames
        skipped to catch up), ``decoded_s``, ``backlog_frames``, ``windows``, ``bytes_read``,
        ``disk_bytes``, ``ended`` (the stream is over and fully encoded, or following
        stopped), ``error`` (why following stopped early, else None).
        """
        return self.encoder.status()

    def wait(self, seen_s: float | None = None, timeout: float | None = None) -> bool:
        """Block until ``seen_s`` seconds are encoded (None: until the stream has ended); False on timeout."""
        return self.encoder.wait(seen_s, timeout)

    def features(self) -> VisualFeatures:
        """What is encoded now, as :class:`VisualFeatures` (``covered`` says the span); a
        :class:`VideoError` before the first window is complete."""
        return self.encoder.snapshot()

    # ------------------------------------------------------------ questions
    def ask(self, question: str, **kw) -> Answer:
        """Answer over what is seen now (keywords as :meth:`LongVU.ask`, but no ``sampling``)."""
        return self.lv.ask(self.features(), question, **kw)

    def ask_stream(self, question: str, **kw) -> AnswerStream:
        """Like :meth:`ask`, text pieces as they are generated."""
        return self.lv.ask_stream(self.features(), question, **kw)

    def chat(self, *, system: str | None = None) -> LiveChat:
        """A conversation whose every turn answers over what is seen at that moment."""
        return LiveChat(self, system)

    # ------------------------------------------------------------ lifetime
    def end(self) -> None:
        """The stream is over: the rest that arrived is encoded, then ``status()["ended"]``."""
        self.encoder.end()

    def close(self) -> None:
        """Stop following and delete everything on disk."""
        self.encoder.close()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LiveChat:
    """A chat over a live stream: a :class:`~longvu.pipeline.api.ChatSession` whose features are taken
    afresh at each turn (the history stays)."""

    def __init__(self, live: LiveSession, system: str | None = None) -> None:
        self.live, self.system = live, system
        self.session: ChatSession | None = None  # made at the first turn: the stream may have no window yet

    @property
    def history(self) -> list[tuple[str, str]]:
        return [] if self.session is None else self.session.history

    def ask_stream(self, question: str, generation: GenerationOptions | None = None, *, cancel=None) -> AnswerStream:
        feats = self.live.features()
        if self.session is None:
            self.session = self.live.lv.chat(feats, system=self.system)
        self.session.features = feats
        return self.session.ask_stream(question, generation, cancel=cancel)

    def ask(self, question: str, generation: GenerationOptions | None = None, *, cancel=None) -> Answer:
        stream = self.ask_stream(question, generation, cancel=cancel)
        for _ in stream:
            pass
        return stream.answer

    def reset(self) -> None:
        if self.session is not None:
            self.session.reset()


def _open(source: Source, follow: FollowOptions | None) -> LiveSource:
    if isinstance(source, LiveSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        return LiveSource.open_file(source, follow)
    if hasattr(source, "fileno"):
        return LiveSource.open_stream(source, str(getattr(source, "name", "") or "<stream>"), follow)
    raise VideoError(f"cannot follow a {type(source).__name__}: give a path or a binary stream with a file descriptor")
