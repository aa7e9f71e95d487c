"""``longvu eval BENCHMARK`` (one subcommand per benchmark, each with its own options) and
``longvu vniah generate`` (V-NIAH haystack videos).  The work is in :mod:`longvu.eval`."""

from __future__ import annotations

import argparse
import os

from ..errors import LongVUError
from . import common as c

COMMANDS = {
    "eval": "run a benchmark: videomme, mlvu, egoschema, mvbench, synthetic, vniah",
    "vniah": "make V-NIAH haystack videos (a needle frame in a haystack video)",
}

BENCHMARKS = {
    "videomme": ("VideoMME", "/data/Video-MME"),
    "mlvu": ("MLVU (dev)", "/data/MLVU"),
    "egoschema": ("EgoSchema", "/data/EgoSchema"),
    "mvbench": ("MVBench", "/data/MVBench"),
    "synthetic": ("a `longvu synth` dataset", "synth-data"),
}


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help=COMMANDS["eval"],
                        description="Run a benchmark with its original evaluation script's settings; results go to "
                                    "--out, and a re-run resumes. `longvu eval BENCHMARK --help` lists its options.",
                        epilog=c.examples(
                            "longvu eval videomme --data /data/Video-MME --out results/videomme --device cuda --dtype float16",
                            "longvu eval vniah --data vniah --out results/vniah --mode generate",
                        ))  # fmt: skip
    bench = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (title, data) in BENCHMARKS.items():
        _add_benchmark(bench, name, title, data)
    _add_vniah_eval(bench)
    _add_vniah_generate(sub)


def _add_benchmark(bench, name: str, title: str, data: str) -> None:
    from ..eval.benchmarks import PRESETS

    preset = PRESETS[name]
    example = [f"longvu eval {name} --data {data} --out results/{name} --device cuda --dtype float16"]
    if name == "synthetic":
        example = ["# held-out word questions the model trained here answers (in a clone; about 100% right)",
                   "longvu synth --out held-out --n 20 --seed 3001 --cast 1 --families word --minutes 0.2 0.4 --render plain -q",
                   f"longvu eval synthetic --data held-out --out results/synth --model {c.TRAINED_MODEL} --device cpu"]  # fmt: skip
        description = f"Score a `longvu synth` dataset (multiple choice, its own settings): {_describe(preset)}."
    else:
        description = f"{title} with the original script's settings: {_describe(preset)}."
    p = bench.add_parser(name, help=f"{title}", epilog=c.examples(*example), description=description)
    _add_common(p)
    f = p.add_argument_group("frames and answers (the preset's, unless given)")
    f.add_argument("--sample-fps", type=c.positive_number, metavar="FPS",
                   help=f"frames per second sampled (default: the preset's {preset.sample_fps:g})")  # fmt: skip
    f.add_argument("--stride-to", type=c.positive_int, metavar="N",
                   help="the original script's thinning: past N frames keep every (frames // N)-th, which can leave "
                        f"up to 2N (default: the preset's {preset.stride_to or 'none'})")  # fmt: skip
    f.add_argument("--max-frames", type=c.positive_int, metavar="N",
                   help="then keep at most N frames, evenly spaced, as `longvu ask --max-frames` (default: all)")  # fmt: skip
    if name == "videomme":
        f.add_argument("--subtitles", action="store_true",
                       help="add each video's subtitles to the prompt (the 'w/ subs' setting; default: without)")  # fmt: skip
    _add_workers(p)
    p.add_argument("--force", action="store_true", help="add to answers in --out that were made with other settings")


