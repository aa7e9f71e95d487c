"""Pass 1's data in the longvu-synth-tiny v2 recipe: videos in which every frame shows the word.

    python recipes/synth_tiny_v2/word_videos.py OUT_DIR [--n 1500] [--seed 31] [--frames 12]

Each video shows one of the needle words (:data:`longvu.train.synth.WORDS`) in every frame, each frame
in its own style from ``longvu synth``'s ``default`` set (the training styles; never ``heldout``).  Its
lines ask the word as options and free-form.  A decoder that has not learnt where to look still sees
the word in every visual token of these videos, so the word's answer has a gradient from the first
step (trained on the mix alone, where the word is one or two frames in 12-24, the word stayed at
chance); pass 2, the mix, then teaches it to find the word frame among the object's.  Writes
``OUT_DIR/data.jsonl`` and ``OUT_DIR/videos/``; deterministic from the seed.  ``--render heldout``
makes a check set in the held-out styles (the recipe never trains on one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from longvu.eval.vniah import QUESTION
from longvu.files import atomic_write_text
from longvu.train.render import WordStyle, draw_style, render_word
from longvu.train.synth import WORD_QUESTION, WORDS, mc_prompt, write_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_base import training_fonts  # noqa: E402  (recipes are scripts: stage 1's fonts, shared)


def lines(vid: str, video: str, word: str) -> list[dict]:
    """The video's two lines: the word asked with options (answered with the letter; the fields
    ``longvu eval synthetic`` scores) and free-form."""
    letter = chr(65 + WORDS.index(word))

    def line(suffix: str, question: str, reply: str, **extra) -> dict:
        turns = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": reply}]
        return {"id": f"{vid}-{suffix}", "video": video, "conversations": turns, **extra}

    mc = mc_prompt(WORD_QUESTION, list(WORDS))
    return [line("mc", mc, letter, family="word", options=list(WORDS), answer=letter, answer_text=word),
            line("free", QUESTION, word)]  # fmt: skip


def frame_style(rng: np.random.Generator, render: str, fonts: list[str] | None) -> WordStyle:
    """A style from ``render``'s set; with ``fonts``, its font replaced by one of them."""
    style = draw_style(rng, render)
    return dataclasses.replace(style, font=fonts[int(rng.integers(len(fonts)))]) if fonts else style


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--frames", type=int, default=12, help="frames (seconds at 1 fps) per video")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument(
        "--render", choices=("default", "heldout"), default="default", help="style set (heldout: checks only)"
    )
    ap.add_argument("--fonts", action="store_true", help="each frame in one of stage 1's 13 upright fonts")
    a = ap.parse_args()
    fonts = training_fonts() if a.fonts else None
    (a.out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    rows = []
    for k in range(a.n):
        word = WORDS[int(rng.integers(len(WORDS)))]
        frames = [render_word(word, a.size, a.size, frame_style(rng, a.render, fonts))[0] for _ in range(a.frames)]
        video = f"videos/w{a.seed}_{k:06d}.mp4"
        if not (a.out / video).exists():
            write_video(a.out / video, frames)
        rows += lines(f"w{a.seed}_{k:06d}", video, word)
    atomic_write_text(a.out / "data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    print(f"{a.n} videos, {len(rows)} lines -> {a.out}")


if __name__ == "__main__":
    main()
