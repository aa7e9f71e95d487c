"""Stage 1 of the longvu-synth-tiny recipe: the untrained base checkpoint, in the official layout.

    python recipes/synth_tiny/build_base.py --out base [--seed 0]

It writes, deterministically from ``--seed``:

* a 1024-token byte-level BPE tokenizer fitted to ``longvu synth`` text (questions, options,
  captions) and the chat template's words: the Qwen2 tokenizer's 151k-row embedding table alone
  would be 150 MB at width 256;
* a random Qwen2 decoder (width 256, 4 layers, 4 heads, 2 KV heads) and a random SVA connector
  (3x3 high-res and 1x1 low-res query grids over 12x12 tower patches);
* two small vision towers in the SigLIP and DINOv2 layouts (width 96, 3 layers, 168 px, 14 px
  patches), *pretrained* here on per-patch labels of rendered synth frames: the colour and shape
  of the object under each patch, and the word on word frames.  They stand in for the released
  towers, which were pretrained elsewhere on web images; LongVU keeps its towers frozen, and so
  does ``longvu train``.  About 4 minutes each on 2 CPU cores.

Stage 2 (``longvu train``) then trains the projector and the decoder; see ``run.sh``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from longvu.train import synth

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "tests/fixtures/parity/checkpoints/tiny-longvu-qwen2"  # config keys and chat template
VOCAB = 1024
WIDTH, LAYERS, MLP = 256, 4, 768  # the decoder
TOWER, TOWER_LAYERS, IMAGE, PATCH = 96, 3, 168, 14  # the towers: 12x12 patches
GRID = IMAGE // PATCH
HEADS = {"colour": 7, "shape": 7, "word": 9}  # per-patch label classes (0: none) the towers learn here
CONFIG = {  # over the template's config.json
    "hidden_size": WIDTH, "intermediate_size": MLP, "num_hidden_layers": LAYERS, "max_window_layers": LAYERS,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vision_hidden_size": 128, "image_token_len": 9,
    "query_num_list": [9], "lowres_token": 1, "mm_vision_tower_aux_token_len_list": [GRID**2, GRID**2],
    "vision_tower_aux_token_len_list": [GRID**2, GRID**2], "tokenizer_model_max_length": 1536,
    "max_position_embeddings": 4096, "vocab_size": VOCAB, "dino_threshold": 0.95, "drop_threshold": 0.8,
    "dino_image_size": IMAGE, "torch_dtype": "float32", "_name_or_path": "longvu-synth-tiny",
}  # fmt: skip


# ------------------------------------------------------------------ tokenizer
def tokenizer_corpus(n: int = 400):
    """Text the model will read and write: synth questions, options and captions, and chat words."""
    settings = synth.SynthSettings(seed=12345, minutes=(0.2, 0.5))
    for i in range(n):
        plan, _ = synth.make_video(settings, i)
        rng = np.random.default_rng([7, i])
        yield synth.describe(plan)
        for fam in synth.FAMILIES:
            q = synth.ask(rng, plan, fam)
            yield synth.mc_prompt(q.text, q.options)
            yield " ".join(q.options)
    for _ in range(50):
        yield "You are a helpful assistant. Describe the video. system user assistant"
        yield "Answer with a single word. What is happening in this video? What is the person doing in this video?"


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer.from_file(str(TEMPLATE / "tokenizer.json"))  # Qwen2's normalizer and pre-tokenizer
    trainer = BpeTrainer(vocab_size=VOCAB - 3, initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])  # ids 1021-1023
    tok.save(str(out / "tokenizer.json"))
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(TEMPLATE / name, out / name)
    gen = {"bos_token_id": 1021, "do_sample": False, "eos_token_id": [1023, 1021], "pad_token_id": 1021}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


# ------------------------------------------------------------------ decoder and connector
def build_model(out: Path, seed: int) -> dict:
    """config.json and model.safetensors: a random decoder and connector; returns the raw config."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from longvu.config import LongVUConfig
    from longvu.model.connector import SVAConnector

    raw = json.loads((TEMPLATE / "config.json").read_text())
    raw.update(CONFIG)
    raw.pop("transformers_version", None)
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    ))  # fmt: skip
    conn = SVAConnector(LongVUConfig.from_dict(raw), [TOWER, TOWER])
    with torch.no_grad():  # the reference initialises these small; torch.empty would leave them arbitrary
        conn.vision_query.normal_(0, 0.02)
        conn.image_newline.normal_(0, 0.02)
        for name, p in conn.named_parameters():
            if "pos_embed" in name:
                p.normal_(0, 0.02)
    state = {k: v.contiguous() for k, v in llm.state_dict().items()}
    state.update({f"model.{k}": v.contiguous() for k, v in conn.state_dict().items()})
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return raw


