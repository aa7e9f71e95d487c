"""Command line for training data: ``longvu synth`` (make a dataset) and ``longvu data check`` (check one).

Kept apart from :mod:`longvu.cli`, which only registers these parsers and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import sys

from . import common as c

COMMANDS = {
    "synth": "make a synthetic video QA dataset (videos + data.jsonl)",
    "data": "check a training JSONL (LLaVA / LongVU video SFT format)",
}


def add_parser(sub) -> None:
    """Register ``synth`` and ``data`` on the ``longvu`` sub-parsers."""
    from ..train.render import RENDERS
    from ..train.synth import FAMILIES
    from .common import examples

    sy = sub.add_parser("synth", help=COMMANDS["synth"],
                        description="Make videos whose questions need the video (objects appearing, moving and "
                                    "counted; a word in one frame), with the questions as training JSONL.",
                        epilog=examples("# a video whose word the model trained here names (in a clone: models/longvu-synth-tiny)",
                                        "longvu synth --out demo --n 1 --seed 5 --cast 1 --render plain -q",
                                        "longvu synth --out synth-data --n 100",
                                        "longvu synth --out held-out --n 50 --seed 1 --minutes 1 10 --families count motion",
                                        "longvu data check synth-data"))  # fmt: skip
    sy.add_argument(
        "--out", required=True, help="output folder (new, or made by an earlier run with the same settings)"
    )
    sy.add_argument("--n", type=int, required=True, help="number of videos")
    sy.add_argument("--seed", type=int, default=0, help="dataset seed (default 0); another seed gives held-out data")
    sy.add_argument("--minutes", type=float, nargs=2, default=[0.2, 4.0], metavar=("MIN", "MAX"),
                    help="video lengths, log-uniform between MIN and MAX minutes (at least 12 s; default 0.2 4)")  # fmt: skip
    sy.add_argument("--size", type=int, default=128, help="frame side in pixels")
    sy.add_argument("--families", nargs="+", default=list(FAMILIES), metavar="FAMILY",
                    help=f"question families, taken in turn (default all: {' '.join(FAMILIES)})")  # fmt: skip
    sy.add_argument("--questions-per-video", type=int, default=1, metavar="K",
                    help="questions asked about each video, each a line of data.jsonl (default 1)")  # fmt: skip
    sy.add_argument("--options", choices=["all", "four"], default="all",
                    help="all: every value of the family in a fixed order (6 colours, 6 shapes, 8 words, 4 counts, "
                         "4 directions); four: four options, shuffled (default all)")  # fmt: skip
    sy.add_argument("--cast", type=int, default=4, metavar="K",
                    help="objects per video, 1 to 4 (default 4); with 1, colour and shape questions need no "
                         "telling objects apart, and the object is drawn about twice as large")  # fmt: skip
    sy.add_argument("--object-scale", type=float, metavar="S",
                    help="objects' size against the usual, 0.5 to 2 (default 1.9 with --cast 1, else 1)")  # fmt: skip
    sy.add_argument("--render", choices=RENDERS, default="default",
                    help="the word needle's style, drawn per video from the seed: default (the training styles: "
                         "fonts, sizes, positions, colours), heldout (fonts, sizes and colours no training recipe "
                         "uses), plain (black on white, centred, always the same)")  # fmt: skip
    sy.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    da = sub.add_parser("data", help=COMMANDS["data"],
                        description="Check a training JSONL line by line: each malformed line is reported with its "
                                    "number, and the command exits 2.",
                        epilog=examples("longvu data check synth-data", "longvu data check train.jsonl --video-root /data/videos"))  # fmt: skip
    da.add_argument("action", choices=["check"], help="what to do (only: check)")
    da.add_argument("data", help="a .jsonl file, or a folder holding data.jsonl")
    da.add_argument("--video-root", help="folder relative video paths start from (default: the JSONL's folder)")


def run(args: argparse.Namespace) -> int:
    return run_synth(args) if args.command == "synth" else run_check(args)


def run_synth(args: argparse.Namespace) -> int:
    from ..train.synth import SynthSettings, generate

    settings = SynthSettings(
        seed=args.seed, minutes=tuple(args.minutes), size=args.size, families=tuple(args.families),
        questions_per_video=args.questions_per_video, options=args.options, cast=args.cast,
        render=args.render, object_scale=args.object_scale,
    )  # fmt: skip
    show = not args.quiet and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\r{done}/{c.plural(total, 'video')}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    path = generate(args.out, settings, args.n, progress=progress)
    lines = sum(1 for _ in open(path))
    print(f"wrote {c.plural(args.n, 'video')} and {c.plural(lines, 'question')}: {path}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..train.data import DataError, load_examples, resolve_data
    from .common import print_error

    try:
        examples = load_examples(args.data, video_root=args.video_root)
    except DataError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        shown = f" (the first {len(e.errors)} shown)" if e.total > len(e.errors) else ""
        print_error(args, f"{c.plural(e.total, 'malformed line')}{shown}")
        return 2
    videos = len({ex.video for ex in examples if ex.video is not None})
    text = sum(ex.video is None for ex in examples)
    turns = sum(len(ex.turns) for ex in examples) // 2
    also = f" ({text} text-only)" if text else ""
    print(f"{resolve_data(args.data)}: {c.plural(len(examples), 'example')}{also}, "
          f"{c.plural(turns, 'answer')} to learn, {c.plural(videos, 'video')}: ok")  # fmt: skip
    return 0
