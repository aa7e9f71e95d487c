"""How ``longvu synth`` draws a word needle: a style per video, from the seed (``--render``).

Three style sets:

* ``plain``: black letters of Pillow's scalable default font on white, centred (the fixed needle of
  earlier versions, and V-NIAH's own drawing);
* ``default``: the training styles.  Pillow's scalable font, regular or bold (stroke 0-2), stretched
  0.8-1.25 across, upright; the word 55-68% or 80-92% of the frame's width; shifted off centre;
  dark ink on a light paper, each from a palette of four;
* ``heldout``: styles no training recipe uses.  Pillow's *bitmap* font blown up (blocky), or the
  scalable font slanted (italic, shear 0.18-0.3); the word 68-80% of the width (a band between the
  training sizes); ink and paper from two other palettes.

Only fonts that ship inside Pillow are used, so a style draws the same pixels on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RENDERS = ("default", "heldout", "plain")
INK = {"default": ((0, 0, 0), (20, 30, 110), (120, 15, 15), (10, 80, 30)),
       "heldout": ((70, 20, 90), (90, 60, 10))}  # fmt: skip
PAPER = {"default": ((255, 255, 255), (250, 240, 200), (215, 215, 215), (205, 235, 240)),
         "heldout": ((250, 215, 225), (225, 220, 250))}  # fmt: skip
WIDTHS = {"default": ((0.55, 0.68), (0.80, 0.92)), "heldout": ((0.68, 0.80),)}  # the word's share of the width


@dataclass(frozen=True)
class WordStyle:
    """How one needle is drawn (fractions of the frame where sizes are relative)."""

    font: str = "scalable"  # "scalable" (Pillow's default FreeType font), "bitmap" (its bitmap font), or a .ttf path
    width: float = 0.0  # the word's share of the frame's width; 0: the plain needle's size
    stroke: int = 0  # bold: extra outline width in font pixels (at size 64)
    stretch: float = 1.0  # height scale against the width
    shear: float = 0.0  # italic slant (x shift per unit of height)
    dx: float = 0.0  # offset of the word's centre, fraction of the width
    dy: float = 0.0  # and of the height
    pixel: int = 0  # >0: the word drawn this many pixels tall, unsmoothed, then blown up (blocky); a
    #                 recipe's augmentation, no RENDERS style sets it
    ink: tuple[int, int, int] = (0, 0, 0)
    paper: tuple[int, int, int] = (255, 255, 255)


PLAIN = WordStyle()


def draw_style(rng: np.random.Generator, render: str) -> WordStyle:
    """A style from the set ``render`` (:data:`RENDERS`)."""
    if render == "plain":
        return PLAIN
    if render not in ("default", "heldout"):
        raise ValueError(f"unknown render {render!r}")
    lo, hi = WIDTHS[render][int(rng.integers(len(WIDTHS[render])))]
    width = float(rng.uniform(lo, hi))
    ink, paper = INK[render], PAPER[render]
    common = dict(width=width, dx=float(rng.uniform(-0.06, 0.06)), dy=float(rng.uniform(-0.2, 0.2)),
                  ink=ink[int(rng.integers(len(ink)))], paper=paper[int(rng.integers(len(paper)))])  # fmt: skip
    if render == "default":
        return WordStyle("scalable", stroke=int(rng.integers(3)), stretch=float(rng.uniform(0.8, 1.25)), **common)
    if rng.random() < 0.5:
        return WordStyle("bitmap", stretch=float(rng.uniform(0.9, 1.1)), **common)
    return WordStyle("scalable", stroke=int(rng.integers(2)), shear=float(rng.uniform(0.18, 0.3)), **common)


def _mask(word: str, style: WordStyle):
    """The word's ink as a tight ``L`` image, and the x-extent of each letter in it (pixels)."""
    from PIL import Image, ImageDraw, ImageFont  # lazy: PIL only on this path

    if style.font == "bitmap":
        font = ImageFont.load_default_imagefont()
    elif style.font == "scalable":
        font = ImageFont.load_default(size=64)
    else:  # a TrueType file (a recipe's own fonts; no RENDERS style draws one)
        font = ImageFont.truetype(style.font, 64)
    stroke = style.stroke if style.font != "bitmap" else 0
    box = font.getbbox(word, stroke_width=stroke)
    img = Image.new("L", (box[2] - box[0] + 2, box[3] - box[1] + 2), 0)
    ImageDraw.Draw(img).text((1 - box[0], 1 - box[1]), word, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    ends = [font.getlength(word[: k + 1]) for k in range(len(word))]
    xs = [(1 - box[0] + a, 1 - box[0] + b) for a, b in zip([0.0, *ends[:-1]], ends)]
    return img, xs


def render_word(
    word: str, h: int, w: int, style: WordStyle
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """``[h, w, 3]`` uint8: ``word`` drawn in ``style``, and each letter's box ``(x0, y0, x1, y1)`` in
    the frame (upright styles; a slanted word's boxes are those before the slant)."""
    from PIL import Image  # lazy: PIL only on this path

    mask, xs = _mask(word, style)
    if style.pixel:  # coarse pixels, each all ink or all paper, at the mask's own size (the letter boxes hold)
        small = mask.resize((max(1, round(mask.width * style.pixel / mask.height)), style.pixel), Image.BOX)
        mask = small.point(lambda v: 255 if v >= 128 else 0).resize(mask.size, Image.NEAREST)
    tw = max(1, int(round(style.width * w)))
    scale = tw / mask.width
    th = max(1, min(int(0.85 * h), int(round(mask.height * scale * style.stretch))))
    resample = Image.NEAREST if style.font == "bitmap" or style.pixel else Image.BICUBIC
    mask = mask.resize((tw, th), resample)
    if style.shear:
        pad = int(style.shear * th) + 1
        wide = Image.new("L", (tw + pad, th), 0)
        wide.paste(mask, (pad, 0))  # x_src = x + shear * (y - th): the top leans right
        mask = wide.transform(wide.size, Image.AFFINE, (1, style.shear, -style.shear * th, 0, 1, 0), Image.BICUBIC)
    x0 = int(round((w - mask.width) / 2 + style.dx * w))
    y0 = int(round((h - mask.height) / 2 + style.dy * h))
    x0, y0 = min(max(0, x0), max(0, w - mask.width)), min(max(0, y0), max(0, h - mask.height))
    frame = Image.new("RGB", (w, h), style.paper)
    frame.paste(Image.new("RGB", mask.size, style.ink), (x0, y0), mask)
    letters = [(x0 + a * scale, y0, x0 + b * scale, y0 + th) for a, b in xs]
    return np.asarray(frame), letters