# ------------------------------------------------------------------ vision towers
def random_towers(out: Path, seed: int) -> None:
    """``vision_towers/{siglip,dinov2}``: random towers in the released layouts, at 168 px."""
    from transformers import Dinov2Config, Dinov2Model, SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    text = dict(hidden_size=16, intermediate_size=32, max_position_embeddings=16, num_attention_heads=2,
                num_hidden_layers=1, vocab_size=64)  # fmt: skip  # unused by LongVU, required by the layout
    vision = dict(hidden_size=TOWER, intermediate_size=TOWER * 4, num_attention_heads=4,
                  num_hidden_layers=TOWER_LAYERS, image_size=IMAGE, patch_size=PATCH)  # fmt: skip
    towers = {
        "siglip": SiglipModel(SiglipConfig(text_config=text, vision_config=vision)),
        "dinov2": Dinov2Model(Dinov2Config(hidden_size=TOWER, num_attention_heads=4, num_hidden_layers=TOWER_LAYERS,
                                           mlp_ratio=4, image_size=IMAGE, patch_size=PATCH, use_swiglu_ffn=True,
                                           layerscale_value=1.0)),
    }  # fmt: skip
    for kind, model in towers.items():
        d = out / "vision_towers" / kind
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(d), safe_serialization=True)
        pp = json.loads((TEMPLATE / "vision_towers" / kind / "preprocessor_config.json").read_text())
        if kind == "siglip":
            pp["size"] = {"height": IMAGE, "width": IMAGE}
        else:
            pp["crop_size"] = {"height": IMAGE, "width": IMAGE}
            pp["size"] = {"shortest_edge": IMAGE}
        (d / "preprocessor_config.json").write_text(json.dumps(pp, indent=2) + "\n")


