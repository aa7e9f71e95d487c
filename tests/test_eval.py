"""The evaluation harness on fabricated datasets in each benchmark's published layout."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, QWEN

from longvu.cli import main
from longvu.eval.answers import parse_choice
from longvu.eval.benchmarks import PRESETS, frames_folder_indices, load_items
from longvu.eval.runner import RESULTS, markdown, read_results, summarize, write_egoschema_submission

VIDEO = FIXTURES / "videos" / "video3.mp4"


# ---------------------------------------------------------------- pure logic
@pytest.mark.parametrize(
    "text,expected",
    [("B", "B"), ("(C)", "C"), ("D. a cat", "D"), ("The answer is A", "A"), ("Answer: (B) two", "B"),
     ("option C", "C"), ("A or B", None), ("", None), ("E", None), ("riri titi", None), ("answer: b", None)],
)  # fmt: skip
def test_parse_choice(text, expected):
    assert parse_choice(text, list("ABCD")) == expected


def test_frame_index_presets():
    # VideoMME: round(fps) first, then every round(fps / 0.5) frames
    assert PRESETS["videomme"].frame_indices(200, 29.97) == [0, 60, 120, 180]
    # MLVU/EgoSchema: more than 1000 -> strided by len // 1000 (which can leave more than 1000)
    assert len(PRESETS["mlvu"].frame_indices(3000, 1.0)) == 1500
    assert len(PRESETS["egoschema"].frame_indices(5000, 1.0)) == 1250
    # MVBench: float fps, step round(fps / 2), [start, end] bound
    assert PRESETS["mvbench"].frame_indices(1000, 30.0, (1.0, 3.0)) == [30, 45, 60, 75]
    assert PRESETS["mvbench"].frame_indices(61, 30.0) == [0, 15, 30, 45]
    assert frames_folder_indices(30, (1.0, 4.0)) == [3, 5, 7, 9, 11]


def test_summary_scoring_exact():
    rows = [
        {"qid": "1", "category": "short", "answer": "A", "pred": "A", "correct": True, "unparseable": False, "error": None, "task_type": "x"},
        {"qid": "2", "category": "short", "answer": "B", "pred": None, "correct": False, "unparseable": True, "error": None, "task_type": "x"},
        {"qid": "3", "category": "long", "answer": "C", "pred": "C", "correct": True, "unparseable": False, "error": None, "task_type": "y"},
        {"qid": "4", "category": "long", "answer": "D", "pred": "A", "correct": False, "unparseable": False, "error": None, "task_type": "y"},
        {"qid": "5", "category": "long", "answer": None, "pred": "A", "correct": False, "unparseable": False, "error": None, "task_type": "y"},
    ]  # fmt: skip
    s = summarize("videomme", rows)
    assert s["accuracy"] == 50.0 and s["scored"] == 4 and s["questions"] == 5
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


def run_eval(bench: str, data: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", bench, "--data", str(data), "--out", str(out), "--model", str(QWEN), "--device", "cpu",
                 "--quiet", *extra]) == 0  # fmt: skip
    lines = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    scored = [r for r in lines if r["answer"] is not None]
    assert summary["accuracy"] == (
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
    assert r["lines"][2]["error"].startswith("video error") and r["summary"]["video_errors"] == 2
    assert set(r["summary"]["per_category"]) == {"short", "long"}
    assert "| **overall** | 4 |" in (out / "summary.md").read_text()


def test_mlvu_egoschema_mvbench(tmp_path):
    r = run_eval("mlvu", make_mlvu(tmp_path / "mlvu"), tmp_path / "o1")
    assert [x["qid"] for x in r["lines"]] == ["count-0", "plotQA-0"] and r["lines"][0]["answer"] == "C"
    r = run_eval("egoschema", make_egoschema(tmp_path / "ego"), tmp_path / "o2")
    assert r["summary"]["scored"] == 2 and r["summary"]["questions"] == 3
    rows = list(csv.reader(open(tmp_path / "o2" / "submission.csv")))
    assert [x[0] for x in rows] == ["q_uid", "uid-1", "uid-2", "uid-3"]
    r = run_eval("mvbench", make_mvbench(tmp_path / "mvb"), tmp_path / "o3")
    assert {x["category"] for x in r["lines"]} == {"Action Antonym", "Action Sequence", "Episodic Reasoning"}
    assert all(x["error"] is None for x in r["lines"]) and all(x["answer"] == "B" for x in r["lines"])


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
    assert main(["vniah", "generate", "--out", str(data), "--lengths", "6", "12", "--depths", "0", "0.5", "1"]) == 0
    manifest = json.loads((data / "vniah.json").read_text())
    assert len(manifest["items"]) == 6
    item = next(i for i in manifest["items"] if i["length"] == 12 and i["depth"] == 0.5)
    with av.open(str(data / item["video"])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 13 and item["needle_index"] == 6
    means = [float(f.mean()) for f in frames]
    assert means[6] > 200 and max(means[:6] + means[7:]) < 200  # the needle is white pixels with a word
    out = tmp_path / "out"
    assert main(["eval", "vniah", "--data", str(data), "--out", str(out), "--model", str(QWEN), "--device", "cpu"]) == 0
    lines = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]
    assert len(lines) == 6 and all(isinstance(x["correct"], bool) for x in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == round(100 * sum(x["correct"] for x in lines) / 6, 2)
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


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
