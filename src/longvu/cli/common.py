"""What the ``longvu`` subcommands share: argument types, option groups, checks made before
the model loads, answer printing, and Ctrl-C handling.

Only the standard library and light longvu modules are imported here at module level:
building the parser must not import torch (``longvu --help`` stays fast).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from ..errors import LongVUError

# ------------------------------------------------------------------- argument types


def _number(s: str, what: str = "a number") -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
    return v


def number(s: str) -> float:
    return _number(s)


def positive_number(s: str) -> float:
    v = _number(s, "a positive number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def non_negative_number(s: str) -> float:
    v = _number(s, "a number >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}")
    return v


def fraction(s: str) -> float:
    """A number in [0, 1] (a share or a depth)."""
    v = _number(s, "a number in [0, 1]")
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s!r}")
    return v


def _integer(s: str, low: int, what: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
    return v


def positive_int(s: str) -> int:
    return _integer(s, 1, "a positive integer")


def non_negative_int(s: str) -> int:
    return _integer(s, 0, "an integer >= 0")


def port(s: str) -> int:
    v = _integer(s, 1, "a port number (1-65535)")
    if v > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {s!r}")
    return v


_TIME = re.compile(r"^(?:(\d+):)??(?:(\d+):)?(\d+(?:\.\d*)?|\.\d+)$")


def seconds(s: str) -> float:
    """A time in the video: ``90``, ``90.5``, ``1:30`` (mm:ss) or ``1:02:03`` (hh:mm:ss)."""
    m = _TIME.match(s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected seconds, mm:ss or hh:mm:ss, got {s!r}")
    hours, minutes, secs = m.group(1), m.group(2), float(m.group(3))
    if minutes is not None and secs >= 60 or hours is not None and int(minutes) >= 60:
        raise argparse.ArgumentTypeError(f"minutes and seconds after a ':' must be below 60, got {s!r}")
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + secs


def format_seconds(t: float) -> str:
    """``20.0333`` -> ``20s``, ``100`` -> ``100s (1:40)``: seconds, and mm:ss or hh:mm:ss past a minute."""
    text = f"{round(t, 1):g}s"
    if t < 60:
        return text
    m, sec = divmod(int(round(t)), 60)
    h, m = divmod(m, 60)
    return f"{text} ({h}:{m:02d}:{sec:02d})" if h else f"{text} ({m}:{sec:02d})"


def format_duration(t: float) -> str:
    """A duration for people: ``0.84 s``, ``5.2 s``, ``2 min 16 s``, ``1 h 02 min``."""
    if t < 1:
        return f"{t:.2f} s"
    if t < 60:
        return f"{t:.1f} s"
    m, sec = divmod(int(round(t)), 60)
    if m < 60:
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 video``, ``2 videos``, ``0 videos`` (``many`` for an irregular plural)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


# --------------------------------------------------------------------- help text


def examples(*lines: str) -> str:
    """An ``examples:`` epilog; a line starting with ``#`` is a comment above the next command."""
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


TINY_VIDEO = "tests/fixtures/parity/videos/video1.mp4"
TINY_MODEL = "tests/fixtures/parity/checkpoints/tiny-longvu-qwen2"
TINY_NOTE = "# plumbing only: the tiny test checkpoint (offline, a CPU, seconds); its answers are gibberish by design"
TRAINED_MODEL = "models/longvu-synth-tiny"
TRAINED_NOTE = ("# an answer that is right: the model trained here (in a clone; 21 MB, a CPU, seconds) names the word "
                "one frame of a synth video shows")  # fmt: skip
TRAINED_DEMO = "longvu synth --out demo --n 1 --seed 5 --cast 1 --render plain -q"
TRAINED_QUESTION = (
    "One frame of this video shows a single word in large letters. What is that word? Answer with the word only."
)
TRAINED_ASK = f'longvu ask demo/videos/s5_000000.mp4 "{TRAINED_QUESTION}" --model {TRAINED_MODEL} --greedy'


