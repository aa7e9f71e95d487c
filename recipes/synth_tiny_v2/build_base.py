"""Stage 1 of the longvu-synth-tiny v2 recipe: the untrained base checkpoint, in the official layout.

    python recipes/synth_tiny_v2/build_base.py --out base --tower-videos 800 --tower-steps 2000 --dinov2-steps 600

It writes, deterministically from ``--seed``:

* a 1024-token byte-level BPE tokenizer fitted to ``longvu synth`` text (questions, options,
  captions) and the chat template's words: the Qwen2 tokenizer's 151k-row embedding table alone
  would be 150 MB at width 256;
* a random Qwen2 decoder (width 256, 4 layers, 4 heads, 2 KV heads) and an SVA connector (3x3 high-res
  and 1x1 low-res query grids over 12x12 tower patches), pretrained last (below);
* two small vision towers in the SigLIP and DINOv2 layouts (width 96, 3 layers, 168 px, 14 px
  patches), *pretrained* here on per-patch labels of rendered frames: the colour and shape of the
  object under each patch of synth video frames (their word frames left out), and the letter under
  each patch of frames showing random letter strings (never one of the eight needle words) in the
  training styles (``--render default``) and 13 upright fonts (:func:`training_fonts`); never a
  ``heldout`` style.  So the towers never saw a needle word, nor a label of one.  They stand in for
  the released towers, which were pretrained elsewhere on web images; LongVU keeps its towers
  frozen, and so does ``longvu train``;
* then the SVA connector (not ``mm_projector``), trained on the frozen towers' outputs for the same
  frames so that each of its tokens tells its region's colours, shapes and letters
  (:func:`pretrain_connector`).

``towers_pretraining.json`` holds each part's held-out accuracy.  Stage 3 (``longvu train``) then
trains the projector and the decoder; see ``run.sh``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longvu.train import synth
from longvu.train.render import draw_style, render_word

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "synth_tiny"))
import build_base as v1  # noqa: E402  (recipes are scripts: the v1 recipe's stage 1, shared)

HEADS = {"colour": 7, "shape": 7, "letter": 27}  # per-patch label classes (0: none): letters, not words


def labelled_frames(seed: int, videos: int, size: int = 128) -> tuple[np.ndarray, torch.Tensor]:
    """Frames of ``videos`` random synth videos (about 10 each, no word frame) and of ``videos * 9`` letter
    strings (:func:`letter_frames` in :func:`training_fonts`), and ``[N, 144, 3]`` labels: per patch, the colour (1-6) and the shape (1-6) of the object
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
    letters, letter_labels = letter_set(
        np.random.default_rng([seed, 1 << 30]), videos * 9, size, fonts=training_fonts(), pixelate=0.4
    )
    return np.concatenate([np.stack(frames), letters]), torch.cat([torch.from_numpy(np.stack(labels)), letter_labels])


def letter_set(rng: np.random.Generator, n: int, size: int, **kw) -> tuple[np.ndarray, torch.Tensor]:
    """:func:`letter_frames` as ``[n, size, size, 3]`` frames and ``[n, 144, 3]`` labels (the letter in
    the third column; no colour or shape)."""
    pairs = letter_frames(rng, n, size, **kw)
    labels = torch.zeros(n, v1.GRID**2, 3, dtype=torch.long)
    labels[..., 2] = torch.from_numpy(np.stack([p[1] for p in pairs]))
    return np.stack([p[0] for p in pairs]), labels


# TrueType fonts shipped inside matplotlib (a dev dependency), so the same files on every machine: upright
# faces, and the slanted (oblique and italic) faces of some.  Pillow's bitmap font, Pillow's scalable font
# slanted, the held-out widths and every heldout palette are left out.
UPRIGHT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
                 "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "cmr10.ttf",
                 "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf")  # fmt: skip
SLANTED_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf",
                 "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneralItalic.ttf",
                 "STIXGeneralBolIta.ttf")  # fmt: skip
PIXEL_HEIGHTS = (6, 15)  # the pixelation augmentation: the word drawn 6-14 pixels tall, then blown up


