"""``longvu eval synthetic``: score a model on a ``longvu synth`` dataset.

``--data DIR`` is a folder as ``longvu synth`` writes it (``DIR/data.jsonl`` and
``DIR/videos/``).  Every line is checked as training data is (:mod:`longvu.train.data`), and
must also carry the multiple-choice fields: ``options``, ``answer`` (a letter) and
``family``.  The question is the first human turn without its ``<image>`` placeholder,
exactly the prompt the model was trained on; the answer is parsed to a letter and
compared with ``answer``.  Categories are the question families; each result line's
``duration`` is the length bucket (short < 1 min, medium < 5 min, long).

Frames: every frame of the videos (``longvu synth`` writes 1 fps), no config override.
"""

from __future__ import annotations

from pathlib import Path

from ..train.data import DataError, Example, load_examples, resolve_data
from .answers import letters_for
from .items import Item


def length_bucket(seconds: int) -> str:
    """``short`` (< 1 min), ``medium`` (< 5 min) or ``long``."""
    return "short" if seconds < 60 else "medium" if seconds < 300 else "long"


def _check_choice(ex: Example) -> tuple[list[str], str, str]:
    """``(options, answer letter, family)`` of a synth line, or ValueError."""

    options, answer, family = ex.extra.get("options"), ex.extra.get("answer"), ex.extra.get("family")
    if not isinstance(options, list) or not 2 <= len(options) <= 26 or not all(isinstance(o, str) for o in options):
        raise ValueError("'options' must be a list of 2 to 26 strings")
    if answer not in letters_for(len(options)):
        raise ValueError(
            f"'answer' must be one of the option letters {''.join(letters_for(len(options)))}, got {answer!r}"
        )
    if not isinstance(family, str) or not family:
        raise ValueError("'family' must be a non-empty string")
    if ex.video is None:
        raise ValueError("no 'video': a question line is about a video")
    if len(ex.turns) != 2:
        raise ValueError(f"a question line has one human and one gpt turn, found {len(ex.turns)} turns")
    return options, answer, family


def load_synthetic(data: Path) -> list:
    """The questions of a ``longvu synth`` folder as evaluation :class:`~longvu.eval.benchmarks.Item` s."""

    examples = load_examples(data)
    path = resolve_data(data)
    items, errors = [], []
    for ex in examples:
        try:
            options, answer, family = _check_choice(ex)
        except ValueError as e:
            errors.append(f"{path}:{ex.line}: {e}")
            continue
        length = ex.extra.get("length")
        extra = {"duration": length_bucket(length)} if isinstance(length, int) else {}
        items.append(
            Item(ex.id, "synthetic", str(ex.video), ex.prompt, letters_for(len(options)), answer, family, extra)
        )
    if errors:
        raise DataError(errors[:50], len(errors))
    return items
