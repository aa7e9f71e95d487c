"""The evaluation harness on fabricated datasets in each benchmark's published layout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, QWEN

from longvu.cli.main import main
from longvu.errors import LongVUError
from longvu.eval.answers import parse_choice
from longvu.eval.benchmarks import PRESETS, load_items
from longvu.eval.runner import RESULTS, markdown, read_results, summarize, write_egoschema_submission
from longvu.loading.checkpoint import folder_fingerprint

VIDEO = FIXTURES / "videos" / "video3.mp4"


# ---------------------------------------------------------------- pure logic
@pytest.mark.parametrize(
    "text,expected",
    [("B", "B"), ("(C)", "C"), ("D. a cat", "D"), ("The answer is A", "A"), ("Answer: (B) two", "B"),
     ("option C", "C"), ("A or B", None), ("", None), ("E", None), ("riri titi", None), ("answer: b", None)],
)  # fmt: skip
def test_parse_choice(text, expected):
    assert parse_choice(text, list("ABCD")) == expected


# The original scripts' frame rules, restated from eval_videomme.py, eval_mlvu.py /
# eval_egoschema.py and eval_mvbench.py (decord's len(vr) and get_avg_fps() as n and fps).
def original_videomme(n: int, avg_fps: float) -> list[int]:
    fps = round(avg_fps)
    return list(range(0, n, round(fps / 0.5)))


def original_mlvu_egoschema(n: int, avg_fps: float) -> list[int]:
    idx = original_videomme(n, avg_fps)
    return [idx[i] for i in range(0, len(idx), len(idx) // 1000)] if len(idx) > 1000 else idx


def original_mvbench(n: int, fps: float, bound) -> list[int]:
    if not bound:
        return list(range(0, n, round(fps / 2)))
    return list(range(max(0, round(bound[0] * fps)), min(round(bound[1] * fps), n - 1), round(fps / 2)))


def original_mvbench_folder(n_files: int, bound) -> list[int]:
    start, end = bound if bound else (-100000, 100000)
    return list(range(max(1, round(start * 3)), min(round(end * 3), n_files), round(3 / 2)))


TOTALS = [1, 2, 3, 59, 60, 61, 62, 299, 300, 301, 2001, 3001, 4321, 60000, 60001, 123457]
FPS = [2.5, 3.0, 12.5, 15.0, 23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0]
BOUNDS = [None, (0.0, 5.0), (1.0, 3.0), (2.3, 7.9), (0.5, 1000.0), (4.2, 4.4), (13.0, 14.5)]


def test_frame_rules_equal_the_original_scripts():
    for n in TOTALS:
        for fps in FPS:
            assert PRESETS["videomme"].frame_indices(n, fps) == original_videomme(n, fps), (n, fps)
            assert PRESETS["mlvu"].frame_indices(n, fps) == original_mlvu_egoschema(n, fps), (n, fps)
            assert PRESETS["egoschema"].frame_indices(n, fps) == original_mlvu_egoschema(n, fps), (n, fps)
            for bound in BOUNDS:
                want = original_mvbench(n, fps, bound)
                got = PRESETS["mvbench"].frame_indices(n, fps, bound)
                # where the script's range is empty it crashes (np.stack of nothing); we take one frame
                assert got == want if want else len(got) == 1, (n, fps, bound)
        for bound in BOUNDS:
            want = original_mvbench_folder(n, bound)
            if want:
                assert PRESETS["mvbench"].folder_indices(n, bound) == want, (n, bound)


def test_frame_rules_worked_examples():
    # VideoMME: round(fps) first, then every round(fps / 0.5) frames
    assert PRESETS["videomme"].frame_indices(200, 29.97) == [0, 60, 120, 180]
    # MLVU/EgoSchema: more than 1000 -> strided by len // 1000 (which can leave more than 1000)
    assert len(PRESETS["mlvu"].frame_indices(3000, 1.0)) == 1500
    assert len(PRESETS["egoschema"].frame_indices(5000, 1.0)) == 1250
    # MVBench: float fps, step round(fps / 2), [start, end) bound capped at the last frame
    assert PRESETS["mvbench"].frame_indices(1000, 30.0, (1.0, 3.0)) == [30, 45, 60, 75]
    # unbounded: range(0, len, step), so the last frame is taken when the step lands on it
    assert PRESETS["mvbench"].frame_indices(61, 30.0) == [0, 15, 30, 45, 60]
    assert PRESETS["mvbench"].folder_indices(30, (1.0, 4.0)) == [3, 5, 7, 9, 11]
    assert PRESETS["mvbench"].folder_indices(9, None) == [1, 3, 5, 7]


def test_every_preset_honours_sample_fps_and_max_frames():
    import dataclasses

    from longvu.model.video import Sampling, sampled_indices

    for name, preset in PRESETS.items():
        faster = dataclasses.replace(preset, sample_fps=1.0)
        assert faster.frame_indices(300, 30.0) == list(range(0, 300, 30)), name
        strided = dataclasses.replace(preset, sample_fps=1.0, stride_to=4)
        assert strided.frame_indices(300, 30.0) == [0, 60, 120, 180, 240], name  # 10 -> every 10 // 4 = 2nd
        capped = dataclasses.replace(preset, sample_fps=1.0, max_frames=4)
        assert capped.frame_indices(300, 30.0) == [0, 60, 150, 210], name  # at most 4, evenly spaced (as ask)
    # one meaning of --max-frames N: eval keeps exactly the frames ask keeps, never more than N
    for total, n in [(10, 4), (176, 64), (3000, 1000), (7, 7), (5, 9)]:
        capped = dataclasses.replace(PRESETS["synthetic"], max_frames=n)
        asked = sampled_indices(total, 1.0, Sampling(fps=1.0, max_frames=n))
        assert capped.frame_indices(total, 1.0) == asked and len(asked) == min(n, total), (total, n)
    mvb = dataclasses.replace(PRESETS["mvbench"], sample_fps=1.0)
    assert mvb.frame_indices(1000, 30.0, (1.0, 3.0)) == [30, 60]
    assert mvb.folder_indices(30, (1.0, 4.0)) == [3, 6, 9]
    with pytest.raises(LongVUError, match="sample-fps must be positive"):
        dataclasses.replace(PRESETS["mvbench"], sample_fps=0.0)


def test_mlvu_headline_is_the_mean_of_task_accuracies():
    def row(qid, task, correct):
        return {"qid": qid, "category": task, "answer": "A", "pred": "A" if correct else "B", "correct": correct,
                "unparseable": False, "error": None}  # fmt: skip

    rows = [row("c0", "count", True)] + [row(f"n{i}", "needle", i == 0) for i in range(4)]
    s = summarize("mlvu", rows)
    # eval_mlvu.py: the mean of per-task accuracies, (100 + 25) / 2, not 2 of 5 pooled
    assert s["accuracy"] == 62.5 and s["accuracy_pooled"] == 40.0 and s["headline"] == "mean of the per-task accuracies"
    md = markdown("mlvu", s)
    assert "| all questions pooled | 5 | 40.0 |" in md and "| **mean of the 2 tasks** | 5 | **62.5** |" in md
    # the other three scripts pool all questions
    s = summarize("mvbench", rows)
    assert s["accuracy"] == 40.0 and s["accuracy_category_mean"] == 62.5


def test_summary_scoring_exact():
    rows = [
        {"qid": "1", "category": "short", "answer": "A", "pred": "A", "correct": True, "unparseable": False, "error": None, "task_type": "x"},
        {"qid": "2", "category": "short", "answer": "B", "pred": None, "correct": False, "unparseable": True, "error": None, "task_type": "x"},
        {"qid": "3", "category": "long", "answer": "C", "pred": "C", "correct": True, "unparseable": False, "error": None, "task_type": "y"},
        {"qid": "4", "category": "long", "answer": "D", "pred": "A", "correct": False, "unparseable": False, "error": None, "task_type": "y"},
        {"qid": "5", "category": "long", "answer": None, "pred": "A", "correct": False, "unparseable": False, "error": None, "task_type": "y"},
    ]  # fmt: skip
    s = summarize("videomme", rows)
    assert s["accuracy"] == 50.0 == s["accuracy_pooled"] and s["scored"] == 4 and s["questions"] == 5
    assert s["per_category"] == {"long": {"accuracy": 50.0, "n": 2}, "short": {"accuracy": 50.0, "n": 2}}
    assert s["per_task_type"]["x"] == {"accuracy": 50.0, "n": 2}
    assert s["unparseable"] == 1 and s["unparseable_qids"] == ["2"]
    md = markdown("videomme", s)
    assert "| long | 2 | 50.0 |" in md and "| **overall** | 4 | **50.0** |" in md


def test_egoschema_csv(tmp_path):
    write_egoschema_submission([{"qid": "u1", "pred": "C"}, {"qid": "u2", "pred": None}], tmp_path / "s.csv")
    assert list(csv.reader(open(tmp_path / "s.csv"))) == [["q_uid", "answer"], ["u1", "2"], ["u2", "-1"]]


def test_torn_last_line_is_dropped(tmp_path):
    p = tmp_path / RESULTS
    p.write_text(json.dumps({"qid": "a"}) + "\n" + '{"qid": "b", "ans')
    assert list(read_results(p)) == ["a"]
    assert p.read_text() == json.dumps({"qid": "a"}) + "\n"


@pytest.mark.parametrize(
    "bad",
    [b'{"qid": "b", "ans', b"\xff\xfe not utf-8", b'{"qid": "\xc3"}', b'{"qid": 7, "answer": "A"}',
     b'{"qid": ["x"]}', b'{"qid": {"a": 1}}', b'{"qid": null}', b'{"answer": "A"}', b"[1, 2]", b'"qid"',
     b"[" * 100_000, b"", b"NaN"],
)  # fmt: skip
def test_corrupt_lines_are_set_aside_and_resume_goes_on(tmp_path, bad, caplog):
    """Any line that is not a whole result (torn, bad UTF-8, a qid that is no string, no qid): set aside, warned."""
    from longvu.eval.runner import RESULT_FIELDS

    p = tmp_path / RESULTS
    full = {k: None for k in RESULT_FIELDS}
    good = [json.dumps({**full, "qid": q}).encode() for q in ("a", "c")]
    p.write_bytes(good[0] + b"\n" + bad + b"\n" + good[1] + b"\n" + json.dumps({"qid": "d"}).encode() + b"\n")
    with caplog.at_level("WARNING", logger="longvu"):
        done = read_results(p, RESULT_FIELDS)
    assert list(done) == ["a", "c"]  # "d" lacks the fields a summary reads: set aside too
    assert p.read_bytes() == good[0] + b"\n" + good[1] + b"\n"
    aside = list(tmp_path.glob(RESULTS + ".corrupt-*"))
    assert len(aside) == 1 and json.dumps({"qid": "d"}).encode() in aside[0].read_bytes()
    assert (bad in aside[0].read_bytes()) and "set aside" in caplog.text
    assert read_results(p, RESULT_FIELDS).keys() == {"a", "c"}  # stable: nothing more to set aside


@pytest.mark.parametrize("name", [".lock", RESULTS])
def test_no_symlink_is_followed_in_the_results_folder(tmp_path, name):
    """A link planted as the lock or the results file: refused in one line, its target untouched."""
    from longvu.eval.store import ResultWriter, exclusive

    out, target = tmp_path / "o", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me\n")
    (out / name).symlink_to(target)
    with pytest.raises(LongVUError, match="symbolic link"):
        if name == ".lock":
            with exclusive(out):
                pass
        else:
            read_results(out / name)
    if name == RESULTS:
        with pytest.raises(LongVUError, match="symbolic link"):
            ResultWriter(out / name)
    os.mkfifo(out / "fifo")
    with pytest.raises(LongVUError, match="not a regular file"):
        read_results(out / "fifo")  # a FIFO would block the open
    assert target.read_text() == "keep me\n"


# ---------------------------------------------------------------- fabricated datasets
def make_videomme(root: Path, missing: bool = False) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "videomme").mkdir(parents=True)
    (root / "data").mkdir()
    rows = []
    for v, yt in enumerate(["abc123", "def456"], start=1):
        if not (missing and v == 2):
            shutil.copy(VIDEO, root / "data" / f"{yt}.mp4")
        for q in range(2):
            rows.append({"video_id": f"{v:03d}", "duration": "short" if v == 1 else "long", "domain": "d",
                         "sub_category": "s", "url": f"https://www.youtube.com/watch?v={yt}", "videoID": yt,
                         "question_id": f"{v:03d}-{q + 1}", "task_type": "Counting" if q else "OCR",
                         "question": f"Question {q}?", "options": ["A. one", "B. two", "C. three", "D. four"],
                         "answer": "ABCD"[q]})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    return root


def make_mlvu(root: Path) -> Path:
    for stem in ("1_plotQA", "4_count"):
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "video" / stem).mkdir(parents=True)
        shutil.copy(VIDEO, root / "video" / stem / "v.mp4")
        qs = [{"video": "v.mp4", "question": "How many?", "candidates": ["1", "2", "3", "4"], "answer": "3"}]
        (root / "json" / f"{stem}.json").write_text(json.dumps(qs))
    return root


def make_egoschema(root: Path) -> Path:
    (root / "good_clips_git").mkdir(parents=True)
    qs = []
    for u in ("uid-1", "uid-2", "uid-3"):
        shutil.copy(VIDEO, root / "good_clips_git" / f"{u}.mp4")
        qs.append({"q_uid": u, "question": "What does c do?", **{f"option {i}": f"opt {i}" for i in range(5)}})
    (root / "questions.json").write_text(json.dumps(qs))
    (root / "subset_answers.json").write_text(json.dumps({"uid-1": 0, "uid-2": 3}))
    return root


def make_mvbench(root: Path) -> Path:
    from PIL import Image

    (root / "json").mkdir(parents=True)
    (root / "video" / "ssv2_video").mkdir(parents=True)
    shutil.copy(VIDEO, root / "video" / "ssv2_video" / "a.mp4")
    (root / "video" / "star" / "Charades_v1_480").mkdir(parents=True)
    shutil.copy(VIDEO, root / "video" / "star" / "Charades_v1_480" / "b.mp4")
    frames = root / "video" / "tvqa" / "frames_fps3_hq" / "clip1"
    frames.mkdir(parents=True)
    for i in range(1, 16):
        Image.fromarray(np.full((48, 64, 3), i * 10, np.uint8)).save(frames / f"{i:05d}.jpg")
    q = {"question": "Which?", "candidates": ["x", "y", "z"], "answer": "y"}
    (root / "json" / "action_antonym.json").write_text(json.dumps([{**q, "video": "a.mp4"}]))
    (root / "json" / "action_sequence.json").write_text(json.dumps([{**q, "video": "b.mp4", "start": 1.0, "end": 4.0}]))
    (root / "json" / "episodic_reasoning.json").write_text(
        json.dumps([{**q, "video": "clip1", "start": 1.0, "end": 4.0}])
    )
    return root


def eval_args(bench: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", bench, "--data", str(data), "--out", str(out), "--model", str(QWEN), "--device", "cpu",
            "--quiet", *extra]  # fmt: skip


def run_eval(bench: str, data: Path, out: Path, *extra: str) -> dict:
    assert main(eval_args(bench, data, out, *extra)) == 0
    lines = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    scored = [r for r in lines if r["answer"] is not None]
    assert summary["accuracy_pooled"] == (
        round(100.0 * sum(r["correct"] for r in scored) / len(scored), 2) if scored else None
    )
    assert summary["unparseable"] == sum(r["unparseable"] for r in lines)
    for r in lines:  # never a letter invented for an unparseable answer
        assert (r["pred"] is None) == (r["output"] is None or parse_choice(r["output"], list("ABCDE")) is None) or r[
            "pred"
        ]
        assert r["correct"] == (r["pred"] is not None and r["pred"] == r["answer"])
    return {"lines": lines, "summary": summary}


def test_videomme_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    data = make_videomme(tmp_path / "vm", missing=True)
    items = load_items("videomme", data)
    assert [i.qid for i in items] == ["001-1", "001-2", "002-1", "002-2"]
    assert items[0].prompt.startswith("Question: Question 0?\nOptions:\nA. one\n") and items[0].answer == "A"
    out = tmp_path / "out"
    r = run_eval("videomme", data, out, "--limit", "2")
    assert len(r["lines"]) == 2
    first = (out / RESULTS).read_text()
    # resume: the two finished questions are not asked again
    from longvu.eval import runner

    calls = []
    orig = runner.Evaluator.run_group
    monkeypatch.setattr(
        runner.Evaluator, "run_group", lambda self, g, b: calls.append([x["qid"] for x in g]) or orig(self, g, b)
    )
    r = run_eval("videomme", data, out)
    assert calls == [["002-1", "002-2"]]
    assert (out / RESULTS).read_text().startswith(first)
    assert [x["qid"] for x in r["lines"]] == ["001-1", "001-2", "002-1", "002-2"]
    assert r["lines"][2]["error"].startswith("video error") and r["summary"]["errors"] == 2
    assert r["summary"]["error_qids"] == ["002-1", "002-2"]
    assert set(r["summary"]["per_category"]) == {"short", "long"}
    md = (out / "summary.md").read_text()
    assert "| **overall** | 4 |" in md and "subtitles off (the 'w/o subs' setting)" in md
    # what ran, not "auto": the tiny model on the CPU in float32
    assert ", device cpu, precision float32 (asked: auto)," in md, md
    assert r["summary"]["ran"] == {"device": ["cpu"], "dtype": ["float32"]}
    assert r["summary"]["settings"]["subtitles"] is False
    # error lines are asked again by the next run; once the video is there they are answered
    calls.clear()
    shutil.copy(VIDEO, data / "data" / "def456.mp4")
    r = run_eval("videomme", data, out)
    assert calls == [["002-1", "002-2"]] and r["summary"]["errors"] == 0
    assert [x["qid"] for x in r["lines"]] == ["001-1", "001-2", "002-1", "002-2"]


def test_mlvu_egoschema(tmp_path):
    r = run_eval("mlvu", make_mlvu(tmp_path / "mlvu"), tmp_path / "o1")
    assert [x["qid"] for x in r["lines"]] == ["count-0", "plotQA-0"] and r["lines"][0]["answer"] == "C"
    assert r["summary"]["headline"] == "mean of the per-task accuracies"
    r = run_eval("egoschema", make_egoschema(tmp_path / "ego"), tmp_path / "o2")
    assert r["summary"]["scored"] == 2 and r["summary"]["questions"] == 3
    rows = list(csv.reader(open(tmp_path / "o2" / "submission.csv")))
    assert [x[0] for x in rows] == ["q_uid", "uid-1", "uid-2", "uid-3"]


def test_mvbench_frames_and_sample_fps_honoured(tmp_path, monkeypatch):
    from longvu.eval import runner

    seen = {}
    load = runner.load_item_video
    monkeypatch.setattr(runner, "load_item_video", lambda item, preset: seen.setdefault(item.qid, load(item, preset)))
    data = make_mvbench(tmp_path / "mvb")
    r = run_eval("mvbench", data, tmp_path / "default")
    assert {x["category"] for x in r["lines"]} == {"Action Antonym", "Action Sequence", "Episodic Reasoning"}
    assert all(x["error"] is None for x in r["lines"]) and all(x["answer"] == "B" for x in r["lines"])
    # video3.mp4: 128 frames at 25 fps, so the script's step is round(25 / 2) = 12
    assert seen["Action Antonym-0"].source_indices == list(range(0, 128, 12))
    assert seen["Action Sequence-0"].source_indices == list(range(25, 100, 12))  # bound 1-4 s
    assert seen["Episodic Reasoning-0"].source_indices == [3, 5, 7, 9, 11]  # 3 fps JPEG folder, bound 1-4 s
    seen.clear()
    run_eval("mvbench", data, tmp_path / "fps1", "--sample-fps", "1", "--max-frames", "4")
    assert seen["Action Antonym-0"].source_indices == [0, 25, 75, 100]  # 6 > 4: at most 4, evenly spaced
    assert seen["Action Sequence-0"].source_indices == [25, 50, 75]
    assert seen["Episodic Reasoning-0"].source_indices == [3, 6, 9]
    seen.clear()
    run_eval("mvbench", data, tmp_path / "cap2", "--max-frames", "2")
    assert seen["Action Antonym-0"].source_indices == [0, 60]  # 11 frames -> at most 2, evenly spaced


def test_workers_and_ray_match_single_process(tmp_path):
    data = make_egoschema(tmp_path / "ego")
    single = run_eval("egoschema", data, tmp_path / "one")
    two = run_eval("egoschema", data, tmp_path / "two", "--workers", "2")
    assert (tmp_path / "one" / RESULTS).read_text() == (tmp_path / "two" / RESULTS).read_text()
    assert single["summary"]["accuracy"] == two["summary"]["accuracy"]
    pytest.importorskip("ray")
    run_eval("egoschema", data, tmp_path / "ray", "--workers", "2", "--ray", "local")
    assert (tmp_path / "one" / RESULTS).read_text() == (tmp_path / "ray" / RESULTS).read_text()


def test_vniah_generate_and_score(tmp_path):
    import av

    data = tmp_path / "vniah"
    gen = ["vniah", "generate", "--out", str(data), "--lengths", "6", "12", "--depths", "0", "0.5", "1"]
    assert main([*gen, "--words", "apple", "tiger"]) == 0
    manifest = json.loads((data / "vniah.json").read_text())
    assert len(manifest["items"]) == 12  # every needle word in every (length, depth) cell
    cells = {(i["length"], i["depth"]): set() for i in manifest["items"]}
    for i in manifest["items"]:
        cells[(i["length"], i["depth"])].add(i["answer"])
    assert len(cells) == 6 and all(words == {"APPLE", "TIGER"} for words in cells.values())
    item = next(i for i in manifest["items"] if i["length"] == 12 and i["depth"] == 0.5 and i["answer"] == "TIGER")
    with av.open(str(data / item["video"])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 13 and item["needle_index"] == 6
    means = [float(f.mean()) for f in frames]
    assert means[6] > 200 and max(means[:6] + means[7:]) < 200  # the needle is white pixels with a word
    out = tmp_path / "out"
    vniah = ["eval", "vniah", "--data", str(data), "--out", str(out), "--model", str(QWEN), "--device", "cpu"]
    assert main([*vniah, "--limit", "4"]) == 0
    assert len((out / RESULTS).read_text().splitlines()) == 4  # --limit is honoured
    assert main([*vniah, "--workers", "2"]) == 0  # resumes: the last two items on two worker processes
    lines = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]
    assert [x["qid"] for x in lines] == [i["id"] for i in manifest["items"]]
    assert all(isinstance(x["correct"], bool) and x["error"] is None for x in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == round(100 * sum(x["correct"] for x in lines) / 12, 2)
    assert set(summary["per_word"]) == {"APPLE", "TIGER"} and summary["per_word"]["APPLE"]["n"] == 6
    cell = summary["cells"]["12@0.5"]
    assert cell["n"] == 2 and cell["right"] == sum(
        x["correct"] for x in lines if x["qid"].startswith("len00012_depth050")
    )
    lo, hi = cell["interval"]
    assert 0 <= lo <= cell["accuracy"] <= hi <= 100 and hi - lo > 30  # two items: a wide interval
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # other frame sampling is other settings: refused in the same folder, honoured in a new one
    assert main([*vniah, "--sample-fps", "0.5"]) == 2
    half = tmp_path / "half"
    assert main([*vniah[:5], str(half), *vniah[6:], "--sample-fps", "0.5", "--max-frames", "3"]) == 0
    kept = {json.loads(x)["qid"]: json.loads(x)["needle_kept"] for x in (half / RESULTS).read_text().splitlines()}
    assert kept["len00006_depth050_apple"] is False  # the needle (frame 3) is not among frames 0, 2, 4 at 0.5 fps
    assert json.loads((half / "settings.json").read_text())["settings"]["max_frames"] == 3


def test_videomme_subtitles_in_prompt(tmp_path, qwen_model):
    from longvu.eval.runner import subtitle_text

    srt = tmp_path / "s.srt"
    srt.write_text(
        "1\n00:00:00,500 --> 00:00:01,500\nhello there\n\n2\n00:00:01,500 --> 00:00:03,500\n[Music]\n\n"
        "3\n00:00:03,500 --> 00:00:06,000\nsecond line\n"
    )
    # frames 25, 50, 75, 100, 125 at 25 fps = 1 s .. 5 s
    text = subtitle_text(str(srt), [25, 50, 75, 100, 125], 25, qwen_model)
    assert text == "This video's subtitles are listed below:\nhello there\nsecond line\n"


def test_preset_overrides_from_cli(tmp_path):
    data = make_egoschema(tmp_path / "ego")
    run_eval("egoschema", data, tmp_path / "o", "--sample-fps", "0.25", "--set", "drop_threshold=0.5")
    s = json.loads((tmp_path / "o" / "summary.json").read_text())["settings"]
    assert s["sample_fps"] == 0.25 and s["overrides"]["drop_threshold"] == 0.5


# ---------------------------------------------------------------- the output folder: settings, lock, atomic writes
def test_resume_with_other_settings_is_refused_unless_forced(tmp_path, capsys):
    from conftest import LLAMA
    from eval_util import FakeEvaluator

    data = make_egoschema(tmp_path / "ego")
    out = tmp_path / "o"
    _fake_run(tmp_path, "o", FakeEvaluator, model=str(QWEN), device="cpu")
    before = (out / RESULTS).read_text()
    changes = [
        (("--set", "drop_threshold=0.5"), "overrides.drop_threshold: 0.8 -> 0.5"),
        (("--set", "dino_threshold=0.9"), "overrides.dino_threshold: (unset) -> 0.9"),
        (("--dtype", "float16"), "dtype: auto -> float16"),
        (("--device", "auto"), "device: cpu -> auto"),
        (("--sample-fps", "1"), "sample_fps: 0.5 -> 1.0"),
        (("--stride-to", "64"), "stride_to: 1000 -> 64"),
        (("--max-frames", "64"), "max_frames: None -> 64"),
        (
            ("--model", str(LLAMA)),
            f"model: {QWEN.resolve()} -> {LLAMA.resolve()}; "
            f"weights: {folder_fingerprint(QWEN)} -> {folder_fingerprint(LLAMA)}",
        ),
    ]
    for extra, change in changes:
        capsys.readouterr()
        assert main(eval_args("egoschema", data, out, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("longvu eval egoschema: error: ") and err.count("\n") == 1, err
        assert f"other settings ({change}); use another --out, or --force" in err
    assert (out / RESULTS).read_text() == before
    assert main(eval_args("egoschema", data, out, "--limit", "1")) == 0  # --limit is not a setting
    assert (out / RESULTS).read_text() == before  # and the answers outside the limit are kept
    r = run_eval("egoschema", data, out, "--set", "drop_threshold=0.5", "--force")
    assert r["summary"]["mixed_settings"] is True and r["summary"]["settings"]["overrides"]["drop_threshold"] == 0.5
    assert r["lines"] == [json.loads(x) for x in before.splitlines()]  # nothing to ask: all answered
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["previous"][0]["overrides"]["drop_threshold"] == 0.8
    # VideoMME's subtitle switch is part of the settings
    make_videomme(tmp_path / "vm")
    _fake_run(tmp_path, "vm_out", FakeEvaluator, benchmark="videomme", data="vm", model=str(QWEN), device="cpu")
    assert main(eval_args("videomme", tmp_path / "vm", tmp_path / "vm_out", "--subtitles")) == 2
    assert "other settings (subtitles: False -> True)" in capsys.readouterr().err


def test_a_model_or_adapter_retrained_in_place_is_not_resumed(tmp_path, capsys):
    """Same paths, other weights: the old answers are not the new model's, so a resumed run refuses."""
    from eval_util import FakeEvaluator
    from safetensors.torch import load_file, save_file

    make_egoschema(tmp_path / "ego")
    model, adapter = tmp_path / "model", tmp_path / "adapter"
    shutil.copytree(QWEN, model)
    adapter.mkdir()
    save_file({"w": torch.zeros(4)}, str(adapter / "adapter_model.safetensors"))
    _fake_run(tmp_path, "o", FakeEvaluator, model=str(model), device="cpu", adapter=str(adapter))
    recorded = json.loads((tmp_path / "o" / "settings.json").read_text())["settings"]
    assert recorded["weights"] == folder_fingerprint(model) == folder_fingerprint(QWEN)
    last = "o"
    for folder, key in ((adapter, "adapter_weights"), (model, "weights")):  # "retrain" one, then the other
        path = next(folder.glob("*.safetensors"))
        state = load_file(str(path))
        name = next(iter(state))
        state[name] = state[name] + 1  # same names, shapes and sizes: only the bytes differ
        save_file(state, str(path), metadata={"format": "pt"})
        with pytest.raises(LongVUError, match=f"other settings \\({key}: [0-9a-f]{{64}} -> [0-9a-f]{{64}}\\)"):
            _fake_run(tmp_path, last, FakeEvaluator, model=str(model), device="cpu", adapter=str(adapter))
        last = f"o-{key}"  # a new folder takes the new weights
        assert len(_fake_run(tmp_path, last, FakeEvaluator, model=str(model), device="cpu", adapter=str(adapter))) == 3


