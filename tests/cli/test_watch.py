"""``longvu watch``: a video on standard input from a pipe, questions from --ask; usage errors before loading."""

from __future__ import annotations

import subprocess
import sys

from conftest import QWEN
from live_util import write, writer_command

from longvu.cli.main import main

WATCH = [sys.executable, "-m", "longvu.cli", "watch", "--model", str(QWEN), "--device", "cpu"]


def test_watch_stdin_from_a_pipe(tmp_path):
    writer = subprocess.Popen(writer_command("-", 40, "--speed", "20"), stdout=subprocess.PIPE)
    try:
        watch = subprocess.run(
            [*WATCH, "-", "--ask", "What is happening?", "--every", "32", "--at-end", "--fps", "0.5",
             "--max-new-tokens", "3", "--greedy", "--no-stream"],
            stdin=writer.stdout, capture_output=True, text=True, timeout=300, start_new_session=True,
        )  # fmt: skip
    finally:
        writer.stdout.close()
        writer.wait(timeout=30)
    assert watch.returncode == 0, watch.stderr
    assert len(watch.stdout.strip().splitlines()) == 2  # one answer at 32 s of stream, one at the end
    assert "[seen 0s to 32s, lag " in watch.stderr
    assert "[seen 0s to 40s, lag 0.0s, stream ended]" in watch.stderr


def test_watch_stdin_needs_questions_without_a_terminal():
    # a new session has no controlling terminal: with the video on stdin there is nowhere to read questions from
    r = subprocess.run([*WATCH, "-"], input=b"", capture_output=True, timeout=120, start_new_session=True)
    assert r.returncode == 2
    assert b"no terminal for questions: give them with --ask" in r.stderr and b"Traceback" not in r.stderr


def test_watch_usage_errors(capsys, tmp_path):
    assert main(["watch", "-", "--every", "10"]) == 2
    assert "give at least one --ask" in capsys.readouterr().err
    assert main(["watch", str(tmp_path / "missing.ts"), "--ask", "q", "--model", str(QWEN), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "missing.ts: no such file" in err and "Traceback" not in err and "loading" not in err  # before the model
    assert main(["watch", str(tmp_path), "--ask", "q"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_watch_file_chat_from_stdin(tmp_path):
    path = tmp_path / "rec.ts"
    with open(path, "wb") as f:
        write(f, 40)
    r = subprocess.run(
        [*WATCH, str(path), "--fps", "0.5", "--idle-end", "0", "--max-new-tokens", "3", "--greedy", "--no-stream"],
        input="/status\nWhat is happening?\n/exit\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1  # one answer
    # a question before the first window waits for it; the file is never taken as finished (--idle-end 0)
    assert "(waiting for the first window of frames ...)\n[seen 0s to 32s, lag " in r.stderr
    assert "stream ended" not in r.stderr
