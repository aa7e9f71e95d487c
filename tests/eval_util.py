"""Stand-in evaluators for the eval runner's worker supervision (importable by spawned workers and Ray actors).

They load no model: each question is answered "A" at once, so the tests time the
supervision, not a model.  They fail on purpose the way a real worker does: SIGKILL (what
the OOM killer sends) on a chosen video or at load time, or an exception at load time.
"""

from __future__ import annotations

import os
import signal

from longvu.errors import LongVUError
from longvu.eval.benchmarks import Item
from longvu.eval.runner import result_line


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FakeEvaluator:
    def __init__(self, *, kill_once: str | None = None, kill_video: str | None = None, die_on_load: bool = False,
                 load_error: str | None = None, **model_kw) -> None:  # fmt: skip
        if die_on_load:
            _die()
        if load_error:
            raise LongVUError(load_error)
        self.kill_once = kill_once  # a marker file: the first worker to create it dies
        self.kill_video = kill_video  # a video name: its worker always dies
        self.pid = os.getpid()

    def run_group(self, group: list[dict], preset) -> list[dict]:
        if self.kill_video and group[0]["video"].endswith(self.kill_video):
            _die()
        if self.kill_once:
            try:
                os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                _die()
        return [result_line(Item(**g), "A", None) for g in group]