def test_answers_without_a_settings_file_are_not_mixed(tmp_path):
    from longvu.eval.store import check_settings

    (tmp_path / RESULTS).write_text(json.dumps({"qid": "a"}) + "\n")
    with pytest.raises(LongVUError, match="has answers but no settings.json"):
        check_settings(tmp_path, {"dtype": "float16"})
    assert check_settings(tmp_path, {"dtype": "float16"}, force=True) is True  # mixed from now on
    assert check_settings(tmp_path, {"dtype": "float16"}) is True
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(LongVUError, match="not a settings file"):
        check_settings(tmp_path, {"dtype": "float16"})


def test_one_run_per_folder_and_a_stale_lock_is_taken_over(tmp_path, capsys):

    from longvu.eval.store import exclusive

    data = make_egoschema(tmp_path / "ego")
    out = tmp_path / "o"
    out.mkdir()
    hold = "import sys, time\nfrom pathlib import Path\nfrom longvu.eval.store import exclusive\n"
    hold += "with exclusive(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(300)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(eval_args("egoschema", data, out)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another run is writing here (pid {holder.pid} on " in err
    finally:
        holder.kill()  # SIGKILL: no clean-up, the lock file stays behind naming a dead process
        holder.wait()
        holder.stdout.close()
    assert f"pid {holder.pid} on" in (out / ".lock").read_text()
    with exclusive(out):  # the dead holder's lock is no obstacle
        assert (out / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"


def test_a_failed_rewrite_loses_no_answer(tmp_path):
    """Disk full during the final rewrite (a file size limit in a child process): results.jsonl is kept whole."""

    from eval_util import FakeEvaluator

    data = make_egoschema(tmp_path / "ego")
    out = tmp_path / "o"
    _fake_run(tmp_path, "o", FakeEvaluator, model=str(QWEN), device="cpu")
    before = (out / RESULTS).read_bytes()
    limit = len(before) - 10
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from longvu.cli.main import main\n"
        f"sys.exit(main({eval_args('egoschema', data, out)!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"longvu eval egoschema: error: {out}: could not write the results (File too large); the answers in {RESULTS} "
        "are kept as they were (see `longvu eval egoschema --help`)"
    )
    assert (out / RESULTS).read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):

    from longvu.eval import store

    path = tmp_path / "f.txt"
    path.write_text("old\n")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        store.atomic_write_text(path, "new\n" * 1000)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_generation_error_is_recorded_and_retried(tmp_path, monkeypatch, capsys):
    from longvu.pipeline.api import LongVU

    ask = LongVU.ask
    calls = []

    def flaky(self, feats, prompt, **kw):
        calls.append(prompt)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ask(self, feats, prompt, **kw)

    monkeypatch.setattr(LongVU, "ask", flaky)
    data = make_mlvu(tmp_path / "mlvu")
    out = tmp_path / "o"
    assert main(eval_args("mlvu", data, out)[:-1]) == 0  # without --quiet: the warning is shown
    lines = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]
    assert [x["qid"] for x in lines] == ["count-0", "plotQA-0"] and len(calls) == 2
    assert lines[0]["error"] == "generation error: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert lines[0]["output"] is None and lines[0]["correct"] is False and lines[1]["error"] is None
    assert "1 question failed (counted wrong; see summary.json); run again to retry them" in capsys.readouterr().err
    r = run_eval("mlvu", data, out)
    assert len(calls) == 3 and [x["error"] for x in r["lines"]] == [None, None] and r["summary"]["errors"] == 0


