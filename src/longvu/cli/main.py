"""The ``longvu`` command line: a registry of subcommand modules.

Each module named in :data:`COMMAND_MODULES` (``longvu/cli/<name>.py``) provides:

* ``COMMANDS``: ``{name: one-line help}``, the subcommands it adds (``longvu --help`` lists them);
* ``add_parser(subparsers)``: adds those subcommands with ``subparsers.add_parser(name, help=...,
  description=..., epilog=cli_common.examples(...))``, a help string on every option (the
  formatter shows defaults).  It is called only when one of its subcommands runs;
* ``run(args) -> int``: runs the parsed command (``args.command`` says which) and returns the
  exit status.

To add ``longvu train``: write ``cli/train.py`` with those three names and add ``"train"``
below.  Module-level imports must stay light (the standard library, ``cli_common``, ``errors``,
``config``): importing every registered module is what ``longvu --help`` costs, so torch and
transformers are imported inside ``run``.  Report the user's mistakes by raising
:class:`~longvu.errors.LongVUError`: :func:`main` prints it on one line and exits 2, in the
argument parser's format, ``longvu ask: error: ... (see `longvu ask --help`)`` (``args.prog``
is the subcommand's name; :func:`cli_common.print_error` writes such a line for a command
that goes on after an error).  It also turns Ctrl-C into one line and exit 130, and a
closed stdout into a quiet exit 141.

The answer goes to stdout; progress and diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys

from ..errors import LongVUError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `cmd | head`

COMMAND_MODULES = ("ask", "chat", "watch", "serve", "eval", "plan", "synth", "train", "cache")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default shown unless its help says it; indented lines (examples) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.split("\n\n")
        return "\n\n".join(p if "\n " in p or p.endswith(":") or p.startswith(("examples:", "commands:"))
                           else super(HelpFormatter, self)._fill_text(p, width, indent) for p in paragraphs)  # fmt: skip

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.required or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
            return text
        if action.default is None or action.default == []:
            return text + " (default: none)"
        if isinstance(action.default, list):
            return text + " (default: " + " ".join(str(v) for v in action.default) + ")"
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point to ``--help``, and no option abbreviations."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        from .common import error_line

        message = " ".join(message.split())
        self.exit(EXIT_USAGE, error_line(self.prog, message + _did_you_mean(self, message)) + "\n")

    def unknown(self, extras: list[str]) -> None:
        """Refuse arguments no option took, naming the nearest option or the subcommand that has it."""
        opt = next((a.split("=", 1)[0] for a in extras if a.startswith("-")), None)
        if opt is None:
            self.error(f"unexpected argument(s): {' '.join(extras)}")
        owners = [p.prog for p in _subparsers_of(_root(self)) if p is not self and opt in p._option_string_actions]
        if owners:
            self.error(f"{opt} is not an option of `{self.prog}` (it is one of `{'`, `'.join(owners)}`)")
        self.error(f"unrecognized option {opt}")


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    if message.startswith("unrecognized option "):
        near = _close_option(parser, message.split()[-1])
        return f" (did you mean {near}?)" if near else ""
    if "invalid choice:" in message:
        word = message.split("invalid choice:", 1)[1].split("(", 1)[0].strip().strip("'")
        choices = [c for a in parser._actions if a.choices for c in a.choices]
        near = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
        return f" (did you mean {near[0]}?)" if near else ""
    return ""


def _close_option(parser: argparse.ArgumentParser, opt: str) -> str | None:
    near = difflib.get_close_matches(opt, [o for o in parser._option_string_actions if o.startswith("--")], n=1)
    return near[0] if near else None


def _subparsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                out += [p, *_subparsers_of(p)]
    return out


def _root(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return getattr(parser, "_longvu_root", parser)


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> tuple[Parser, dict[str, object]]:
    """The parser, and which module runs each subcommand.

    Only the module of the subcommand in ``argv`` builds its full parser (``argv`` None: all of
    them); the others are listed by name and help, so ``longvu --help`` imports nothing heavy.
    """
    from .. import __version__

    parser = Parser(prog="longvu", description="Answer questions about long videos with LongVU (ICML 2025).",
                    epilog="examples:\n  longvu ask VIDEO QUESTION                          (the released 7B model)\n"
                           "  longvu synth --out demo --n 1 --seed 5 --cast 1 --render plain -q\n"
                           "  longvu ask demo/videos/s5_000000.mp4 \"One frame of this video shows a single word in large letters. "
                           "What is that word? Answer with the word only.\" --model models/longvu-synth-tiny --greedy\n"
                           "                                     (the model trained here, in a clone: it prints RIVER)\n"
                           "  longvu COMMAND --help              (each command's options and examples)")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"longvu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    wanted = None if argv is None else _command_of(argv)
    owners: dict[str, object] = {}
    for name in COMMAND_MODULES:
        module = importlib.import_module(f".{name}", __package__)
        owners.update(dict.fromkeys(module.COMMANDS, module))
        if argv is None or wanted in module.COMMANDS:
            module.add_parser(sub)
        else:
            for cmd, text in module.COMMANDS.items():
                sub.add_parser(cmd, help=text, add_help=False)
    for p in _subparsers_of(parser):
        p._longvu_root = parser
    return parser, owners


def parse(argv: list[str]) -> tuple[argparse.Namespace, object]:
    """Parse ``argv``; argument errors exit 2 with one line (SystemExit)."""
    parser, owners = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        _deepest(parser, args).unknown(extras)
    if args.command is None:
        parser.print_help()
        raise SystemExit(0)
    args.prog = _deepest(parser, args).prog  # "longvu ask", "longvu eval videomme": what its errors name
    return args, owners[args.command]


def _deepest(parser: Parser, args: argparse.Namespace) -> Parser:
    """The parser of the (sub)subcommand that ran, for its error messages."""
    current = parser
    for dest in ("command", "benchmark", "action"):
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction) and action.dest == dest and getattr(args, dest, None):
                current = action.choices[getattr(args, dest)]
    return current


def main(argv: list[str] | None = None) -> int:
    """Run ``longvu`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from .common import SIGINT, print_error

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, module = parse(argv)
    except SystemExit as e:  # --help, --version, or an argument error already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    _setup_logging(bool(getattr(args, "quiet", False)))
    SIGINT.install()
    try:
        return module.run(args)
    except LongVUError as e:
        print_error(args, str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:  # the generation thread was cancelled and joined on the way here
        newline = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C
        print(f"{newline}longvu: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:  # an internal error: one line, traceback on request
        if os.environ.get("LONGVU_DEBUG"):
            raise
        print(f"{args.prog}: internal error: {type(e).__name__}: {e} (set LONGVU_DEBUG=1 for a traceback)",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        SIGINT.restore()
        SIGINT.rearm()


def _silence_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so the exit flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (a test's capture)
        pass


class _StderrHandler(logging.Handler):
    """Writes each record as one ``longvu: ...`` line to whatever ``sys.stderr`` is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"longvu: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # logging must never fail the command
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    """Our own warnings (e.g. a corrupt cache entry) on stderr; other libraries' logging is left alone."""
    log = logging.getLogger("longvu")
    handler = next((h for h in log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        log.addHandler(handler)
    handler.setLevel(logging.ERROR if quiet else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
