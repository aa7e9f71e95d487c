"""Multi-turn chat: the session API and `longvu chat`."""

from __future__ import annotations

import io
import sys

from conftest import FIXTURES, QWEN
from test_generation import CountdownEvent  # a cancel event set after n checks

from longvu import GenerationOptions
from longvu.cli.main import main

VIDEO = FIXTURES / "videos" / "video1.mp4"
GREEDY = GenerationOptions(max_new_tokens=4, greedy=True)


def test_session_keeps_history_and_reuses_the_video(qwen_model):
    session = qwen_model.chat(VIDEO)
    a1 = session.ask("What is shown?", GREEDY)
    a2 = session.ask("And after that?", GREEDY)
    assert session.history == [
        ("user", "What is shown?"), ("assistant", a1.text), ("user", "And after that?"), ("assistant", a2.text)
    ]  # fmt: skip
    ids1, ids2 = a1.trace.data["prompt"]["input_ids"], a2.trace.data["prompt"]["input_ids"]
    # the second prompt starts like the first up to the first question and is longer
    q_end = ids1.index(1023, ids1.index(-200))  # <|im_end|> after the first question
    assert ids2[: q_end + 1] == ids1[: q_end + 1] and len(ids2) > len(ids1)
    assert ids2.count(-200) == 1
    # both turns used the same encoded video
    assert a1.trace.data["video"]["sampled_indices"] == a2.trace.data["video"]["sampled_indices"]
    text = qwen_model.model.tokenizer.decode([i for i in ids2 if i >= 0])
    assert "What is shown?" in text and "And after that?" in text and a1.text in text


def test_failed_turn_leaves_history_clean(qwen_model):
    session = qwen_model.chat(VIDEO)
    stream = session.ask_stream("Q", GREEDY)
    assert session.history == []  # nothing is recorded until the answer is complete
    list(stream)
    assert len(session.history) == 2
    session.reset()
    assert session.history == []


def test_ask_passes_cancel_through(qwen_model):
    session = qwen_model.chat(VIDEO)
    long = GenerationOptions(max_new_tokens=300, greedy=True)
    answer = session.ask("What is shown?", long, cancel=CountdownEvent(3))
    generation = answer.trace.data["generation"]
    assert generation["stopped_by"] == "cancelled" and 1 <= len(answer.token_ids) <= 4
    assert session.history == [("user", "What is shown?"), ("assistant", answer.text)]  # as ask_stream keeps it
    full = session.ask("And then?", GREEDY, cancel=CountdownEvent(10**6))  # an event never set changes nothing
    assert full.trace.data["generation"]["stopped_by"] != "cancelled" and len(session.history) == 4


def test_cli_chat_reads_questions_from_stdin(monkeypatch, capsys):
    lines = "What is shown?\n/reset\n\n   \nAnd then?\n/help\n/nonsense\nexit\nignored\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    rc = main(["chat", str(VIDEO), "--model", str(QWEN), "--device", "cpu", "--greedy", "--max-new-tokens", "3",
               "--quiet", "--no-stream"])  # fmt: skip
    assert rc == 0
    cap = capsys.readouterr()
    # two answers: empty lines are skipped, commands are handled here, `exit` ends the chat before "ignored"
    assert len(cap.out.strip().splitlines()) == 2
    assert "/reset           forget the conversation" in cap.err  # /help
    assert "unknown command /nonsense; /help lists the commands" in cap.err