# ---------------------------------------------------------------- workers that die
def _fake_run(tmp_path, name: str, evaluator, benchmark: str = "egoschema", data: str = "ego", **kw) -> list[dict]:
    """A run whose workers answer "A" without a model (see eval_util.py)."""
    from longvu.eval.runner import run_benchmark

    kw.setdefault("model", "fake")
    items = load_items(benchmark, tmp_path / data)
    run_benchmark(benchmark, items, tmp_path / name, evaluator=evaluator, **kw)
    return [json.loads(x) for x in (tmp_path / name / RESULTS).read_text().splitlines()]


def test_dead_worker_is_replaced_and_its_video_requeued(tmp_path, capsys):
    from functools import partial

    from eval_util import FakeEvaluator

    make_egoschema(tmp_path / "ego")
    one = _fake_run(tmp_path, "one", FakeEvaluator)
    ev = partial(FakeEvaluator, kill_once=str(tmp_path / "killed"), kill_video="uid-3.mp4")
    two = _fake_run(tmp_path, "two", ev, workers=2)
    assert (tmp_path / "killed").exists()  # one worker was SIGKILLed on uid-1 or uid-2 ...
    assert two[:2] == one[:2]  # ... and its video was answered by the replacement
    # uid-3 kills every worker that takes it: given up after two deaths, the run goes on
    assert two[2]["error"] == "worker died 2 times on this video (killed by SIGKILL, out of memory?)"
    err = capsys.readouterr().err
    assert err.count("a worker died (killed by SIGKILL, out of memory?); its video goes back in the queue") == 2
    # the next run retries it
    assert _fake_run(tmp_path, "two", FakeEvaluator) == one


