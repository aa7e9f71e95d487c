"""Stage 2b of the longvu-synth-tiny v2 recipe: one conversation per video, every question a turn.

    python recipes/synth_tiny_v2/multi_turn.py DATA_DIR [--seed 0]

``longvu synth --questions-per-video 3`` writes one line per question; this rewrites ``data.jsonl`` so
that each video is one line whose turns ask all of its questions, in an order drawn from the seed and
the video's index.  For half the videos (drawn the same way) the word is asked V-NIAH's way instead
(:data:`longvu.eval.vniah.QUESTION`, answered with the word): asked both ways, one answer would give
the other away.  A training step then reads a video once and learns three answers from it: the
decoder's cost is in the video's tokens, not the turns.  Only the first turn holds the video, as in a
chat; ``longvu train`` composes the video for that first question.  The per-question lines are kept
in ``data_single.jsonl``.  A ``data.jsonl`` already rewritten is left as it is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from longvu.eval.vniah import QUESTION
from longvu.files import atomic_write_text

MARK = "<image>\n"


def conversation(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    """The questions of one video (``longvu synth`` lines) as one multi-turn line, and a second line
    asking the word the other way (options, or free-form)."""
    free = bool(rng.random() < 0.5)  # the word asked V-NIAH's way (free-form) instead of as options
    pairs = [
        (QUESTION, r["answer_text"])
        if free and r.get("family") == "word"
        else (r["conversations"][0]["value"].removeprefix(MARK), r["conversations"][1]["value"])
        for r in rows
    ]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    turns = []
    for k, (question, answer) in enumerate(pairs):
        turns += [{"from": "human", "value": (MARK if k == 0 else "") + question}, {"from": "gpt", "value": answer}]
    vid = rows[0]["video"].rsplit("/", 1)[-1].removesuffix(".mp4")
    lines = [{"id": vid, "video": rows[0]["video"], "conversations": turns}]
    word = next((r for r in rows if r.get("family") == "word"), None)
    if word is not None:
        again = word["conversations"] if free else [{"from": "human", "value": MARK + QUESTION},
                                                    {"from": "gpt", "value": word["answer_text"]}]  # fmt: skip
        lines.append({"id": f"{vid}-word", "video": rows[0]["video"], "conversations": again})
    return lines


def main(folder: Path, seed: int) -> None:
    path, single = folder / "data.jsonl", folder / "data_single.jsonl"
    text = path.read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all("family" in r for r in rows):  # already rewritten (``longvu synth`` lines all name a family)
        return
    videos: dict[str, list[dict]] = {}
    for r in rows:
        videos.setdefault(r["video"], []).append(r)
    lines = [
        line
        for i, group in enumerate(videos.values())
        for line in conversation(group, np.random.default_rng([seed, i]))
    ]
    atomic_write_text(single, text)
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in lines))
    print(f"{path}: {len(rows)} questions as {len(lines)} conversations")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.folder, a.seed)
