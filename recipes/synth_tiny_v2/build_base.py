"""Stage 1 of the longvu-synth-tiny v2 recipe: the untrained base checkpoint, in the official layout.

    python recipes/synth_tiny_v2/build_base.py --out base [--seed 0]

It writes, deterministically from ``--seed``:

* a 1024-token byte-level BPE tokenizer fitted to ``longvu synth`` text (questions, options,
  captions) and the chat template's words: the Qwen2 tokenizer's 151k-row embedding table alone
  would be 150 MB at width 256;
* a random Qwen2 decoder (width 256, 4 layers, 4 heads, 2 KV heads) and a random SVA connector
  (3x3 high-res and 1x1 low-res query grids over 12x12 tower patches);
* two small vision towers in the SigLIP and DINOv2 layouts (width 96, 3 layers, 168 px, 14 px
  patches), *pretrained* here on per-patch labels of rendered frames: the colour and shape of the
  object under each patch of synth video frames (their word frames left out), and the letter under
  each patch of frames showing random letter strings (never one of the eight needle words) in the
  training styles (``--render default``; never a ``heldout`` style).  So the towers never saw a
  needle word, nor a label of one.  They stand in for the released towers, which were pretrained
  elsewhere on web images; LongVU keeps its towers frozen, and so does ``longvu train``.  About 4
  minutes each on 2 CPU cores.

Stage 2 (``longvu train``) then trains the projector and the decoder; see ``run.sh``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from longvu.train import synth
from longvu.train.render import draw_style, render_word

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "synth_tiny"))
import build_base as v1  # noqa: E402  (recipes are scripts: the v1 recipe's stage 1, shared)

HEADS = {"colour": 7, "shape": 7, "letter": 27}  # per-patch label classes (0: none): letters, not words


def labelled_frames(seed: int, videos: int, size: int = 128) -> tuple[np.ndarray, torch.Tensor]:
    """Frames of ``videos`` random synth videos (about 10 each, no word frame) and of ``videos // 2`` letter
    strings, and ``[N, 144, 3]`` labels: per patch, the colour (1-6) and the shape (1-6) of the object
    under it, and the letter (1-26), 0 for none."""
    colours = list(synth.COLOURS)
    frames, labels = [], []
    for i in range(videos):
        rng = np.random.default_rng([seed, i])
        cast = int(rng.integers(1, 5))
        plan = synth.plan_video(rng, int(rng.integers(12, 40)), size, cast, synth.LONE_SCALE if cast == 1 else 1.0)
        video = synth.render(plan, size)
        timeline = []  # the timeline second of each video frame, None on word frames
        for t in range(plan.seconds + 1):
            timeline += [None] * (plan.word_frames if t == plan.word_at else 0) + ([t] if t < plan.seconds else [])
        for k in rng.permutation([k for k, t in enumerate(timeline) if t is not None])[:10].tolist():
            lab = np.zeros((v1.GRID**2, 3), np.int64)
            member = v1.patch_labels(plan, timeline[k], size)
            lab[:, 0] = np.array([0] + [colours.index(c) + 1 for c in plan.colours])[member]
            lab[:, 1] = np.array([0] + [synth.SHAPES.index(s) + 1 for s in plan.shapes])[member]
            frames.append(video[k])
            labels.append(lab)
    for frame, letters in letter_frames(np.random.default_rng([seed, 1 << 30]), videos // 2, size):
        lab = np.zeros((v1.GRID**2, 3), np.int64)
        lab[:, 2] = letters
        frames.append(frame)
        labels.append(lab)
    return np.stack(frames), torch.from_numpy(np.stack(labels))


def letter_frames(rng: np.random.Generator, n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames of random 4-7 letter strings (never a needle word) in the training styles, and per patch
    the letter (1-26) whose box holds the patch's centre, 0 for none."""
    centres = (np.arange(v1.GRID) + 0.5) * size / v1.GRID
    out = []
    while len(out) < n:
        text = "".join(chr(65 + int(c)) for c in rng.integers(26, size=int(rng.integers(4, 8))))
        if text in synth.WORDS:
            continue
        frame, boxes = render_word(text, size, size, draw_style(rng, "default"))
        lab = np.zeros((v1.GRID, v1.GRID), np.int64)
        for ch, (x0, y0, x1, y1) in zip(text, boxes):
            lab[np.ix_((centres >= y0) & (centres < y1), (centres >= x0) & (centres < x1))] = ord(ch) - 64
        out.append((frame, lab.ravel()))
    return out


if __name__ == "__main__":
    v1.main(labelled_frames, HEADS, shuffle=True, doc=__doc__)
