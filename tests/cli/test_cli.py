"""The command line as a user meets it: help, one-line errors, checks before the model loads,
Ctrl-C and closed pipes on real processes, the chat prompt in a pseudo-terminal, the trace."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, QWEN

from longvu.cli.common import seconds
from longvu.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]

VIDEO = FIXTURES / "videos" / "video1.mp4"
LONGVU = [sys.executable, "-m", "longvu.cli"]
TINY = ["--model", str(QWEN), "--device", "cpu"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------- help


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)subcommand's parser by its prog, e.g. ``longvu eval videomme``."""
    parser, _ = build_parser(None)
    out, todo = {}, [parser]
    while todo:
        p = todo.pop()
        out[p.prog] = p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += list(a.choices.values())
    return out


def test_bare_longvu_prints_help(capsys):
    rc, out, err = run_cli(capsys)
    assert rc == 0 and out.startswith("usage: longvu") and "ask " in out and err == ""


def test_every_subcommand_help_has_examples_and_defaults():
    parsers = all_parsers()
    assert {"longvu ask", "longvu chat", "longvu serve", "longvu eval videomme", "longvu eval vniah",
            "longvu vniah", "longvu cache", "longvu plan"} <= set(parsers)  # fmt: skip
    for prog, p in parsers.items():
        text = p.format_help()
        assert "examples:\n  longvu " in text or "examples:\n  # " in text, prog
        for a in p._actions:
            valued = a.option_strings and a.nargs != 0 and a.default is not argparse.SUPPRESS and not a.required
            if valued:  # every option that takes a value says what it is when not given
                help_line = p._get_formatter()._expand_help(a) if a.help else ""
                assert "default" in help_line, f"{prog} {a.option_strings[0]}: {help_line!r}"


def test_ask_help_states_sampling_and_quick_start():
    text = all_parsers()["longvu ask"].format_help()
    first = text.split("examples:\n")[1].splitlines()[:3]  # a quick start that answers comes first
    assert first[0].startswith("  # an answer that is right: the model trained here")
    assert first[1] == "  longvu synth --out demo --n 1 --seed 5 --cast 1 --render plain -q"
    assert "--model models/longvu-synth-tiny --greedy" in first[2] and (ROOT / "models/longvu-synth-tiny").is_dir()
    assert "--max-new-tokens N" in text and "(default: 512)" in text
    text = " ".join(text.split())
    assert "temperature 0.7, top_p 0.8, top_k 20" in text  # the Qwen2 checkpoint's sampling, stated
    assert "--seed N" in text


def test_describe_says_its_prompt():
    assert "Describe this video in detail." in all_parsers()["longvu describe"].format_help()


# ------------------------------------------------------------------ argument errors


@pytest.mark.parametrize(
    "argv, prog, needle",
    [
        (["ask", VIDEO, "q", "--fsp", "2"], "longvu ask", "unrecognized option --fsp (did you mean --fps?)"),
        (["ask", VIDEO, "q", "--max-frame", "2"], "longvu ask", "did you mean --max-frames?"),  # no abbreviations
        (["ask", VIDEO, "q", "--max-frames", "0"], "longvu ask", "expected a positive integer, got '0'"),
        (["ask", VIDEO, "q", "--start", "1:75"], "longvu ask", "must be below 60"),
        (["chat", VIDEO, "--trace", "t.json"], "longvu chat", "unrecognized option --trace"),
        (["eval", "videomme", "--data", "d", "--out", "o", "--mode", "teacher"], "longvu eval videomme",
         "--mode is not an option of `longvu eval videomme` (it is one of `longvu eval vniah`)"),
        (["eval", "videome"], "longvu eval", "(did you mean videomme?)"),
        (["vniah", "generate", "--out", "v", "--depths", "2"], "longvu vniah", "expected a number in [0, 1], got '2'"),
        (["askk"], "longvu", "(did you mean ask?)"),
    ],
)  # fmt: skip
def test_argument_errors_are_one_line(capsys, argv, prog, needle):
    rc, out, err = run_cli(capsys, *argv)
    line = one_line(err)
    assert rc == 2 and out == ""
    assert line.startswith(f"{prog}: error: ") and line.endswith(f"(see `{prog} --help`)")
    assert needle in line


