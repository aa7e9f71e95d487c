"""``longvu chat VIDEO``: a conversation about one video, encoded once.

At a terminal the prompt has line editing and a history (the standard library's
``readline``, where Python has it; the history file is ``chat_history`` in the cache
folder).  Ctrl-C stops the answer being written and the chat goes on; Ctrl-D, ``/exit``,
``exit`` or ``quit`` end it.  Questions can also come on stdin, one per line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import LongVUError
from . import common as c

COMMANDS = {"chat": "a conversation about a video (questions from the terminal or stdin)"}

HELP = """commands:
  /help            this list
  /reset           forget the conversation so far (the video stays encoded)
  /exit, /quit     end the chat (also: exit, quit, Ctrl-D)
  Ctrl-C           stop the answer being written"""


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help=COMMANDS["chat"],
                       description="A multi-turn conversation about one video: it is encoded once, and every "
                                   "question sees the earlier turns.\n\n" + HELP,
                       epilog=c.examples(
                           c.TINY_NOTE,
                           f"longvu chat {c.TINY_VIDEO} --model {c.TINY_MODEL}",
                           "longvu chat lecture.mp4 --device cuda --greedy",
                           "# questions from a file, one per line; the answers, one per line, on stdout",
                           "longvu chat lecture.mp4 --no-stream < questions.txt > answers.txt",
                       ))  # fmt: skip
    p.add_argument("video", help="a video file (mp4, mkv, webm, mov, ...)")
    c.add_model_options(p)
    c.add_sampling_options(p)
    c.add_generation_options(p)
    c.add_progress_options(p, p.add_argument_group("output"))


def run(args: argparse.Namespace) -> int:
    from .ask import encode, prepare

    settings = prepare(args)
    lv = c.load_model(args, settings.overrides, progress=not args.quiet and sys.stderr.isatty())
    session = lv.chat(encode(args, lv, settings.sampling))
    live = args.stream if args.stream is not None else sys.stdout.isatty()
    prompt = Prompt(history_file(args.cache_dir))
    if prompt.interactive:
        c.log(args, "ask about the video; /help lists the commands, Ctrl-D or /exit ends the chat")
    try:
        while (line := prompt.read()) is not None:
            question = line.strip()
            if not question:
                continue
            if question.lower() in ("exit", "quit") or question.startswith("/"):
                if not _command(args, question.lower(), session):
                    break
                continue
            _turn(args, session, question, settings.generation, live)
    finally:
        prompt.close()
    return 0


def _command(args, cmd: str, session) -> bool:
    """Run a chat command; False ends the chat."""
    if cmd in ("/exit", "/quit", "exit", "quit"):
        return False
    if cmd == "/reset":
        session.reset()
        c.log(args, "(the conversation was cleared)")
    elif cmd == "/help":
        print(HELP, file=sys.stderr, flush=True)
    else:
        print(f"longvu: unknown command {cmd}; /help lists the commands", file=sys.stderr, flush=True)
    return True


def _turn(args, session, question: str, generation, live: bool) -> None:
    """One question and its answer; Ctrl-C or a refused question ends only this turn."""
    try:
        c.print_answer(session.ask_stream(question, generation), live)
    except KeyboardInterrupt:
        c.SIGINT.rearm()
        sys.stdout.write("\n")
        sys.stdout.flush()
        c.log(args, "(answer stopped; it is not kept in the conversation)")
    except LongVUError as e:
        c.print_error(args, str(e))


def history_file(cache_dir: str | None) -> Path:
    """``chat_history`` in the cache folder (``--cache-dir``, ``$LONGVU_CACHE_DIR`` or ~/.cache/longvu)."""
    from ..pipeline.cache import default_cache_dir

    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "chat_history"


class Prompt:
    """Reads questions: with readline at a terminal (line editing, history), else plain lines from stdin.

    Python's ``input`` uses readline only when stdin and stdout are both terminals; otherwise the
    prompt goes to stderr, so stdout holds only answers.
    """

    def __init__(self, history: Path) -> None:
        self.interactive = sys.stdin.isatty()
        self.history = history
        self.readline = None
        if self.interactive and sys.stdout.isatty():
            try:
                import readline
            except ImportError:  # Python built without it (e.g. Windows): plain lines
                readline = None
            self.readline = readline
            self._load_history()

    def _load_history(self) -> None:
        self.readline.set_history_length(1000)
        try:
            self.readline.read_history_file(self.history)
        except OSError:  # none yet, or unreadable: start empty
            pass

    def read(self) -> str | None:
        """The next line, or None at the end of input (Ctrl-D)."""
        while True:
            try:
                if not self.interactive:
                    line = sys.stdin.readline()
                    return line if line else None
                if self.readline is not None:
                    return input("> ")
                sys.stderr.write("> ")
                sys.stderr.flush()
                return input()
            except EOFError:
                self._newline()
                return None
            except KeyboardInterrupt:  # at the prompt: drop the line, ask again
                c.SIGINT.rearm()
                self._newline()

    def _newline(self) -> None:
        (sys.stdout if self.readline is not None else sys.stderr).write("\n")

    def close(self) -> None:
        if self.readline is None:
            return
        try:
            self.history.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.readline.write_history_file(self.history)
            os.chmod(self.history, 0o600)
        except OSError:  # history is a convenience: never fail the chat over it
            pass