def training_fonts() -> list[str]:
    """Paths of :data:`UPRIGHT_FONTS` and :data:`SLANTED_FONTS` (matplotlib's copies), and ``"scalable"``
    (Pillow's own, upright)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise SystemExit("build_base: needs matplotlib for its fonts (pip install -e '.[dev]')")
    folder = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"
    return ["scalable", *(str(folder / f) for f in UPRIGHT_FONTS + SLANTED_FONTS)]


def letter_frames(
    rng: np.random.Generator,
    n: int,
    size: int,
    render: str = "default",
    blur: bool = True,
    fonts: list[str] | None = None,
    pixelate: float = 0.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames of random 4-7 letter strings (never a needle word) in the styles ``render`` (the training
    styles unless measuring), and per patch the letter (1-26) whose box holds the patch's centre, 0 for none.

    ``fonts``: draw each string in one of these (:func:`training_fonts`) instead of the style's font.
    ``pixelate``: the share of strings drawn blocky (:data:`PIXEL_HEIGHTS`, ``WordStyle.pixel``), a
    generic augmentation, so that letters are learnt from coarse pixels too.
    ``blur``: half the frames are scaled down by 0.45-1 and back up (bilinear), a generic resolution
    augmentation, so that letters are learnt at more than one sharpness."""
    from PIL import Image

    centres = (np.arange(v1.GRID) + 0.5) * size / v1.GRID
    out = []
    while len(out) < n:
        text = "".join(chr(65 + int(c)) for c in rng.integers(26, size=int(rng.integers(4, 8))))
        if text in synth.WORDS:
            continue
        style = draw_style(rng, render)
        if fonts:
            style = dataclasses.replace(style, font=fonts[int(rng.integers(len(fonts)))])
        if rng.random() < pixelate:
            style = dataclasses.replace(style, pixel=int(rng.integers(*PIXEL_HEIGHTS)))
        frame, boxes = render_word(text, size, size, style)
        if blur and rng.random() < 0.5:
            small = max(8, int(size * rng.uniform(0.45, 1.0)))
            img = Image.fromarray(frame).resize((small, small), Image.BILINEAR)
            frame = np.asarray(img.resize((size, size), Image.BILINEAR))
        lab = np.zeros((v1.GRID, v1.GRID), np.int64)
        for ch, (x0, y0, x1, y1) in zip(text, boxes):
            lab[np.ix_((centres >= y0) & (centres < y1), (centres >= x0) & (centres < x1))] = ord(ch) - 64
        out.append((frame, lab.ravel()))
    return out


def region_targets(labels: torch.Tensor, side: int = 3) -> dict[str, torch.Tensor]:
    """Per-patch labels ``[N, 144, 3]`` -> what each of the connector's ``side x side`` tokens should
    hold about its region of patches: the share of each colour and shape class (``[N, side^2, 7]``,
    class 0 = no object) and of each letter (``[N, side^2, 27]``, class 0 = none)."""
    n, cell = len(labels), v1.GRID // side

    def regions(x: torch.Tensor) -> torch.Tensor:  # [N, 144, C] -> [N, side^2, cell^2, C]
        x = x.view(n, side, cell, side, cell, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, side * side, cell * cell, -1)

    colour = regions(F.one_hot(labels[..., 0], HEADS["colour"]).float()).mean(2)
    shape = regions(F.one_hot(labels[..., 1], HEADS["shape"]).float()).mean(2)
    letter = regions(F.one_hot(labels[..., 2], HEADS["letter"]).float()).mean(2)
    return {"colour": colour, "shape": shape, "letter": letter}


def tower_outputs(lv, frames: np.ndarray, batch: int = 200) -> list[torch.Tensor]:
    """Both towers' patch features of ``frames`` as the encoder computes them: ``[N, 144, C]`` each."""
    from longvu.model.preprocess import preprocess_frames

    model, out = lv.model, ([], [])
    for i in range(0, len(frames), batch):
        for k, tower in enumerate((model.siglip, model.dinov2)):
            out[k].append(tower(preprocess_frames(frames[i : i + batch], tower.spec), model.cfg.aux_side).float())
    return [torch.cat(o) for o in out]


