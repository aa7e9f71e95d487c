"""Word needles drawn in styles from the seed (``longvu synth --render``): varied, reproducible, and a
held-out style set that shares no font, size band or palette with the training styles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longvu.cli.main import main
from longvu.train import synth
from longvu.train.render import INK, PAPER, WIDTHS, draw_style, render_word
from longvu.train.synth import WORDS, SynthSettings, make_video, render


def styles(render_set: str, n: int = 300):
    return [draw_style(np.random.default_rng([11, i, 1]), render_set) for i in range(n)]


def test_default_renderings_vary_and_repeat_from_the_seed():
    settings = SynthSettings(seed=8, minutes=(0.2, 0.2), families=("word",))
    plans = [make_video(settings, i)[0] for i in range(16)]
    assert len({p.word_style for p in plans}) == 16  # every video its own style
    assert len({(p.word_style.ink, p.word_style.paper) for p in plans}) >= 5
    assert [make_video(settings, i)[0].word_style for i in range(16)] == [p.word_style for p in plans]
    one = render(plans[0], 128)[plans[0].word_at]
    assert (render(make_video(settings, 0)[0], 128)[plans[0].word_at] == one).all()  # the same pixels
    # the plan (and so every other frame and every answer) is the same whatever the render
    plain = SynthSettings(seed=8, minutes=(0.2, 0.2), families=("word",), render="plain")
    for i in range(4):
        a, b = make_video(settings, i)[0], make_video(plain, i)[0]
        assert (a.word, a.appearances, a.seconds) == (b.word, b.appearances, b.seconds) and b.word_style is None
        assert (render(b, 64)[b.word_at] == synth.word_frame(b.word, 64, 64, synth.WORD_SCALE)).all()


def test_heldout_styles_share_nothing_with_the_training_styles():
    train, held = styles("default"), styles("heldout")
    assert {s.font for s in train} == {"scalable"} and all(s.shear == 0 for s in train)
    assert {s.font for s in held} == {"scalable", "bitmap"}
    assert all(s.font == "bitmap" or s.shear >= 0.18 for s in held)  # slanted or blocky: never a training font
    assert not {s.ink for s in train} & {s.ink for s in held} and not {s.paper for s in train} & {s.paper for s in held}
    assert {s.ink for s in held} == set(INK["heldout"]) and {s.paper for s in held} == set(PAPER["heldout"])

    def band(s, name):
        return any(lo <= s.width <= hi for lo, hi in WIDTHS[name])

    assert all(band(s, "default") and not band(s, "heldout") for s in train if s.width not in (0.68, 0.80))
    assert all(band(s, "heldout") for s in held)


@pytest.mark.parametrize("render_set", ["default", "heldout"])
def test_the_ink_lies_in_the_letters_boxes(render_set):
    for i, style in enumerate(styles(render_set, 24)):
        word = WORDS[i % len(WORDS)]
        frame, boxes = render_word(word, 128, 128, style)
        ink = np.abs(frame.astype(int) - np.array(style.paper)).sum(-1) > 120
        h, w = ink.shape
        assert 0.015 * h * w < ink.sum() < 0.5 * h * w  # a readable word, not an empty or flooded frame
        xs = np.nonzero(ink.any(0))[0]
        assert xs[-1] - xs[0] + 1 >= 0.5 * style.width * w  # about as wide as the style says
        assert len(boxes) == len(word) and all(a[2] <= b[0] + 1 for a, b in zip(boxes, boxes[1:]))
        if style.shear == 0:  # upright: every inked pixel is in (or next to) a letter's box
            inside = np.zeros_like(ink)
            for x0, y0, x1, y1 in boxes:
                inside[max(0, int(y0) - 2) : int(y1) + 3, max(0, int(x0) - 3) : int(x1) + 4] = True
            assert not (ink & ~inside).any(), (word, style)


def test_a_truetype_font_draws_the_word_in_its_own_shapes():
    # the v2 recipe's tower pretraining draws letter strings in upright fonts that ship with matplotlib
    import dataclasses
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        pytest.skip("matplotlib (the dev extra) is not installed")
    ttf = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSerif.ttf"
    base = draw_style(np.random.default_rng(3), "default")
    own, other = (
        render_word("GARDEN", 128, 128, base),
        render_word("GARDEN", 128, 128, dataclasses.replace(base, font=str(ttf))),
    )
    assert own[0].shape == other[0].shape == (128, 128, 3) and len(other[1]) == 6
    ink = np.abs(other[0].astype(int) - np.array(base.paper)).sum(-1) > 120
    assert 0.015 * ink.size < ink.sum() < 0.5 * ink.size
    assert (own[0] != other[0]).any(axis=-1).mean() > 0.02  # another font's pixels, not the default's


def test_pixel_draws_the_word_blocky_in_two_colours_and_keeps_the_boxes():
    # the v2 recipe's pixelation augmentation: the word drawn a few pixels tall, then blown up unsmoothed
    import dataclasses

    base = dataclasses.replace(draw_style(np.random.default_rng(4), "default"), stroke=1)
    smooth, boxes = render_word("VIOLIN", 128, 128, base)
    for pixel in (6, 10, 14):
        frame, blocky_boxes = render_word("VIOLIN", 128, 128, dataclasses.replace(base, pixel=pixel))
        colours = {tuple(c) for c in frame.reshape(-1, 3).tolist()}
        assert colours == {base.ink, base.paper}  # every pixel all ink or all paper: no smoothing
        assert blocky_boxes == boxes  # the letters stay where their labels say
        ink = (frame != np.array(base.paper)).any(-1)
        assert 0.015 * ink.size < ink.sum() < 0.5 * ink.size
        assert (frame != smooth).any(-1).mean() > 0.01
        rows = ink[ink.any(1)]  # the word's rows repeat in blocks: as many distinct rows as drawn pixels
        assert len({r.tobytes() for r in rows}) == pixel < len(rows)
    ink = (smooth != np.array(base.paper)).any(-1)
    rows = ink[ink.any(1)]
    assert len({r.tobytes() for r in rows}) == len(rows)  # the smooth word: every row its own


def test_synth_render_option(tmp_path, capsys):
    out = tmp_path / "held"
    assert main(["synth", "--out", str(out), "--n", "2", "--size", "64", "--render", "heldout", "-q"]) == 0
    assert json.loads((out / "synth.json").read_text())["render"] == "heldout"
    assert main(["synth", "--out", str(out), "--n", "2", "--size", "64", "--render", "plain"]) == 2
    assert "holds a dataset made with other settings" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "x"), "--n", "1", "--render", "fancy"]) == 2
    assert "argument --render: invalid choice" in capsys.readouterr().err