def sampling_defaults() -> str:
    """The released checkpoints' sampling settings, from their generation_config.json (presets)."""
    from ..loading.presets import PRESETS

    parts = []
    for name, p in PRESETS.items():
        g = p["generation_config"]
        knobs = ", ".join(f"{k} {g[k]}" for k in ("temperature", "top_p", "top_k") if k in g)
        parts.append(f"{name.split('/')[-1]}: {knobs}")
    return "; ".join(parts)


# ------------------------------------------------------------------ option groups


def add_model_options(p: argparse.ArgumentParser, *, runtime_set: bool = True) -> None:
    """--model, towers, device, dtype, --set, placement and the feature cache."""
    from ..config import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id")
    g.add_argument("--siglip", metavar="DIR", help="local folder of the SigLIP tower (default: <model>/vision_towers/siglip, then the hub)")  # fmt: skip
    g.add_argument("--dinov2", metavar="DIR", help="local folder of the DINOv2 tower (default: <model>/vision_towers/dinov2, then the hub)")  # fmt: skip
    add_adapter_option(g)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto: cuda, then mps, then cpu")  # fmt: skip
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: bfloat16 (or float16) on cuda, float16 on mps, float32 on cpu")  # fmt: skip
    add_set_option(g)
    add_placement_options(p.add_argument_group("quantization and placement (see `longvu plan`)"))
    add_cache_options(p)


def add_adapter_option(g) -> None:
    g.add_argument("--adapter", metavar="DIR",
                   help="a folder written by `longvu train` (LoRA and/or trained connector) to apply (default: none)")  # fmt: skip


def add_set_option(g, what: str = "a run-time config field") -> None:
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help=f"change {what}, e.g. --set drop_threshold=0.7 (repeatable; thresholds in [0, 1], 1.01 turns a stage off, "
                        "windows and caps positive; architecture fields such as image_token_len are refused)")  # fmt: skip


def add_cache_options(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("feature cache")
    c.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    c.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: $LONGVU_CACHE_DIR or ~/.cache/longvu)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("frames")
    s.add_argument("--fps", type=positive_number, default=1.0, help="frames sampled per second of video")
    s.add_argument("--max-frames", type=positive_int, metavar="N",
                   help="keep at most N sampled frames, evenly spaced (default: all)")  # fmt: skip
    s.add_argument("--start", type=seconds, metavar="TIME",
                   help="first moment of the video to use: seconds, mm:ss or hh:mm:ss (default: the beginning)")  # fmt: skip
    s.add_argument("--end", type=seconds, metavar="TIME", help="last moment of the video to use (default: the end)")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group(
        "generation",
        "Unless --greedy, answers are sampled with the checkpoint's generation_config.json ("
        + sampling_defaults()
        + "), so they vary from run to run: pass --seed N or --greedy for a repeatable answer.",
    )
    d.add_argument("--max-new-tokens", type=positive_int, default=512, metavar="N", help="answer length at most")
    d.add_argument("--greedy", action="store_true",
                   help="greedy decoding (the checkpoint's repetition_penalty still applies)")  # fmt: skip
    d.add_argument("--temperature", type=non_negative_number, metavar="T", help="sampling temperature; 0 means greedy (default: the checkpoint's)")  # fmt: skip
    d.add_argument(
        "--top-p", type=number, metavar="P", help="nucleus sampling threshold in (0, 1] (default: the checkpoint's)"
    )
    d.add_argument(
        "--top-k", type=positive_int, metavar="K", help="sample from the K likeliest tokens (default: the checkpoint's)"
    )
    d.add_argument(
        "--seed", type=non_negative_int, metavar="N", help="seed the sampler, for a repeatable answer (default: none)"
    )


def add_progress_options(p: argparse.ArgumentParser, group=None) -> None:
    g = group or p
    g.add_argument("--stream", dest="stream", action="store_true", default=None,
                   help="print the answer as it is generated (default when stdout is a terminal)")  # fmt: skip
    g.add_argument("--no-stream", dest="stream", action="store_false", help="print the answer when it is complete")
    g.add_argument("--quiet", "-q", action="store_true", help="nothing on stderr but errors")


# ----------------------------------------------------------- checks before loading


