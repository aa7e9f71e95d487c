"""The committed ``models/longvu-synth-tiny-v2`` names the colour and the shape of an object in videos it
has never seen, and its card says what it does not do (name the needle word).

It was trained by ``recipes/synth_tiny_v2/run.sh`` on ``longvu synth`` seed 21; these videos come from
another seed, through ``longvu eval synthetic``'s own loader, runner and answer parsing.
"""

from __future__ import annotations

import json
from pathlib import Path

from longvu.eval.runner import run_benchmark
from longvu.eval.synthetic import load_synthetic
from longvu.train import synth

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "longvu-synth-tiny-v2"


def test_committed_v2_model_names_colour_and_shape_of_held_out_videos(tmp_path: Path) -> None:
    settings = synth.SynthSettings(seed=4242, minutes=(0.2, 0.4), families=("colour", "shape"), cast=1)
    synth.generate(tmp_path / "data", settings, 24)
    items = load_synthetic(tmp_path / "data")
    summary = run_benchmark("synthetic", items, tmp_path / "run", model=str(MODEL), device="cpu", dtype="float32")
    assert summary["questions"] == summary["scored"] == 24
    per = summary["per_category"]  # 12 questions each; chance is 1 in 6 (2 of 12)
    assert per["colour"]["n"] == per["shape"]["n"] == 12, json.dumps(summary)
    # measured: colour 9 of 12 and shape 6 of 12 (the v1 model: 4 and 1); the bar leaves room for a CPU's rounding
    assert per["colour"]["accuracy"] >= 50.0 and per["shape"]["accuracy"] >= 33.0, json.dumps(summary)


def test_committed_v2_model_is_small_and_documented() -> None:
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    card = (MODEL / "README.md").read_text()
    assert "recipes/synth_tiny_v2/run.sh" in card and "## What it is not" in card and "Not a word reader" in card
    pretraining = json.loads((MODEL / "towers_pretraining.json").read_text())
    assert set(pretraining) == {"siglip", "dinov2", "connector"}
    cfg = json.loads((MODEL / "config.json").read_text())
    assert cfg["vocab_size"] == 1024 and cfg["image_token_len"] == 9