def patch_labels(plan: synth.Plan, t: int, size: int) -> np.ndarray:
    """``[GRID*GRID]`` the cast member (1-based, 0 none) covering at least 12% of each patch at second ``t``."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for a in sorted((a for a in plan.appearances if a.start <= t < a.end), key=lambda a: a.member == plan.mover):
        x, y = synth.appearance_centre(plan, a, t, size)
        r, v = plan.radius, a.member + 1
        if plan.shapes[a.member] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=v, outline=v)
        else:
            draw.polygon(synth.shape_points(plan.shapes[a.member], x, y, r), fill=v, outline=v)
    m = np.asarray(mask)
    rows = np.arange(size) * GRID // size  # the patch row (and column) of each pixel row (column)
    out = np.zeros(GRID**2, np.int64)
    for gy in range(GRID):
        for gx in range(GRID):
            cell = m[rows == gy][:, rows == gx]
            counts = np.bincount(cell.ravel(), minlength=synth.MAX_COUNT + 1)[1:]
            if counts.max() >= 0.12 * cell.size:
                out[gy * GRID + gx] = int(counts.argmax()) + 1
    return out


def labelled_frames(seed: int, videos: int, size: int = 128) -> tuple[np.ndarray, torch.Tensor]:
    """Frames of ``videos`` random synth videos (about 10 each, every word frame) and ``[N, 144, 3]`` labels:
    per patch, the colour (1-6), the shape (1-6) and the word (1-8) under it, 0 for none."""
    colours = list(synth.COLOURS)
    frames, labels = [], []
    for i in range(videos):
        rng = np.random.default_rng([seed, i])
        plan = synth.plan_video(rng, int(rng.integers(12, 40)), size, int(rng.integers(1, 5)))
        video = synth.render(plan, size)
        timeline = []  # the timeline second of each video frame, None on word frames
        for t in range(plan.seconds + 1):
            timeline += [None] * (plan.word_frames if t == plan.word_at else 0) + ([t] if t < plan.seconds else [])
        words = [k for k, t in enumerate(timeline) if t is None]
        for k in dict.fromkeys([*words, *rng.permutation(len(video))[:10].tolist()]):
            t, lab = timeline[k], np.zeros((GRID**2, 3), np.int64)
            if t is None:
                lab[:, 2] = synth.WORDS.index(plan.word) + 1
            else:
                member = patch_labels(plan, t, size)
                lab[:, 0] = np.array([0] + [colours.index(c) + 1 for c in plan.colours])[member]
                lab[:, 1] = np.array([0] + [synth.SHAPES.index(s) + 1 for s in plan.shapes])[member]
            frames.append(video[k])
            labels.append(lab)
    for word, frame in needle_frames(np.random.default_rng([seed, 1 << 30]), videos // 5, size):
        lab = np.zeros((GRID**2, 3), np.int64)
        lab[:, 2] = synth.WORDS.index(word) + 1
        frames.append(frame)
        labels.append(lab)
    return np.stack(frames), torch.from_numpy(np.stack(labels))


def needle_frames(rng: np.random.Generator, n: int, size: int) -> list[tuple[str, np.ndarray]]:
    """Word frames as V-NIAH draws them (smaller letters, wide or tall frames, padded square as the
    towers' preprocessing pads them), so the towers read a needle at any of those sizes."""
    from longvu.model.preprocess import expand_to_square

    out = []
    for _ in range(n):
        word = synth.WORDS[int(rng.integers(len(synth.WORDS)))]
        h, w = [(224, 336), (336, 224), (size, size)][int(rng.integers(3))]
        frame = Image.fromarray(synth.word_frame(word, h, w, scale=float(rng.uniform(0.9, 1.6))))
        square = expand_to_square(frame, (127, 127, 127))
        out.append((word, np.asarray(square.resize((size, size), Image.BICUBIC))))
    return out


def tower_features(kind: str, model: nn.Module):
    """``pixels -> [B, 144, C]`` patch features as LongVU reads them, and the parameters that train."""
    if kind == "siglip":
        vm = model.vision_model
        return (lambda px: vm.encoder(inputs_embeds=vm.embeddings(px)).last_hidden_state), [
            *vm.embeddings.parameters(), *vm.encoder.parameters()]  # fmt: skip
    return (lambda px: model(pixel_values=px).last_hidden_state[:, 1:]), list(model.parameters())


def pretrain_tower(folder: Path, kind: str, frames: np.ndarray, labels: torch.Tensor, *, seed: int,
                   steps: int = 1200, batch: int = 32, held: int = 1000, heads: dict[str, int] = HEADS,
                   shuffle: bool = False, focus: tuple[str, ...] = ()) -> dict[str, float]:  # fmt: skip
    """Train one tower (and a linear head per label, thrown away) on per-patch labels; returns held-out accuracy.

    ``heads``: each label column's name and class count; ``shuffle``: hold out a random slice of the
    frames (else the first ``held``); ``focus``: heads whose loss also counts, on its own, the patches
    that carry a label (class > 0), so that a rare label is not drowned by the patches without one."""
    from transformers import Dinov2Model, SiglipModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from longvu.model.preprocess import ImageSpec, preprocess_frames

    held = min(held, len(frames) // 5)
    if shuffle:
        order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))
        frames, labels = frames[order.numpy()], labels[order]
    pixels = preprocess_frames(frames, ImageSpec.from_preprocessor_config(folder / "preprocessor_config.json"))
    model = (SiglipModel if kind == "siglip" else Dinov2Model).from_pretrained(str(folder))
    features, params = tower_features(kind, model)
    torch.manual_seed(seed)
    head = nn.Linear(TOWER, sum(heads.values()))
    params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))  # fmt: skip
    gen = torch.Generator().manual_seed(seed)

    def loss_logits(px, lab):
        logits = head(features(px)).split(list(heads.values()), -1)
        loss = sum(F.cross_entropy(lg.flatten(0, 1), lab[..., j].flatten()) for j, lg in enumerate(logits))
        for j, name in enumerate(heads):
            on = lab[..., j] > 0
            if name in focus and on.any():
                loss = loss + F.cross_entropy(logits[j][on], lab[..., j][on])
        return loss, logits

    t0 = time.time()
    for step in range(1, steps + 1):
        idx = held + torch.randint(len(pixels) - held, (batch,), generator=gen)
        loss, _ = loss_logits(pixels[idx], labels[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 200 == 0:
            print(f"  {kind} step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    with torch.no_grad():
        logits = [
            loss_logits(pixels[i : min(i + 100, held)], labels[i : min(i + 100, held)])[1] for i in range(0, held, 100)
        ]
    acc = {}
    for j, name in enumerate(heads):
        pred, lab = torch.cat([lg[j] for lg in logits]).argmax(-1), labels[:held, :, j]
        acc[name] = round(float((pred[lab > 0] == lab[lab > 0]).float().mean()), 4)
    return acc


def main(labelled=None, heads: dict[str, int] = HEADS, shuffle: bool = False, doc: str | None = None,
         after_towers=None, focus: tuple[str, ...] = ()) -> None:  # fmt: skip
    """The command line; another recipe passes its own frames (``labelled(seed, videos)``), heads, and a
    stage run after the towers (``after_towers(out, frames, labels, seed)`` -> a report to keep), and
    the heads the towers' loss dwells on (:func:`pretrain_tower`'s ``focus``)."""
    labelled = labelled or labelled_frames
    ap = argparse.ArgumentParser(description=(doc or __doc__).split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="new folder for the base checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tower-videos", type=int, default=1500, help="synth videos whose frames pretrain the towers")
    ap.add_argument("--tower-steps", type=int, default=1200, help="optimizer steps per tower (batch 32)")
    ap.add_argument("--dinov2-steps", type=int, default=None, help="the DINOv2 tower's steps (default: --tower-steps)")
    a = ap.parse_args()
    if a.out.exists() and any(a.out.iterdir()):
        raise SystemExit(f"build_base: --out {a.out} is not empty")
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    build_tokenizer(a.out)
    build_model(a.out, a.seed)
    random_towers(a.out, a.seed)
    frames, labels = labelled(1000 + a.seed, a.tower_videos)
    print(f"base: tokenizer, decoder, connector; {len(frames)} labelled frames ({time.time() - t0:.0f} s)", flush=True)
    report = {}
    for kind in ("siglip", "dinov2"):
        report[kind] = pretrain_tower(a.out / "vision_towers" / kind, kind, frames, labels, seed=a.seed,
                                      steps=a.dinov2_steps if kind == "dinov2" and a.dinov2_steps else a.tower_steps,
                                      heads=heads, shuffle=shuffle, focus=focus)  # fmt: skip
        print(f"  {kind} held-out per-patch accuracy {report[kind]} ({time.time() - t0:.0f} s)", flush=True)
    if after_towers is not None:
        report.update(after_towers(a.out, frames, labels, a.seed))
    (a.out / "towers_pretraining.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
