"""``longvu watch SOURCE``: questions about a video while it is still being recorded or streamed.

SOURCE is a file still being written (MPEG-TS, Matroska/WebM, fragmented MP4) or ``-`` for
standard input.  Without ``--ask`` it is ``longvu chat`` over what has been seen so far: each
answer is preceded by a status line (the span it saw, the encoder's lag).  When the video
comes on standard input, questions are read from the terminal (``/dev/tty``); from a pipe
or a script use ``--ask`` with ``--every`` and/or ``--at-end``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import LongVUError
from . import chat
from . import common as c

COMMANDS = {"watch": "ask about a video while it is still being recorded or streamed"}

HELP = chat.HELP.replace("  /exit", "  /status         what has been seen so far, and the lag\n  /exit", 1)


def add_parser(sub) -> None:
    p = sub.add_parser("watch", help=COMMANDS["watch"],
                       description="Follow a video that is still growing (a recording, a stream) and answer "
                                   "questions over what has been seen so far.\n\n" + HELP,
                       epilog=c.examples(
                           "# a camera through ffmpeg, questions at the terminal",
                           "ffmpeg -i rtsp://camera/stream -an -f mpegts - | longvu watch -",
                           "# a recording still being written; the last 10 minutes only",
                           "longvu watch meeting.ts --horizon 600",
                           "# from a script: one question every minute of stream, and at the end",
                           'cat lecture.ts | longvu watch - --ask "What is on the board?" --every 60 --at-end',
                       ))  # fmt: skip
    p.add_argument("source", help="a growing video file (ts, mkv/webm, fragmented mp4), or - for standard input")
    c.add_model_options(p)
    f = p.add_argument_group("following")
    f.add_argument("--fps", type=c.positive_number, default=1.0, help="frames sampled per second of video")
    f.add_argument("--horizon", type=c.seconds, metavar="TIME",
                   help="answer over the last TIME only; older features are deleted (default: everything seen)")  # fmt: skip
    f.add_argument("--idle-end", type=c.non_negative_number, metavar="SECONDS",
                   help="a file that has not grown for this long is taken as finished; 0: never "
                        "(default: 30; standard input ends at its end of file)")  # fmt: skip
    q = p.add_argument_group("questions without a prompt")
    q.add_argument("--ask", action="append", default=[], metavar="QUESTION",
                   help="a question to answer (repeatable); answers go to stdout, each after a status line on stderr")  # fmt: skip
    q.add_argument("--every", type=c.seconds, metavar="TIME", help="ask the --ask questions each TIME of stream seen")
    q.add_argument("--at-end", action="store_true", help="ask the --ask questions when the stream has ended (the "
                                                         "default when --every is not given)")  # fmt: skip
    c.add_generation_options(p)
    c.add_progress_options(p, p.add_argument_group("output"))


def run(args: argparse.Namespace) -> int:
    from ..config import check_set_options

    c.check_generation_args(args)
    overrides = check_set_options(args.overrides)
    if (args.every is not None or args.at_end) and not args.ask:
        raise LongVUError("--every and --at-end say when to ask the --ask questions: give at least one --ask")
    if args.every is not None and args.every <= 0:
        raise LongVUError("--every must be a positive time")
    if any(not q.strip() for q in args.ask):
        raise LongVUError("a question given with --ask is empty")
    questions = None if args.ask else _terminal(args)
    source = _source(args)  # a missing file or a directory fails before the model loads
    try:
        lv = c.load_model(args, overrides, progress=False)
    except BaseException:
        source.close()
        raise
    with _watch(args, lv, source) as live:
        if questions is None:
            _ask_when(args, live, c.generation_options(args))
        else:
            _chat(args, live, c.generation_options(args), questions)
    return 0


def _terminal(args):
    """Where chat questions come from: stdin, or the terminal when stdin is the video."""
    if args.source != "-":
        return sys.stdin
    try:
        return open("/dev/tty", encoding="utf-8")  # noqa: SIM115 (kept open for the session)
    except OSError:
        raise LongVUError(
            "the video comes on standard input and there is no terminal for questions: give them with --ask"
        ) from None


def _source(args):
    from ..model.live import FollowOptions, LiveSource

    idle = FollowOptions().idle_end_s if args.idle_end is None else (args.idle_end or None)
    follow = FollowOptions(idle_end_s=idle)
    if args.source == "-":
        if sys.stdin.isatty():
            raise LongVUError("standard input is a terminal: pipe the video into `longvu watch -`")
        return LiveSource.open_stream(sys.stdin.buffer, "<stdin>", follow)
    return LiveSource.open_file(args.source, follow)


def _watch(args, lv, source):
    from ..model.video import Sampling

    live = lv.watch(source, sampling=Sampling(fps=args.fps), horizon_s=args.horizon)
    c.log(args, f"following {'standard input' if args.source == '-' else args.source}")
    return live


def status_line(st: dict) -> str:
    """``[seen 0s-1m04s, lag 3.2s, behind: 12 frames skipped]`` for the answer that follows."""
    span = st["covered_s"]
    seen = "nothing seen yet" if span is None else f"seen {c.format_seconds(span[0])} to {c.format_seconds(span[1])}"
    parts = [seen, f"lag {st['lag_s']:.1f}s"]
    if st["dropped_frames"]:
        parts.append(f"{st['dropped_frames']} frames skipped to keep up")
    if st["ended"]:
        parts.append("stream ended" + (f" ({st['error']})" if st["error"] else ""))
    return "[" + ", ".join(parts) + "]"


def _ask_when(args, live, generation) -> None:
    """The --ask questions at each --every of stream seen, and/or at the end."""
    at_end = args.at_end or args.every is None
    if args.every is not None:
        mark = args.every
        while live.wait(mark):
            if live.status()["seen_s"] < mark:  # ended before this mark
                break
            _ask_all(args, live, generation)
            mark = (live.status()["seen_s"] // args.every + 1) * args.every
    live.wait()
    st = live.status()
    if st["covered_s"] is None:
        raise LongVUError(st["error"] or "the stream ended before a window of frames was encoded")
    if at_end:
        _ask_all(args, live, generation)


def _ask_all(args, live, generation) -> None:
    for question in args.ask:
        c.log(args, status_line(live.status()))
        c.print_answer(live.ask_stream(question, generation=generation), bool(args.stream))


def _chat(args, live, generation, questions) -> None:
    """``longvu chat``'s loop over the live session, a status line before each answer."""
    session = live.chat()
    stdin, sys.stdin = sys.stdin, questions  # the chat prompt reads sys.stdin
    prompt = chat.Prompt(chat.history_file(args.cache_dir))
    stream = args.stream if args.stream is not None else sys.stdout.isatty()
    if prompt.interactive:
        c.log(args, "ask about what has been seen so far; /help lists the commands, Ctrl-D or /exit ends")
    try:
        while (line := prompt.read()) is not None:
            question = line.strip()
            if question.lower() == "/status":
                c.log(args, status_line(live.status()))
            elif question.lower() == "/help":
                print(HELP, file=sys.stderr, flush=True)
            elif question.lower() in ("exit", "quit") or question.startswith("/"):
                if not chat._command(args, question.lower(), session):
                    break
            elif question:
                if live.status()["covered_s"] is None:
                    c.log(args, "(waiting for the first window of frames ...)")
                    live.wait(1e-9)
                c.log(args, status_line(live.status()))
                chat._turn(args, session, question, generation, stream)
    finally:
        prompt.close()
        sys.stdin = stdin
        if questions is not stdin:
            questions.close()