def test_times_in_seconds_mm_ss_and_hh_mm_ss():
    assert [seconds(s) for s in ("90", "90.5", "1:30", "01:02:03", "0:05")] == [90, 90.5, 90, 3723, 5]
    for bad in ("1:60", "abc", "1:2:3:4", "-5", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            seconds(bad)


# --------------------------------------------- checks made before the model loads
# A missing checkpoint is never reached: each of these fails on its own line first.


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "vision_hidden_size=7"], "--set vision_hidden_size: the connector's width, fixed by its weights"),
        (["--set", "dino_threshold=5"], "--set dino_threshold=5: must be in [0, 1.01]"),
        (["--set", "dino_window=0"], "--set dino_window=0: must be at least 1"),
        (["--set", "dino_treshold=0.5"], "unknown config key 'dino_treshold' (did you mean dino_threshold?)"),
        (["--trace", "/no/such/dir/t.json"], "--trace /no/such/dir/t.json: no such folder /no/such/dir"),
        (["--trace-arrays", "."], "--trace-arrays .: is a folder"),
        (["--start", "0:04", "--end", "0:02"], "--end (2s) must be after --start (4s)"),
        (["--start", "1:00"], "--start 60s (1:00) is past the end of the video"),
        (["--greedy", "--temperature", "0.5"], "--greedy cannot be combined with --temperature"),
    ],
)  # fmt: skip
def test_checked_before_loading(capsys, tmp_path, extra, needle):
    rc, _, err = run_cli(capsys, "ask", VIDEO, "q", "--model", tmp_path / "no-checkpoint", *extra)
    line = one_line(err)
    assert rc == 2 and line.startswith("longvu ask: error: ") and needle in line
    assert line.endswith(" (see `longvu ask --help`)")


def test_url_says_only_serve_fetches(capsys):
    rc, _, err = run_cli(capsys, "ask", "https://example.com/v.mp4", "q")
    assert rc == 2 and "only `longvu serve --allow-remote-urls` fetches URLs" in one_line(err)


