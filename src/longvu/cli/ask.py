"""``longvu ask VIDEO QUESTION`` and ``longvu describe VIDEO``: one answer on stdout.

Everything the arguments can get wrong (options, ``--set``, output paths, the video and
its time range, the checkpoint folder, a question that cannot fit) is checked before the
model loads; progress and the stage summary go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..errors import LongVUError
from ..model.prompt import DESCRIBE_PROMPT
from . import common as c

COMMANDS = {
    "ask": "answer a question about a video",
    "describe": "describe a video in detail",
}


def add_parser(sub) -> None:
    ask = sub.add_parser("ask", help=COMMANDS["ask"], description="Answer a question about a video; the answer goes to stdout, progress to stderr.",
                         epilog=c.examples(
                             c.TRAINED_NOTE,
                             c.TRAINED_DEMO,
                             c.TRAINED_ASK + "      # prints RIVER",
                             "# the released 7B model (downloaded on first use), repeatable answer",
                             'longvu ask video.mp4 "What is the person doing?" --device cuda --greedy',
                             "# one minute of the video, four frames per second, the trace to a file",
                             'longvu ask match.mp4 "Who scores?" --start 1:30 --end 2:30 --fps 4 --trace trace.json',
                         ))  # fmt: skip
    ask.add_argument("video", help="a video file (mp4, mkv, webm, mov, ...)")
    ask.add_argument("question", help="the question, in quotes")
    _add_options(ask)
    desc = sub.add_parser("describe", help=COMMANDS["describe"],
                          description=f"Describe a video: asks the model {DESCRIBE_PROMPT!r}.",
                          epilog=c.examples(
                              c.TINY_NOTE,
                              f"longvu describe {c.TINY_VIDEO} --model {c.TINY_MODEL}",
                              "longvu describe lecture.mp4 --model /models/LongVU_Qwen2_7B --device cuda --dtype bfloat16",
                          ))  # fmt: skip
    desc.add_argument("video", help="a video file (mp4, mkv, webm, mov, ...)")
    _add_options(desc)


def _add_options(p: argparse.ArgumentParser) -> None:
    c.add_model_options(p)
    c.add_sampling_options(p)
    c.add_generation_options(p)
    o = p.add_argument_group("output")
    o.add_argument("--trace", metavar="FILE.json",
                   help="write the compression trace (which frames were kept, tokens per stage, the settings)")  # fmt: skip
    o.add_argument("--trace-arrays", metavar="FILE.npz", help="write the parity arrays (first-step logits, ...)")
    o.add_argument("--server", metavar="URL",
                   help="send the question to a running `longvu serve` at URL instead of loading a model here")  # fmt: skip
    c.add_progress_options(p, o)


def run(args: argparse.Namespace) -> int:
    question = DESCRIBE_PROMPT if args.command == "describe" else args.question
    if not question.strip():
        raise LongVUError("the question is empty")
    if args.server:
        from .client import ask_server

        return ask_server(args, question)
    run_settings = prepare(args)
    # a question that cannot fit the context fails before the model loads (tokenizer and config only)
    lv = c.load_model(args, run_settings.overrides, progress=not args.quiet and sys.stderr.isatty(), question=question)
    conv = lv.conversation()
    conv.add_user(question)
    observer = _observer(args)
    feats = encode(args, lv, run_settings.sampling, observer)
    t1 = time.perf_counter()
    stream = lv.generate(feats, conv, generation=run_settings.generation, observer=observer)
    c.print_answer(stream, args.stream if args.stream is not None else sys.stdout.isatty())
    answer = stream.answer
    if args.trace:
        answer.trace.save(args.trace)
    if args.trace_arrays:
        answer.trace.save_arrays(args.trace_arrays)
    c.log(args, answer.trace.summary())
    c.log(args, f"answered in {time.perf_counter() - t1:.1f}s")
    return 0


@dataclass
class RunSettings:
    """What :func:`prepare` checked: config overrides, the frames to sample, decoding options."""

    overrides: dict
    sampling: Any
    generation: Any


def prepare(args: argparse.Namespace) -> RunSettings:
    """Check every argument and the video before the model loads (one-line errors)."""
    from ..config import check_set_options

    c.check_generation_args(args)
    overrides = check_set_options(args.overrides)
    c.check_output_file(getattr(args, "trace", None), "--trace")
    c.check_output_file(getattr(args, "trace_arrays", None), "--trace-arrays")
    info = c.check_video_path(args.video)
    c.check_time_range(info, args.start, args.end)
    from ..model.video import Sampling

    sampling = Sampling(fps=args.fps, max_frames=args.max_frames, start=args.start, end=args.end)
    return RunSettings(overrides, sampling, c.generation_options(args))


def _observer(args):
    if not (args.trace or args.trace_arrays):
        return None
    from ..model.observe import ParityObserver

    return ParityObserver(arrays=bool(args.trace_arrays))


def encode(args, lv, sampling, observer=None):
    """The video's features (from the cache when possible), with one line on stderr."""
    t0 = time.perf_counter()
    feats = lv.features(args.video, sampling, observer=observer)
    how = "from the feature cache" if feats.from_cache else "encoded"
    c.log(args, f"{c.plural(len(feats), 'frame')} sampled from {feats.num_frames_total} ({feats.avg_fps:.2f} fps, every "
                f"{feats.step}); {how} in {time.perf_counter() - t0:.1f}s")  # fmt: skip
    return feats