def test_workers_that_cannot_load_end_the_run(tmp_path):
    from functools import partial

    from eval_util import FakeEvaluator

    make_egoschema(tmp_path / "ego")
    with pytest.raises(LongVUError, match=r"3 workers in a row died before answering anything \(killed by SIGKILL"):
        _fake_run(tmp_path, "a", partial(FakeEvaluator, die_on_load=True), workers=2)
    with pytest.raises(LongVUError, match="^a worker could not load the model: no such checkpoint$"):
        _fake_run(tmp_path, "b", partial(FakeEvaluator, load_error="no such checkpoint"), workers=2)


def test_dead_ray_actor_is_replaced(tmp_path):
    from functools import partial

    pytest.importorskip("ray")
    import eval_util
    from ray import cloudpickle

    make_egoschema(tmp_path / "ego")
    one = _fake_run(tmp_path, "one", eval_util.FakeEvaluator)
    cloudpickle.register_pickle_by_value(eval_util)  # Ray's workers cannot import the tests folder
    try:
        ev = partial(eval_util.FakeEvaluator, kill_once=str(tmp_path / "killed"))
        assert _fake_run(tmp_path, "ray", ev, workers=2, ray_address="local") == one
    finally:
        cloudpickle.unregister_pickle_by_value(eval_util)
    assert (tmp_path / "killed").exists()


