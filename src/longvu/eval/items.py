"""One question of a benchmark, as every loader yields it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    """One question.  ``answer`` is a letter, or ``None`` where the benchmark hides it."""

    qid: str
    benchmark: str
    video: str
    prompt: str
    letters: list[str]
    answer: str | None
    category: str
    extra: dict = field(default_factory=dict)  # duration, bound, frames folder, ...
