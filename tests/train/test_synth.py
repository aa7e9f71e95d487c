"""`longvu synth`: deterministic videos whose pixels carry the answers, and `longvu eval synthetic`."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import QWEN

from longvu.cli.main import main
from longvu.eval.benchmarks import load_items
from longvu.model.video import load_video
from longvu.train.synth import COLOURS, DIRECTIONS, SHAPES, WORDS, SynthSettings, describe, generate, make_video, render

SHORT = SynthSettings(seed=5, minutes=(0.2, 0.4), size=64, questions_per_video=6)


@pytest.fixture(scope="module")
def short_set(tmp_path_factory):
    """Four short videos (12-24 s), every family asked about each."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SHORT, 4)
    return out


def records(folder) -> list[dict]:
    return [json.loads(x) for x in (folder / "data.jsonl").read_text().splitlines()]


def colour_present(frame: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    """Whether ``frame`` holds a blob of ``rgb`` (object interiors keep their colour through H.264)."""
    dist = np.abs(frame.astype(int) - np.array(rgb)).sum(-1)
    return int((dist < 60).sum()) >= 12


def runs(flags: list[bool]) -> int:
    return sum(1 for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1]))


def test_same_seed_same_bytes(tmp_path, short_set):
    generate(tmp_path, SHORT, 4)
    assert (tmp_path / "data.jsonl").read_bytes() == (short_set / "data.jsonl").read_bytes()
    for rec in records(short_set)[::6]:
        assert (tmp_path / rec["video"]).read_bytes() == (short_set / rec["video"]).read_bytes()
    other = SynthSettings(seed=6, minutes=(0.2, 0.4), size=64, questions_per_video=6)
    assert make_video(other, 0)[0].shapes != make_video(SHORT, 0)[0].shapes or make_video(other, 0)[0].seconds != 12


def test_records_are_sft_lines_with_choices(short_set):
    recs = records(short_set)
    assert len(recs) == 24 and Counter(r["family"] for r in recs) == Counter(
        {f: 4 for f in ("word", "colour", "shape", "order", "count", "motion")}
    )
    for r in recs:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\nQuestion: " + r["question"])
        assert gpt == {"from": "gpt", "value": r["answer"]}
        assert r["options"][ord(r["answer"]) - 65] == r["answer_text"]
        assert all(f"({chr(65 + i)}) {o}\n" in human["value"] for i, o in enumerate(r["options"]))
        every = {
            "word": WORDS,
            "colour": COLOURS,
            "shape": SHAPES,
            "order": SHAPES,
            "count": "1234",
            "motion": DIRECTIONS,
        }
        assert r["options"] == list(every[r["family"]])  # options 'all': the family's values, in a fixed order
        assert 12 <= r["length"] - 2 and r["length"] <= 24 + 2 and r["evidence"]


def test_pixels_hold_the_answers(short_set):
    """Decode each video and read every answer back from its pixels."""
    by_video: dict[str, list[dict]] = {}
    for r in records(short_set):
        by_video.setdefault(r["video"], []).append(r)
    for video, recs in by_video.items():
        frames = load_video(str(short_set / video)).frames
        q = {r["family"]: r for r in recs}
        assert len(frames) == q["word"]["length"]
        plan, _ = make_video(SHORT, int(video[-10:-4]))
        needle = render(plan, SHORT.size)[q["word"]["evidence"][0]]
        like = [i for i, f in enumerate(frames) if np.abs(f.astype(int) - needle).mean() < 8]
        assert like == q["word"]["evidence"]  # the word frames, and only they, show the needle
        assert (np.median(needle.reshape(-1, 3), 0) == plan.word_style.paper).all()  # on its paper
        shape_q = q["shape"]
        colour = shape_q["question"].removeprefix("What shape was the ").removesuffix(" object?")
        seen = [colour_present(f, COLOURS[colour]) for f in frames]
        assert [i for i, s in enumerate(seen) if s] == shape_q["evidence"]
        count_q = q["count"]
        member = plan.shapes.index(count_q["question"].split(" the ")[1].removesuffix(" appear?"))
        flags = [colour_present(f, COLOURS[plan.colours[member]]) for f in frames]
        assert runs(flags) == int(count_q["answer_text"]) == plan.counts[member]