def check_generation_args(args) -> None:
    """Decoding options that cannot go together (before anything is imported or loaded)."""
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise LongVUError(f"--top-p must be in (0, 1], got {args.top_p:g}")
    sampling = args.temperature or args.top_p is not None or args.top_k is not None
    if args.greedy and sampling:
        raise LongVUError("--greedy cannot be combined with --temperature, --top-p or --top-k")


def generation_options(args):
    """:class:`~longvu.model.generation.GenerationOptions` from checked arguments (imports torch)."""
    from ..model.generation import GenerationOptions

    return GenerationOptions(max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                             top_p=args.top_p, top_k=args.top_k, seed=args.seed)  # fmt: skip


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_video_path(video: str):
    """The video argument probed (a :class:`~longvu.model.intake.MediaInfo`), or a one-line error."""
    if _URL.match(video):
        raise LongVUError(
            f"{video}: a URL; `longvu ask`, `describe` and `chat` read local files (download it first), "
            "only `longvu serve --allow-remote-urls` fetches URLs"
        )
    from ..model.intake import probe_video

    return probe_video(video)


def check_time_range(info, start: float | None, end: float | None) -> None:
    """``--start``/``--end`` against the video's length from its header (when the header has one)."""
    if start is not None and end is not None and end <= start:
        raise LongVUError(f"--end ({format_seconds(end)}) must be after --start ({format_seconds(start)})")
    length = info.duration if info.duration else (info.frames / info.avg_fps if info.frames else None)
    if length is not None and start is not None and start >= length:
        raise LongVUError(
            f"--start {format_seconds(start)} is past the end of the video ({format_seconds(length)} long)"
        )


def check_output_file(path: str | None, option: str) -> None:
    """A file we will write: its folder exists and is writable, and it is not a folder."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise LongVUError(f"{option} {path}: is a folder, expected a file name")
    _check_writable_folder(p.parent if str(p.parent) else Path("."), option, path)


def check_output_dir(path: str, option: str) -> None:
    """A folder we will create or write into: it is a folder, or its nearest existing parent is writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise LongVUError(f"{option} {path}: not a folder")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _check_writable_folder(existing, option, path)


def _check_writable_folder(folder: Path, option: str, path: str) -> None:
    if not folder.exists():
        raise LongVUError(f"{option} {path}: no such folder {folder}")
    if not folder.is_dir():
        raise LongVUError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LongVUError(f"{option} {path}: cannot write in {folder}")


# ------------------------------------------------------------------ running


def error_line(prog: str, message: str) -> str:
    """A user's mistake on one line: the (sub)command, the message, and where its options are explained."""
    return f"{prog}: error: {message} (see `{prog} --help`)"


def print_error(args, message: str) -> None:
    """:func:`error_line` on stderr, for the subcommand ``args`` were parsed for (``args.prog``)."""
    prog = getattr(args, "prog", None) or f"longvu {getattr(args, 'command', None) or ''}".strip()
    print(error_line(prog, message), file=sys.stderr, flush=True)


def log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def open_checkpoint(args, overrides: dict, question: str | None = None):
    """The checkpoint ``--model`` names, opened without torch (:mod:`longvu.loading.checkpoint`): a missing or
    malformed folder, and a ``question`` that cannot fit its context, fail here in about a second."""
    from ..loading.checkpoint import open_checkpoint as open_light
    from ..model.context import check_question

    ckpt = open_light(args.model, overrides)
    if question is not None:
        check_question(question, ckpt.tokenizer, ckpt.cfg)
    return ckpt


def check_devices(args) -> None:
    """``--device`` and ``--vision-device`` exist on this machine (imports torch, reads no weight)."""
    from ..model.devices import pick_device

    for device in (getattr(args, "device", "auto"), getattr(args, "vision_device", None)):
        if device and device not in ("auto", "cpu"):
            pick_device(device)