def _add_workers(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("workers")
    r.add_argument("--workers", type=c.positive_int, default=1, metavar="N", help="model processes (or Ray actors)")
    r.add_argument("--ray", metavar="ADDRESS", help="run the workers on a Ray cluster: 'auto', an address, or 'local' (default: no Ray)")  # fmt: skip
    r.add_argument("--ray-gpus", type=c.non_negative_number, metavar="G",
                   help="GPUs per Ray worker (default: 1 where the cluster has GPUs, else 0)")  # fmt: skip


def _describe(preset) -> str:
    parts = [f"{preset.sample_fps:g} frames per second"]
    if preset.stride_to:
        parts.append(f"strided to about {preset.stride_to} frames (up to 2x)")
    parts += [f"{k} {v}" for k, v in preset.overrides]
    parts.append(f"greedy, {preset.max_new_tokens} new tokens")
    return ", ".join(parts)


def _add_common(p: argparse.ArgumentParser) -> None:
    from ..config import DEFAULT_MODEL

    p.add_argument("--data", required=True, metavar="DIR", help="the benchmark's folder, in its published layout")
    p.add_argument("--out", required=True, metavar="DIR", help="results folder (a re-run resumes)")
    p.add_argument("--limit", type=c.positive_int, metavar="N", help="only the first N questions (default: all)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id")
    c.add_adapter_option(m)
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda, then mps, then cpu")  # fmt: skip
    m.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: bfloat16 on cuda, float16 on mps, float32 on cpu; the original scripts use float16")  # fmt: skip
    c.add_set_option(m, "a run-time config field over the preset's")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def _add_vniah_eval(bench) -> None:
    p = bench.add_parser("vniah", help="V-NIAH: find the needle frame (videos from `longvu vniah generate`)",
                         description="Score V-NIAH items: a word shown in one frame of a haystack video. By default "
                                     "every frame of the haystack (1 fps) reaches the model; a frame rate or cap below "
                                     "that can skip the needle.",
                         epilog=c.examples(
                             "# the model trained here (in a clone) names the needle word in about a third of haystacks",
                             "longvu vniah generate --out vniah --lengths 30 60 --depths 0 0.5 1",
                             f"longvu eval vniah --data vniah --out results/vniah --model {c.TRAINED_MODEL} --mode generate --device cpu",
                         ))  # fmt: skip
    _add_common(p)
    f = p.add_argument_group("frames")
    f.add_argument("--sample-fps", type=c.positive_number, default=1.0, metavar="FPS", help="frames per second sampled")
    f.add_argument("--max-frames", type=c.positive_int, metavar="N",
                   help="keep at most N sampled frames, evenly spaced (default: all)")  # fmt: skip
    _add_workers(p)
    p.add_argument("--force", action="store_true", help="add to answers in --out that were made with other settings")
    p.add_argument("--mode", choices=["teacher", "generate"], default="teacher",
                   help="teacher: the answer's tokens are the model's greedy choices (LongVA's scoring); "
                        "generate: the word is in a free answer")  # fmt: skip


def _add_vniah_generate(sub) -> None:
    vn = sub.add_parser("vniah", help=COMMANDS["vniah"],
                        description="Write haystack videos (1 frame per second) with a needle frame (a word in large "
                                    "letters) at each depth, and vniah.json, for `longvu eval vniah`.",
                        epilog=c.examples(
                            "longvu vniah generate --out vniah",
                            "longvu vniah generate --out vniah --haystack lecture.mp4 --lengths 300 600 --depths 0 0.1 0.5 0.9 1",
                        ))  # fmt: skip
    vn.add_argument("action", choices=["generate"], help="what to do (only: generate)")
    vn.add_argument("--out", required=True, metavar="DIR", help="folder for the videos and vniah.json")
    vn.add_argument("--haystack", metavar="VIDEO", help="a video to build the haystacks from (default: synthetic frames)")  # fmt: skip
    vn.add_argument("--lengths", type=c.positive_int, nargs="+", default=[60, 120, 240, 480], metavar="SECONDS",
                    help="haystack lengths in seconds (= frames, at 1 fps)")  # fmt: skip
    vn.add_argument("--depths", type=c.fraction, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], metavar="DEPTH",
                    help="needle positions as fractions of the haystack, in [0, 1] (0: first frame, 1: last)")  # fmt: skip
    vn.add_argument("--words", nargs="+", type=str.upper, metavar="WORD",
                    help="needle words, each put in every (length, depth) cell: one video per cell and word "
                         "(default the eight of LongVA's V-NIAH: APPLE RIVER CANDLE PLANET TIGER BRIDGE VIOLIN GARDEN)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.command == "vniah":
        return run_vniah_generate(args)
    from ..config import check_set_options

    overrides = check_set_options(args.overrides)
    if not os.path.isdir(args.data):
        raise LongVUError(f"--data {args.data}: no such folder")
    c.check_output_dir(args.out, "--out")
    if not args.ray:  # local workers: the device must be here (Ray workers run where the cluster has one)
        c.check_devices(args)
    if args.benchmark == "vniah":
        return _run_vniah(args, overrides)
    return _run_benchmark(args, overrides)


def _run_vniah(args, overrides: dict) -> int:
    from ..eval.vniah import run_vniah

    summary = run_vniah(args.data, args.out, model=args.model, mode=args.mode, device=args.device, dtype=args.dtype,
                        overrides=overrides, limit=args.limit, sample_fps=args.sample_fps, max_frames=args.max_frames,
                        workers=args.workers, ray_address=args.ray, ray_gpus=args.ray_gpus, force=args.force,
                        adapter=args.adapter)  # fmt: skip
    print(f"V-NIAH ({summary['mode']}): {summary['accuracy']}% of {c.plural(summary['items'], 'item')}; "
          f"needle frame kept in {summary['needle_kept_rate']}%; heatmap {args.out}/heatmap.png")  # fmt: skip
    if summary["errors"]:
        c.log(
            args,
            f"{c.plural(summary['errors'], 'item')} failed (counted wrong; see {args.out}/results.jsonl); "
            "run again to retry them",
        )
    return 0


def _run_benchmark(args, overrides: dict) -> int:
    import dataclasses

    from ..eval.benchmarks import PRESETS, load_items
    from ..eval.runner import run_benchmark

    preset = PRESETS[args.benchmark]
    if args.sample_fps is not None:
        preset = dataclasses.replace(preset, sample_fps=args.sample_fps)
    if args.stride_to is not None:
        preset = dataclasses.replace(preset, stride_to=args.stride_to)
    if args.max_frames is not None:
        preset = dataclasses.replace(preset, max_frames=args.max_frames)
    subtitles = getattr(args, "subtitles", False)
    items = load_items(args.benchmark, args.data, **({"subtitles": True} if subtitles else {}))
    if args.limit:
        items = items[: args.limit]
    c.log(args, f"{c.plural(len(items), 'question')} from {args.data}")
    summary = run_benchmark(
        args.benchmark, items, args.out, model=args.model, device=args.device, dtype=args.dtype, overrides=overrides,
        workers=args.workers, ray_address=args.ray, ray_gpus=args.ray_gpus, progress=not args.quiet, preset=preset,
        subtitles=subtitles, force=args.force, adapter=args.adapter,
    )  # fmt: skip
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read(), end="")
    if summary["unparseable"]:
        c.log(
            args, f"{c.plural(summary['unparseable'], 'answer')} could not be parsed (counted wrong): see summary.json"
        )
    if summary["errors"]:
        c.log(
            args,
            f"{c.plural(summary['errors'], 'question')} failed (counted wrong; see summary.json); run again to retry them",
        )
    return 0


def run_vniah_generate(args: argparse.Namespace) -> int:
    from ..eval.vniah import generate

    c.check_output_dir(args.out, "--out")
    if args.haystack:
        c.check_video_path(args.haystack)
    manifest = generate(args.out, lengths=args.lengths, depths=args.depths, haystack=args.haystack, words=args.words)
    print(f"wrote {manifest}")
    return 0
