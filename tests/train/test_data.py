"""The training-data validator: every malformed line is refused with its line number."""

from __future__ import annotations

import json

import pytest

from longvu.cli.main import main
from longvu.train.data import DataError, load_examples, resolve_data


def turn(role: str, text: str) -> dict:
    return {"from": role, "value": text}


GOOD = {"id": "a", "video": "v.mp4", "conversations": [turn("human", "<image>\nWhat?"), turn("gpt", "B")]}

# (line, expected message fragment): one malformed line per case, after a good first line
BAD = [
    ('{"video": "v.mp4", "conversations": [', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({"conversations": GOOD["conversations"]}), "turn 1 holds <image>; a line with no 'video' is text-only"),
    (json.dumps({"video": "", "conversations": GOOD["conversations"]}), "'video' must be a non-empty string"),
    (json.dumps({"video": None, "conversations": GOOD["conversations"]}), "'video' must be a non-empty string"),
    (json.dumps({"video": "v.mp4"}), "'conversations' must be a non-empty list"),
    (json.dumps({"video": "v.mp4", "conversations": [turn("human", "<image>\nQ")]}), "the last turn is from 'human'"),
    (
        json.dumps({"video": "v.mp4", "conversations": [turn("gpt", "B"), turn("human", "<image>\nQ")]}),
        "turn 1 is from 'gpt', expected 'human'",
    ),  # fmt: skip
    (
        json.dumps({"video": "v.mp4", "conversations": [turn("human", "<image>\nQ"), turn("human", "Q2")]}),
        "turn 2 is from 'human', expected 'gpt'",
    ),  # fmt: skip
    (
        json.dumps({"video": "v.mp4", "conversations": [turn("human", "What?"), turn("gpt", "B")]}),
        "must hold <image> exactly once, found 0",
    ),  # fmt: skip
    (
        json.dumps({"video": "v.mp4", "conversations": [turn("human", "<image><image>Q"), turn("gpt", "B")]}),
        "must hold <image> exactly once, found 2",
    ),  # fmt: skip
    (
        json.dumps({"video": "v.mp4", "conversations": [turn("human", "<image>\nQ"), turn("gpt", "<image>")]}),
        "turn 2 holds <image>",
    ),  # fmt: skip
    (
        json.dumps({"video": "v.mp4", "conversations": [turn("human", "<image>\nQ"), turn("gpt", "  ")]}),
        "turn 2 (gpt) is empty",
    ),  # fmt: skip
    (
        json.dumps({"video": "v.mp4", "conversations": [turn("human", "<image>\n"), turn("gpt", "B")]}),
        "turn 1 (human) is empty",
    ),  # fmt: skip
    (
        json.dumps({"video": "v.mp4", "conversations": [{"from": "human"}, turn("gpt", "B")]}),
        "turn 1 must be an object with string fields 'from' and 'value'",
    ),  # fmt: skip
    (json.dumps({**GOOD, "id": "b", "video": "missing.mp4"}), "video missing.mp4 not found"),
    (json.dumps(GOOD), "duplicate id 'a' (first on line 1)"),
    (json.dumps({**GOOD, "id": True}), "'id' must be a string or an integer"),
]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"not decoded by the validator")
    return tmp_path


def test_good_lines(folder):
    multi = {"video": "v.mp4", "conversations": [turn("human", "<image>\nQ1"), turn("gpt", "A1"),
                                                  turn("human", "Q2"), turn("gpt", "A2")], "family": "x"}  # fmt: skip
    text = {"id": "t", "conversations": [turn("human", "Which is larger, 3 or 4?"), turn("gpt", "4")]}
    lines = [json.dumps(GOOD), "", json.dumps(multi), json.dumps(text)]
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    a, b, c = load_examples(folder)
    assert (a.id, a.line, a.video, a.prompt) == ("a", 1, folder / "v.mp4", "What?")
    assert (b.id, b.line, len(b.turns), b.extra) == ("line3", 3, 4, {"family": "x"})
    assert (c.id, c.line, c.video, c.prompt) == ("t", 4, None, "Which is larger, 3 or 4?")  # text-only


def test_every_bad_line_is_named(folder):
    path = folder / "train.jsonl"
    path.write_text("\n".join([json.dumps(GOOD)] + [line for line, _ in BAD]) + "\n")
    with pytest.raises(DataError) as info:
        load_examples(path)
    err = info.value
    assert err.total == len(BAD) and len(err.errors) == len(BAD)
    for k, (message, (_, expected)) in enumerate(zip(err.errors, BAD), start=2):
        assert message.startswith(f"{path}:{k}: ") and expected in message, (k, message)
    assert str(err) == f"{err.errors[0]} (and {len(BAD) - 1} more line(s) with errors; `longvu data check` lists them)"


def test_resolve_data(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    assert resolve_data(tmp_path) == tmp_path / "a.jsonl"
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(DataError, match=r"expected data.jsonl or a single .jsonl file, found 2 .jsonl files"):
        resolve_data(tmp_path)
    with pytest.raises(DataError, match="no examples"):
        load_examples(tmp_path / "a.jsonl")
    with pytest.raises(DataError, match="no such file or folder"):
        load_examples(tmp_path / "nope")


def test_video_root(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    (other / "data.jsonl").write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(DataError, match="data.jsonl:1: video v.mp4 not found"):
        load_examples(other)
    assert load_examples(other, video_root=folder)[0].video == folder / "v.mp4"
    assert load_examples(other, check_videos=False)[0].video == other / "v.mp4"


def test_data_check_cli(folder, capsys):
    (folder / "data.jsonl").write_text(json.dumps(GOOD) + "\n")
    assert main(["data", "check", str(folder)]) == 0
    assert capsys.readouterr().out.endswith("data.jsonl: 1 example, 1 answer to learn, 1 video: ok\n")
    (folder / "data.jsonl").write_text(json.dumps(GOOD) + "\n" + BAD[0][0] + "\n" + BAD[6][0] + "\n")
    assert main(["data", "check", str(folder)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{folder / 'data.jsonl'}:2: not valid JSON")
    assert err[1] == f"{folder / 'data.jsonl'}:3: the last turn is from 'human': nothing to learn from it"
    assert err[2] == "longvu data: error: 2 malformed lines (see `longvu data --help`)"