def test_worker_found_dead_when_given_work_is_replaced_without_blame():
    from longvu.eval.workers import Queue, _dispatch

    class Conn:
        def __init__(self, alive: bool) -> None:
            self.alive, self.sent = alive, []

        def send(self, msg) -> None:
            if not self.alive:
                raise BrokenPipeError(32, "Broken pipe")
            self.sent.append(msg)

    class Proc:
        def __init__(self, alive: bool, answered: int = 1) -> None:
            self.conn, self.task, self.answered = Conn(alive), None, answered

        def stop(self, wait: bool) -> None:
            pass

        def why_dead(self) -> str:
            return "killed by SIGKILL"

    queue = Queue([[{"qid": "a"}], [{"qid": "b"}]], give_up=lambda group, why: [])
    procs = [Proc(alive=False), Proc(alive=True)]
    _dispatch(procs, queue, "preset", lambda slot: Proc(alive=True))
    assert [p.task[0] for p in procs] == [0, 1] and procs[0].conn.sent == [([{"qid": "a"}], "preset")]
    assert not queue.deaths and queue.startup_deaths == 0 and not queue.todo
    # replacements that are dead on arrival end the run instead of looping
    queue = Queue([[{"qid": "a"}]], give_up=lambda group, why: [])
    with pytest.raises(LongVUError, match="3 workers in a row died before answering anything"):
        _dispatch([Proc(alive=False, answered=0)], queue, "preset", lambda slot: Proc(alive=False, answered=0))