def sampled_tokens(conn, feats: list[torch.Tensor], sampling) -> torch.Tensor:
    """``[B, 9, vh]``: the connector's high-res tokens of the towers' ``feats``, sampled as the encoder
    samples them (``sampling``: ``(frame size, fix_unpad_orientation)``)."""
    size, fix = sampling
    return conn.sample(conn.project_aux(feats), size, fix_orientation=fix)


def connector_loss(conn, head: nn.Module, feats: list[torch.Tensor], target: dict[str, torch.Tensor], sampling):
    """The region objective: each sampled token predicts its region's shares of colours, shapes and
    letters (soft cross-entropy each).  Returns the loss and the three logits.

    ``sampling``: ``(frame size, fix_unpad_orientation)``, as the encoder passes them to the sampler."""
    logits = head(sampled_tokens(conn, feats, sampling)).split(list(HEADS.values()), -1)
    loss = sum(-(target[name] * lg.log_softmax(-1)).sum(-1).mean() for name, lg in zip(HEADS, logits))
    return loss, logits


def pretrain_connector(out: Path, frames: np.ndarray, labels: torch.Tensor, seed: int, steps: int = 1500,
                       batch: int = 64, held: int = 600) -> dict:  # fmt: skip
    """Train the SVA connector (tower projections, sampler, queries; ``mm_projector`` stays for ``longvu
    train``) on the frozen towers' outputs, with :func:`connector_loss`, and save it into
    ``model.safetensors``.  Returns held-out accuracies (:func:`region_accuracy`) on these frames, and
    on letter strings in *held-out* styles (measured only; nothing here trains on them)."""
    from safetensors.torch import load_file, save_file

    from longvu import LongVU

    t0 = time.time()
    lv = LongVU.from_pretrained(str(out), device="cpu", dtype="float32", cache=False)
    conn, sampling = lv.model.connector, ((v1.IMAGE, v1.IMAGE), lv.model.cfg.fix_unpad_orientation)
    order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed + 1)).numpy()
    frames, labels = frames[order], labels[order]
    feats, target = tower_outputs(lv, frames), region_targets(labels)
    print(f"  connector: tower outputs of {len(frames)} frames ({time.time() - t0:.0f} s)", flush=True)
    torch.manual_seed(seed)
    head = nn.Linear(lv.model.cfg.vision_hidden_size, sum(HEADS.values()))
    params = [p for n, p in conn.named_parameters() if not n.startswith(("mm_projector.", "image_newline"))]
    opt = torch.optim.AdamW([*params, *head.parameters()], lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = held + torch.randint(len(frames) - held, (batch,), generator=gen)
        loss, _ = connector_loss(conn, head, [f[idx] for f in feats], {k: v[idx] for k, v in target.items()}, sampling)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 100 == 0:
            print(f"  connector step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    state = load_file(str(out / "model.safetensors"))
    state.update({f"model.{k}": v.detach().contiguous() for k, v in conn.state_dict().items()})
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    report = {"held_out": region_accuracy(conn, head, [f[:held] for f in feats], labels[:held], sampling)}
    letters, lab = letter_set(np.random.default_rng([seed, 1 << 31]), 300, 128, render="heldout", blur=False)
    report["held_out_styles_letters"] = region_accuracy(conn, head, tower_outputs(lv, letters), lab, sampling)
    print(f"  connector held-out: {report} ({time.time() - t0:.0f} s)", flush=True)
    return {"connector": report}


@torch.no_grad()
def region_accuracy(conn, head, feats: list[torch.Tensor], labels: torch.Tensor, sampling) -> dict[str, float]:
    """The main colour and shape of each region an object covers at least half of, and the main letter of
    each region showing any (accuracy)."""
    target = region_targets(labels)
    _, logits = connector_loss(conn, head, feats, target, sampling)
    out = {}
    for name, lg in zip(HEADS, logits):
        where = target[name][..., 0] < (1.0 if name == "letter" else 0.5)
        if where.any():
            pred, truth = lg[where][:, 1:].argmax(-1), target[name][where][:, 1:].argmax(-1)
            out[name] = round(float((pred == truth).float().mean()), 4)
    return out


if __name__ == "__main__":
    v1.main(labelled_frames, HEADS, shuffle=True, doc=__doc__, after_towers=pretrain_connector, focus=("letter",))
