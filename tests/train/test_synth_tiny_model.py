"""The committed ``models/longvu-synth-tiny`` answers questions about videos it has never seen.

It was trained by ``recipes/synth_tiny/run.sh`` on ``longvu synth`` seed 21; these videos come
from other seeds, through ``longvu eval synthetic``'s own loader, runner and answer parsing, and
through ``LongVU.ask`` for V-NIAH's free-form question.  Its card says what it answers: which word a
frame showed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longvu.eval.runner import run_benchmark
from longvu.eval.synthetic import load_synthetic
from longvu.eval.vniah import QUESTION
from longvu.train import synth

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "longvu-synth-tiny"


@pytest.mark.parametrize(("seed", "cast", "minutes"), [(4242, 1, (0.2, 0.4)), (90001, 4, (0.2, 1.0))])
def test_committed_model_answers_held_out_word_questions(tmp_path: Path, seed: int, cast: int, minutes) -> None:
    # the needle as this model was trained on it (the plain one); other styles are beyond it (see its card)
    settings = synth.SynthSettings(
        seed=seed, minutes=minutes, families=("word",), cast=cast, render="plain", object_scale=1.0
    )
    synth.generate(tmp_path / "data", settings, 24)
    items = load_synthetic(tmp_path / "data")
    summary = run_benchmark("synthetic", items, tmp_path / "run", model=str(MODEL), device="cpu", dtype="float32")
    assert summary["questions"] == summary["scored"] == 24
    assert summary["accuracy"] >= 85.0, json.dumps(summary)  # percent; chance is 12.5 (8 words)


def test_committed_model_names_the_word_free_form(tmp_path: Path) -> None:
    from longvu import GenerationOptions, LongVU

    settings = synth.SynthSettings(
        seed=777, minutes=(0.2, 0.4), families=("word",), cast=1, render="plain", object_scale=1.0
    )
    rows = [json.loads(line) for line in synth.generate(tmp_path, settings, 8).read_text().splitlines()]
    lv = LongVU.from_pretrained(str(MODEL), device="cpu", dtype="float32", cache=False)
    gen = GenerationOptions(max_new_tokens=6, greedy=True)
    answers = [lv.ask(str(tmp_path / r["video"]), QUESTION, generation=gen).text.strip() for r in rows]
    right = sum(a == r["answer_text"] for a, r in zip(answers, rows))
    assert right >= 7, list(zip(answers, [r["answer_text"] for r in rows]))


def test_committed_model_is_small_and_documented() -> None:
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    card = (MODEL / "README.md").read_text()
    assert "recipes/synth_tiny/run.sh" in card and "## What it is not" in card
    cfg = json.loads((MODEL / "config.json").read_text())
    assert cfg["_name_or_path"] == "longvu-synth-tiny" and cfg["vocab_size"] == 1024