def test_motion_and_order_follow_the_plan():
    for index in range(6):
        plan, questions = make_video(SHORT, index)
        frames = render(plan, SHORT.size)
        mover = COLOURS[plan.colours[plan.mover]]
        app = next(a for a in plan.appearances if a.member == plan.mover)
        centres = []
        for i in plan.frames_of([app]):
            ys, xs = np.nonzero(np.abs(frames[i].astype(int) - np.array(mover)).sum(-1) < 10)
            centres.append((xs.mean(), ys.mean()))
        dx, dy = np.subtract(centres[-1], centres[0])
        expected = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        motion = next(q for q in questions if q.family == "motion")
        assert plan.direction == expected == motion.options[motion.answer]
        firsts = sorted((min(a.start for a in plan.appearances if a.member == m), m) for m in range(4))
        assert firsts[0][0] < firsts[1][0]  # one shape is strictly first


def test_answers_are_balanced():
    settings = SynthSettings(seed=0, minutes=(0.2, 0.3), size=64, families=("word", "colour", "shape", "order"),
                             options="four")  # fmt: skip
    letters = Counter(chr(65 + make_video(settings, i)[1][0].answer) for i in range(80))
    assert set(letters) == set("ABCD") and min(letters.values()) >= 12
    for i in range(40):  # four options: the cast's values (or the word and three others), shuffled
        plan, (q,) = make_video(settings, i)
        family_values = {"word": WORDS, "colour": plan.colours, "shape": plan.shapes, "order": plan.shapes}
        assert len(q.options) == 4 and set(q.options) <= set(family_values[q.family])
    words = Counter(make_video(SHORT, i)[0].word for i in range(80))
    assert set(words) == set(WORDS) and min(words.values()) >= 4  # all: the answer's letter is uniform too


def test_a_smaller_cast():
    one = SynthSettings(seed=2, minutes=(0.2, 0.5), size=64, questions_per_video=6, cast=1)
    counts = Counter()
    for index in range(24):
        plan, questions = make_video(one, index)
        assert len(plan.shapes) == len(plan.colours) == len(plan.counts) == 1 and plan.mover == 0
        assert len(plan.appearances) == plan.counts[0]
        frames = render(plan, one.size)
        seen = [colour_present(f, COLOURS[plan.colours[0]]) for f in frames]
        assert runs(seen) == plan.counts[0]  # each appearance is one run of frames showing the object
        q = {x.family: x for x in questions}
        assert q["colour"].options == list(COLOURS) and q["colour"].options[q["colour"].answer] == plan.colours[0]
        assert (
            q["count"].options == ["1", "2", "3", "4"] and int(q["count"].options[q["count"].answer]) == plan.counts[0]
        )
        for x in questions:  # with one object no question names its shape or colour (another question's answer)
            assert not {plan.shapes[0], plan.colours[0]} & set(x.text.rstrip("?").split())
        counts[plan.counts[0]] += 1
    assert set(counts) == {1, 2, 3, 4}  # the count question is not a constant with one object
    for index in range(12):  # a lone object is drawn about twice as large, always whole in the frame
        plan, _ = make_video(SynthSettings(seed=2, minutes=(0.2, 0.3), size=128, cast=1), index)
        assert 0.24 * 128 <= plan.radius <= 0.31 * 128
        masks = [np.abs(f.astype(int) - np.array(COLOURS[plan.colours[0]])).sum(-1) < 60 for f in render(plan, 128)]
        assert [k for k, m in enumerate(masks) if m.sum() > 500] == plan.frames_of(plan.appearances)  # large
        for mask in masks:  # no border row or column is the object's colour: it is never cut off
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    two = SynthSettings(seed=2, minutes=(0.2, 0.3), size=64, families=("colour", "shape"), options="four", cast=2)
    for index in range(12):
        plan, (q,) = make_video(two, index)
        values = plan.colours if q.family == "colour" else plan.shapes
        assert len(set(q.options)) == 4 and set(values) <= set(q.options)  # the cast's values, filled up to four
    usual = SynthSettings(seed=2, minutes=(0.2, 0.3), size=128, cast=1, object_scale=1.0)  # the size before
    for index in range(4):
        big, small = (
            make_video(SynthSettings(seed=2, minutes=(0.2, 0.3), size=128, cast=1), index)[0],
            make_video(usual, index)[0],
        )
        assert 0.13 * 128 <= small.radius <= 0.16 * 128 and big.radius == pytest.approx(small.radius * 1.9)
        assert (big.appearances, big.word) == (small.appearances, small.word) and not small.whole
    with pytest.raises(Exception, match="--object-scale must be between 0.5 and 2"):
        SynthSettings(seed=0, object_scale=3.0)
    with pytest.raises(Exception, match="--cast must be between 1 and 4"):
        SynthSettings(seed=0, cast=5)