def load_model(args, overrides: dict, progress: bool, question: str | None = None):
    """The :class:`~longvu.LongVU` the arguments name (the slow step: every check comes before it,
    :func:`open_checkpoint` and :func:`check_devices` included, with ``question`` when one is known).

    The closing line says where the time went: imports (torch, transformers and the decoder's
    modeling module), the tokenizer (with the config and weight index), and the weights."""
    t0 = time.perf_counter()
    ckpt = open_checkpoint(args, overrides, question)
    t1 = time.perf_counter()
    check_devices(args)
    from ..loading.load import decoder_class
    from ..pipeline.api import LongVU
    from ..pipeline.cache import FeatureCache

    decoder_class(ckpt.cfg)
    t2 = time.perf_counter()
    log(args, f"loading {args.model} ...")
    lv = LongVU.from_pretrained(
        ckpt, device=args.device, dtype=args.dtype, siglip=args.siglip, dinov2=args.dinov2,
        overrides=overrides, cache=False if args.no_cache else FeatureCache(args.cache_dir), progress=progress,
        options=load_options(args), adapter=args.adapter,
    )  # fmt: skip
    t3 = time.perf_counter()
    dtype = str(lv.dtype).removeprefix("torch.")
    if lv.model.options.quantize:
        dtype += f", LLM {lv.model.options.quantize}"
    imports = ckpt.import_s + t2 - t1
    log(args, f"loaded in {format_duration(t3 - t0)} (imports {format_duration(imports)}, weights "
              f"{format_duration(t3 - t2)}, config and tokenizer {format_duration(t1 - t0 - ckpt.import_s)}) "
              f"on {lv.device} ({dtype})")  # fmt: skip
    return lv


def print_answer(stream, live: bool) -> None:
    """Write an :class:`~longvu.pipeline.api.AnswerStream` to stdout, piece by piece if ``live``.

    However the loop ends (the end of the answer, Ctrl-C, a closed stdout), the generation
    is stopped and its thread joined before this returns or raises.
    """
    pieces = iter(stream)
    try:
        if live:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for _ in pieces:
                pass
            sys.stdout.write(stream.answer.text + "\n")
        sys.stdout.flush()
    finally:
        pieces.close()


class SigintGuard:
    """Ctrl-C raises KeyboardInterrupt once; a second Ctrl-C before :meth:`rearm` ends the process.

    The first one lets the code unwind: the generation is cancelled and joined, and the
    command ends with one line (or, in ``chat``, only the answer stops).  A second one while
    that is under way (a long prefill does not look at the cancel flag) exits at once with 130.
    """

    def __init__(self) -> None:
        self.pending = False
        self.previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def rearm(self) -> None:
        self.pending = False

    def _handle(self, signum, frame) -> None:
        if self.pending:
            os.write(2, b"\nlongvu: interrupted\n")
            os._exit(130)
        self.pending = True
        raise KeyboardInterrupt


SIGINT = SigintGuard()


def add_placement_options(g) -> None:
    """Quantization and placement options (an argparse group)."""
    g.add_argument("--quantize", choices=["int8", "nf4", "int4"],
                   help="quantize the LLM's linear layers: int8 (bitsandbytes on CUDA, torchao on CPU), "
                        "nf4 or int4 (bitsandbytes, CUDA only)")  # fmt: skip
    g.add_argument(
        "--vision-device", choices=["cpu", "cuda", "mps"], help="device of the vision towers (default --device)"
    )
    g.add_argument("--vision-dtype", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the vision towers (default --dtype)")  # fmt: skip
    g.add_argument("--llm-gpu-memory", metavar="SIZE",
                   help="keep at most SIZE (e.g. 10GB) of LLM weights on the GPU, the rest in CPU RAM (slow)")  # fmt: skip


def load_options(args):
    """:class:`longvu.loading.load.LoadOptions` from parsed arguments."""
    from ..loading.load import LoadOptions

    gpu = getattr(args, "llm_gpu_memory", None) or None
    if gpu is not None:  # the planner's module only when it is needed (a cached `ask` does not import it)
        from ..loading.plan import parse_size

        gpu = parse_size(gpu)
    return LoadOptions(
        quantize=getattr(args, "quantize", None),
        vision_device=getattr(args, "vision_device", None),
        vision_dtype=getattr(args, "vision_dtype", None),
        llm_gpu_memory=gpu,
    )
