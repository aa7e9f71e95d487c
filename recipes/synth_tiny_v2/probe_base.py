"""Do a base checkpoint's towers and connector carry a needle word drawn in styles they never saw?

    python recipes/synth_tiny_v2/probe_base.py BASE [--train 1200] [--test 400] [--heldout 600]
        [--readout tokens|projector|pooled]

Stage 1 of the recipe (``build_base.py``) can be judged before any decoder is trained: this draws
single word frames (one of the 8 needle words each, 128 px, as ``longvu synth`` draws them), takes the
SVA connector's 9 tokens of each (the tokens the decoder gets for a frame, before ``mm_projector``), and
fits a linear probe (:func:`probe_tokens.linear_probe`) on ``--train`` frames in the ``default`` styles.
It prints the probe's accuracy on ``--test`` other default-style frames and on ``--heldout`` frames in
the ``heldout`` styles, also per kind of held-out style (Pillow's bitmap font; the slanted font).  Only
the probe sees the needle words; it is measurement, and nothing here is saved.

``--readout`` says what the probe reads of a frame: the 9 tokens (``tokens``), the same tokens through
the checkpoint's ``mm_projector`` (``projector``: what the decoder's first layer is given; useful on a
trained model), or their mean (``pooled``: where each letter sits is lost).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
from probe_tokens import linear_probe  # the script next to this one (a recipe folder is no package)

from longvu import LongVU
from longvu.train import synth
from longvu.train.render import draw_style, render_word

HERE = Path(__file__).resolve().parent


def load_recipe_stage1():
    """``build_base.py`` under its own name (it imports the v1 recipe's ``build_base`` as ``v1``)."""
    spec = importlib.util.spec_from_file_location("synth_tiny_v2_build_base", HERE / "build_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def word_frames(seed: int, n: int, render: str) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """``n`` frames, each a random needle word in a random ``render`` style; the words' indices; each
    style's kind ("bitmap", "slanted" or "upright")."""
    rng = np.random.default_rng(seed)
    frames, words, kinds = [], [], []
    for _ in range(n):
        word, style = int(rng.integers(len(synth.WORDS))), draw_style(rng, render)
        frames.append(render_word(synth.WORDS[word], 128, 128, style)[0])
        words.append(word)
        kinds.append("bitmap" if style.font == "bitmap" else "slanted" if style.shear else "upright")
    return np.stack(frames), torch.tensor(words), kinds


@torch.no_grad()
def connector_tokens(stage1, lv: LongVU, frames: np.ndarray) -> torch.Tensor:
    """``[N, 9 * C]``: the connector's high-res tokens of each frame, as the encoder samples them."""
    sampling = ((stage1.v1.IMAGE, stage1.v1.IMAGE), lv.model.cfg.fix_unpad_orientation)
    return stage1.sampled_tokens(lv.model.connector, stage1.tower_outputs(lv, frames), sampling).flatten(1)


@torch.no_grad()
def readout(lv: LongVU, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """``[N, 9 * C]`` connector tokens as ``--readout`` reads them (``[N, 9 * H]`` or ``[N, C]``)."""
    per_token = tokens.view(tokens.shape[0], 9, -1)
    if kind == "projector":
        return lv.model.connector.mm_projector(per_token).flatten(1)
    return per_token.mean(1) if kind == "pooled" else tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="a base checkpoint folder (stage 1's output, or any checkpoint of the recipe)")
    ap.add_argument("--train", type=int, default=1200, help="default-style frames the probe fits on")
    ap.add_argument("--test", type=int, default=400, help="other default-style frames it is scored on")
    ap.add_argument("--heldout", type=int, default=600, help="heldout-style frames it is scored on")
    ap.add_argument("--readout", choices=("tokens", "projector", "pooled"), default="tokens",
                    help="the 9 tokens, the same through mm_projector, or their mean (default tokens)")  # fmt: skip
    a = ap.parse_args()
    stage1 = load_recipe_stage1()
    lv = LongVU.from_pretrained(a.base, device="cpu", dtype="float32", cache=False)
    sets = [word_frames(seed, n, render) for seed, n, render in
            ((1, a.train, "default"), (2, a.test, "default"), (3, a.heldout, "heldout"))]  # fmt: skip
    x = torch.cat([readout(lv, connector_tokens(stage1, lv, frames), a.readout) for frames, _, _ in sets])
    y = torch.cat([words for _, words, _ in sets])
    right = (linear_probe(x, y, a.train) == y[a.train :]).numpy()
    kinds = ["default"] * a.test + ["heldout " + k for k in sets[2][2]]
    for name in ("default", "heldout"):
        mask = np.array([k.startswith(name) for k in kinds])
        print(f"{name} styles: {int(right[mask].sum())}/{int(mask.sum())} = {right[mask].mean():.1%}")
    for kind in ("bitmap", "slanted"):
        mask = np.array([k == "heldout " + kind for k in kinds])
        print(f"  heldout, {kind}: {int(right[mask].sum())}/{int(mask.sum())} = {right[mask].mean():.1%}")


if __name__ == "__main__":
    main()