def test_local_workers_get_a_gpu_each(monkeypatch):
    from longvu.eval.workers import gpu_for_slot

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [gpu_for_slot(s, "cuda") for s in range(4)] == ["2", "3", "2", "3"]
    assert [gpu_for_slot(s, "auto") for s in range(2)] == ["2", "3"]
    assert gpu_for_slot(0, "cpu") is None and gpu_for_slot(1, "cuda:1") is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert gpu_for_slot(1, "cuda") is None  # one GPU: nothing to spread


# ---------------------------------------------------------------- PyAV against decord (the original scripts' reader)
def test_pyav_frames_against_decord(tmp_path, monkeypatch):
    """The README's decoder table: equal frames except where decord's seeking or counting is off."""
    import av  # noqa: F401  (before decord: its wheel bundles an older FFmpeg and libvpx, which must not win)

    pytest.importorskip("decord", reason="decord (the original scripts' video reader) is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "decoder_compare", Path(__file__).parents[2] / "scripts" / "decoder_compare.py"
    )
    dc = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "decoder_compare", dc)  # dataclasses look their module up
    spec.loader.exec_module(dc)
    rows = {p.name: dc.compare(p) for p in dc.build_corpus(tmp_path)}
    every = ("videomme", "mvbench", "mvbench_bound")
    for name in ("bframes.mp4", "vfr.mp4", "ssv2_like.webm", "odd_size.mp4", "bt709.mp4", "full_range.mp4"):
        r = rows[name]
        assert r["count"][0] == r["count"][1] and r["fps"][0] == r["fps"][1], r
        assert all(r[k] == {"indices": "equal", "pixels": "equal"} for k in every) and r["sequential"] == "equal", r
    assert rows["vfr.mp4"]["fps"][0] == 9.604  # both use the stream's average rate, and index frames in order
    # open GOP: read in order the frames are equal, but decord seeks land on later frames
    r = rows["open_gop.mp4"]
    assert r["sequential"] == "equal" and r["mvbench"]["indices"] == "equal" and r["mvbench"]["pixels"] != "equal"
    ours_all = dc.all_frames_ours(tmp_path / "open_gop.mp4")
    _, _, idx, theirs = dc.theirs(tmp_path / "open_gop.mp4", PRESETS["mvbench"])
    late = [next(d for d in range(4) if np.array_equal(ours_all[i + d], f)) for i, f in zip(idx, theirs)]
    assert max(late) == 3 and late.count(0) < len(late)  # up to the 3 leading B-frames late
    # 15 packets before the first keyframe: both count 95, 80 decode; decord pads with the last frame
    r = rows["cut_mid_gop.mp4"]
    assert r["count"] == (95, 95) and r["sequential"] == "80 vs 95 frames"
    assert r["mvbench"]["pixels"] == "7 vs 8 frames"  # index 84 is past the frames that decode
    # 10-bit: FFmpeg 8 (PyAV >= 16) converts it to 8-bit RGB a little differently from decord's FFmpeg 4.1

    a = dc.all_frames_ours(tmp_path / "ten_bit.mp4").astype(int)
    b = dc.all_frames_theirs(tmp_path / "ten_bit.mp4").astype(int)
    diff = np.abs(a - b).mean()
    assert a.shape == b.shape and (0 < diff < 3 if int(av.__version__.split(".")[0]) >= 16 else diff == 0)