def test_light_commands_do_not_import_torch(tmp_path):
    """--help, cache and argument errors start fast because nothing heavy is imported."""
    code = ("import sys\nfrom longvu.cli.main import main\n"
            "for argv in (['--help'], ['ask', '--help'], ['cache', 'info', '--cache-dir', sys.argv[1]],"
            " ['ask', 'v.mp4', 'q', '--fsp', '1'], ['ask', 'http://x/v.mp4', 'q']):\n"
            "    main(argv)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'av', 'numpy') if m in sys.modules))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stderr


# --------------------------------------------------------------- real processes


def start_answer(extra=()) -> subprocess.Popen:
    """``longvu ask`` streaming a long answer to a pipe, once its first bytes are out."""
    p = subprocess.Popen([*LONGVU, "ask", str(VIDEO), "Tell me everything.", *TINY, "--greedy", "--stream", "-q",
                          "--max-new-tokens", "4000", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert p.stdout.read(5), p.stderr.read().decode()
    return p


def test_sigint_during_generation_exits_130_with_one_line():
    p = start_answer()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert err.decode().splitlines() == ["longvu: interrupted"]  # no "terminate called", no "Aborted"


def test_closed_stdout_ends_quietly():
    """``longvu ask ... | head -c 5``: the reader goes away mid-answer."""
    p = start_answer()
    p.stdout.close()
    p.wait(timeout=60)
    assert p.returncode in (0, 141)
    assert p.stderr.read() == b""


# ----------------------------------------------------------- chat in a terminal


class Terminal:
    """A process on a pseudo-terminal: type into it and wait for what it writes."""

    def __init__(self, argv: list[str]) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so Ctrl-C sends it SIGINT
            os.execvpe(argv[0], argv, {**os.environ, "TERM": "dumb"})
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait_for(self, needle: str, timeout: float = 90) -> str:
        """Everything written since the last wait, up to and including ``needle``."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while needle.encode() not in self.seen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"waited for {needle!r}; got {self.seen[-500:]!r}")
            try:
                self.seen += os.read(self.fd, 4096)
            except OSError:  # the child closed the terminal
                raise AssertionError(f"exited before {needle!r}; got {self.seen[-500:]!r}") from None
        i = self.seen.index(needle.encode()) + len(needle)
        text, self.seen = self.seen[:i].decode("utf-8", "replace"), self.seen[i:]
        return text

    def exit_status(self) -> int:
        try:
            while os.read(self.fd, 4096):
                pass
        except OSError:
            pass
        os.close(self.fd)
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def chat(tmp_path, *extra) -> Terminal:
    t = Terminal([*LONGVU, "chat", str(VIDEO), *TINY, "--greedy", "--cache-dir", str(tmp_path), *extra])
    t.wait_for("/help lists the commands")
    t.wait_for("> ")
    return t


def test_chat_prompt_in_a_terminal(tmp_path):
    t = chat(tmp_path, "--max-new-tokens", "4000")
    t.type("\r")  # an empty line is ignored
    t.wait_for("> ")
    t.type("/hep\x1b[Dl\r")  # readline: left arrow, then insert -> /help
    assert "/reset           forget the conversation" in t.wait_for("> ")
    t.type("Tell me everything.\r")
    t.wait_for("Tell me everything.\r\n")  # the echo; then the answer streams
    t.wait_for(" ")  # some answer text
    t.type("\x03")  # Ctrl-C stops this answer only
    assert "(answer stopped; it is not kept in the conversation)" in t.wait_for("> ")
    t.type("/reset\r")
    assert "(the conversation was cleared)" in t.wait_for("> ")
    t.type("\x04")  # Ctrl-D: a clean newline and exit 0
    rest = t.wait_for("\n")
    assert rest.strip() == ""
    assert t.exit_status() == 0
    history = (tmp_path / "chat_history").read_text().splitlines()
    assert history[-3:] == ["/help", "Tell me everything.", "/reset"]


def test_chat_exit_command(tmp_path):
    t = chat(tmp_path, "--max-new-tokens", "2")
    t.type("exit\r")
    assert t.exit_status() == 0


# ------------------------------------------------------------------- reports


def test_trace_records_the_run_and_agrees_with_the_summary(capsys, tmp_path):
    from longvu.serve.openai import trace_summary

    path = tmp_path / "t.json"
    argv = ["ask", VIDEO, "What happens?", *TINY, "--greedy", "--max-new-tokens", "2", "--no-stream",
            "--set", "drop_threshold=0.7", "--trace", path]  # fmt: skip
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 0
    t = json.loads(path.read_text())
    run = t["run"]
    assert run["question"] == "What happens?" and run["model"] == str(QWEN) and run["version"]
    assert run["generation"]["greedy"] is True and run["config"]["drop_threshold"] == 0.7
    n_high = len(t["frames"]["high_res"])
    assert f"({n_high} at high resolution)" in err
    assert trace_summary(t)["high_res_indices"] == t["frames"]["high_res"]
    # the parity field keeps its reference meaning: frames upgraded by text-guided selection only
    # the parity field keeps its reference meaning: only frames that text-guided selection upgraded;
    # this short video fits at high resolution, no selection runs, and every kept frame is high-res
    assert t["selection"]["mix_token"] is False and t["selection"]["high_res_frames"] == []
    assert n_high == len(t["frames"]["kept"]) == 21
    assert len(path.read_text().splitlines()) == len(t) + 2  # one line per section
    assert run_cli(capsys, *argv)[0] == 0
    assert json.loads(path.read_text())["run"]["from_cache"] is True


def test_ask_through_a_running_server(capsys, qwen_model, tmp_path):
    from server_util import LiveServer

    from longvu.serve.app import create_app
    from longvu.serve.settings import ServerSettings

    ask = ["ask", VIDEO, "What happens?", "--greedy", "--max-new-tokens", "3", "--no-stream"]
    rc, local, _ = run_cli(capsys, *ask, *TINY)
    assert rc == 0
    uploads = tmp_path / "up"
    with LiveServer(create_app(qwen_model, ServerSettings(model_name="tiny", upload_dir=str(uploads)))) as srv:
        rc, remote, err = run_cli(capsys, *ask, "--server", srv.url)
        assert rc == 0 and remote == local  # the same answer, the video uploaded (no local paths allowed)
        assert "at high resolution" in err
        assert list(uploads.iterdir()) == []  # the upload was deleted afterwards
        rc, _, err = run_cli(capsys, *ask, "--server", srv.url, "--set", "drop_threshold=0.5")
        assert rc == 2 and "--set: not with --server" in one_line(err)