def test_caption_says_what_the_questions_ask():
    for index in range(6):
        plan, questions = make_video(SHORT, index)
        text = describe(plan)
        q = {x.family: x for x in questions}
        assert f"The word {q['word'].options[q['word'].answer]}." in text
        members = [x for x in text.split(". ") if not x.startswith("The word")]
        assert f" {q['order'].options[q['order'].answer]}, " in members[0]  # the first to appear is named first
        for m in range(4):
            k = plan.counts[m]
            moving = f", moving {plan.direction}" if m == plan.mover else ""
            assert f"{plan.colours[m]} {plan.shapes[m]}, {k} time{'s' if k > 1 else ''}{moving}." in text


def test_synth_cli_and_bad_settings(tmp_path, capsys):
    out = str(tmp_path / "d")
    base = ["synth", "--out", out, "--n", "2", "--size", "64"]
    assert main([*base, "--seed", "3", "--minutes", "0.2", "0.2"]) == 0
    assert "wrote 2 videos and 2 questions" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "synth.json").read_text())["seed"] == 3
    for extra, message in [
        (["--seed", "4", "--minutes", "0.2", "0.2"], "holds a dataset made with other settings"),
        (["--minutes", "2", "1"], "--minutes needs 0 < MIN <= MAX"),
        (["--families", "word", "smell"], "--families takes distinct names"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--options", "two"], "argument --options: invalid choice"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("longvu synth: error: ") and message in err and err.count("\n") == 1, err
    assert main(["synth", "--out", str(tmp_path / "e"), "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_eval_synthetic(tmp_path, short_set):
    items = load_items("synthetic", short_set)
    recs = records(short_set)
    assert [i.qid for i in items] == [r["id"] for r in recs]
    first = items[0]
    assert first.prompt == recs[0]["conversations"][0]["value"].removeprefix("<image>\n")
    assert first.letters == list("ABCDEFGH") and first.answer == recs[0]["answer"] and first.category == "word"
    assert first.extra == {"duration": "short"}
    out = tmp_path / "out"
    argv = ["eval", "synthetic", "--data", str(short_set), "--out", str(out), "--model", str(QWEN), "--device", "cpu"]
    assert main([*argv, "--limit", "6", "--quiet"]) == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["answer"] for x in lines] == [r["answer"] for r in recs[:6]]
    assert all(x["correct"] == (x["pred"] == x["answer"]) and x["duration"] == "short" for x in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 6 and summary["accuracy"] == round(100 * sum(x["correct"] for x in lines) / 6, 2)
    assert set(summary["per_category"]) == {"word", "colour", "shape", "order", "count", "motion"}


def test_eval_synthetic_refuses_lines_without_choices(tmp_path, short_set, capsys):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "videos").symlink_to(short_set / "videos")
    lines = (short_set / "data.jsonl").read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["options"]
    (data / "data.jsonl").write_text("\n".join([lines[0], json.dumps(broken), *lines[2:4]]) + "\n")
    argv = ["eval", "synthetic", "--data", str(data), "--out", str(tmp_path / "o"), "--model", str(QWEN)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"longvu eval synthetic: error: {data / 'data.jsonl'}:2: 'options' must be a list of 2 to 26 strings "
        "(see `longvu eval synthetic --help`)\n"
    )
