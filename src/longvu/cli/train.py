"""Command line for fine-tuning: ``longvu train`` and ``longvu merge``.

Kept apart from :mod:`longvu.cli`, which only registers these parsers and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import sys

COMMANDS = {
    "train": "fine-tune a checkpoint on video SFT data (LoRA or full)",
    "merge": "write base checkpoint + adapter as a full checkpoint (released layout)",
}


def add_parser(sub) -> None:
    """Register ``train`` and ``merge`` on the ``longvu`` sub-parsers (no torch imported: help stays fast)."""
    from ..train.config import PARTS, TrainConfig
    from . import common as c

    d = TrainConfig(model="", data="", out="")
    tr = sub.add_parser("train", help=COMMANDS["train"],
                        description="Fine-tune on a LLaVA / LongVU video SFT JSONL through the same compression as "
                                    "inference; writes an adapter that ask/chat/serve/eval load with --adapter.",
                        epilog=c.examples(
                            "longvu synth --out synth-data --n 20 --minutes 0.2 0.5",
                            f"longvu train --model {c.TINY_MODEL} --data synth-data --out run1 --lora --max-steps 20 --device cpu",
                            f"longvu ask --model {c.TINY_MODEL} --adapter run1 VIDEO QUESTION",
                            "accelerate launch -m longvu.cli train --model /models/LongVU_Qwen2_7B --data train.jsonl --out run2 --lora --precision bf16",
                        ))  # fmt: skip
    tr.add_argument("--model", required=True, help="base checkpoint folder or hub id")
    tr.add_argument("--data", required=True, help="a training .jsonl, or a folder holding data.jsonl (longvu synth)")
    tr.add_argument("--out", required=True, help="output folder: the adapter, train_log.jsonl, checkpoints/")
    tr.add_argument("--lora", action="store_true", help="train the LLM through a LoRA adapter (peft) instead of fully")
    tr.add_argument("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    tr.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")
    tr.add_argument("--train", default=",".join(d.train),
                    help=f"what trains, comma-separated from {', '.join(PARTS)} (default {','.join(d.train)}; "
                         "connector = projector + sva)")  # fmt: skip
    tr.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps (default: --epochs)")
    tr.add_argument("--epochs", type=float, default=d.epochs, help=f"passes over the data (default {d.epochs:g})")
    tr.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    tr.add_argument("--lr-scheduler", default=d.lr_scheduler, help=f"transformers schedule (default {d.lr_scheduler})")
    tr.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps (default 0)")
    tr.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per device and step (default 1)")
    tr.add_argument("--grad-accum", type=int, default=d.grad_accum, help="gradient accumulation steps (default 1)")
    tr.add_argument("--weight-decay", type=float, default=d.weight_decay,
                    help=f"AdamW weight decay (default {d.weight_decay:g})")  # fmt: skip
    tr.add_argument("--seed", type=int, default=d.seed, help=f"seed of data order and LoRA init (default {d.seed})")
    tr.add_argument("--precision", choices=["no", "bf16", "fp16"], default=d.precision,
                    help="mixed precision (autocast; default no)")  # fmt: skip
    tr.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    tr.add_argument("--save-steps", type=int, default=d.save_steps, help=f"checkpoint every N steps ({d.save_steps})")
    tr.add_argument("--logging-steps", type=int, default=d.logging_steps, help="log every N steps (default 1)")
    tr.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    tr.add_argument("--device", default=d.device, help="auto, cpu, cuda, mps (torchrun: the local rank's GPU)")
    tr.add_argument("--dtype", default=d.dtype, choices=["float32", "float16", "bfloat16"],
                    help="weights' dtype (default float32; use --precision for mixed precision)")  # fmt: skip
    tr.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                    help="override a config field for training, e.g. --set tokenizer_model_max_length=4096")  # fmt: skip
    tr.add_argument("--video-root", help="folder relative video paths start from (default: the JSONL's folder)")
    tr.add_argument("--cache-dir", help="feature cache folder (default $LONGVU_CACHE_DIR or ~/.cache/longvu)")
    tr.add_argument("--no-cache", action="store_true", help="keep video features in memory only")
    tr.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    mg = sub.add_parser("merge", help=COMMANDS["merge"],
                        description="Merge an adapter into its base and write a checkpoint that loads like the "
                                    "released ones.",
                        epilog=c.examples(f"longvu merge --model {c.TINY_MODEL} --adapter run1 --out tiny-merged"))  # fmt: skip
    mg.add_argument("--model", required=True, help="the base checkpoint the adapter was trained on")
    mg.add_argument("--adapter", required=True, help="the folder `longvu train` wrote")
    mg.add_argument("--out", required=True, help="new checkpoint folder (must not exist, or be empty)")
    mg.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                    help="write every weight in this dtype (default: the base's, bfloat16 for the released ones)")  # fmt: skip
    mg.add_argument("--quiet", "-q", action="store_true", help="nothing on stderr but errors")


def run(args: argparse.Namespace) -> int:
    return run_train(args) if args.command == "train" else run_merge(args)


def run_train(args: argparse.Namespace) -> int:
    from ..config import parse_set_options
    from ..errors import LongVUError
    from ..train.loop import TrainConfig, train

    for name in ("batch_size", "grad_accum", "save_steps", "logging_steps", "lora_r"):
        if getattr(args, name) < 1:
            raise LongVUError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_steps == 0 or args.max_steps < -1 or args.epochs <= 0 or args.lr <= 0:
        raise LongVUError("--max-steps, --epochs and --lr must be positive")
    if not 0 <= args.weight_decay < 1:
        raise LongVUError(f"--weight-decay must be in [0, 1), got {args.weight_decay:g}")
    cfg = TrainConfig(
        model=args.model, data=args.data, out=args.out, lora=args.lora, train=tuple(args.train.split(",")),
        max_steps=args.max_steps, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, seed=args.seed, resume=args.resume, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lr_scheduler=args.lr_scheduler, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        precision=args.precision, gradient_checkpointing=args.gradient_checkpointing, logging_steps=args.logging_steps,
        save_steps=args.save_steps, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
        no_cache=args.no_cache, overrides=parse_set_options(args.overrides), video_root=args.video_root,
        progress=not args.quiet and sys.stderr.isatty(),
    )  # fmt: skip
    out = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # torchrun / accelerate launch: one report
        print(f"trained: {out} (log {out / 'train_log.jsonl'})")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..loading.adapter import merge_checkpoint

    out = merge_checkpoint(args.model, args.adapter, args.out, dtype=args.dtype)
    print(f"wrote {out}")
    return 0
