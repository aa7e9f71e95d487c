"""lmms-eval's own CLI runs the ``longvu`` model (registered by our entry point) on local tasks.

The tasks are built here: a task YAML, the task functions (fixtures/lmms_tasks/utils.py)
and a fabricated JSON dataset about the fixture videos; nothing comes from a hub.  The
expected answers are chosen from what the tiny model says (computed in-process first), so
the score lmms-eval computes has a known value.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, QWEN

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e '.[lmms]' in a clone)")

from longvu import GenerationOptions  # noqa: E402
from longvu.eval.lmms import cut_at, generation_options, video_request  # noqa: E402

TASKS = Path(__file__).parents[1] / "fixtures" / "lmms_tasks"
VIDEOS = FIXTURES / "videos"
QUESTION = "What colour is the sky? Answer with one word."


def write_task(folder: Path, name: str, data: list[dict], body: str) -> None:
    """A task YAML reading ``data`` (written as JSON lines) with the shared task functions."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASKS / "utils.py", folder / "utils.py")
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in data))
    head = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}.jsonl\n"
            "test_split: test\ndoc_to_visual: !function utils.doc_to_visual\n")  # fmt: skip
    (folder / f"{name}.yaml").write_text(head + body)


GEN_BODY = """output_type: generate_until
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 6
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: match
    aggregation: mean
    higher_is_better: true
"""

MC_BODY = """output_type: multiple_choice
doc_to_text: !function utils.doc_to_text
doc_to_choice: ["red", "blue", "green"]
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def run_lmms_eval(include: Path, tasks: str, out: Path, model: str, model_args: str, tmp: Path, extra=()) -> dict:
    """``lmms-eval`` as a user runs it (a subprocess, offline); returns its results JSON."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp / "hf"),
               LONGVU_CACHE_DIR=str(tmp / "cache"), TOKENIZERS_PARALLELISM="false")  # fmt: skip
    exe = str(Path(sys.executable).parent / "lmms-eval")
    cmd = [exe, "--model", model, "--model_args", model_args, "--tasks", tasks, "--include_path", str(include),
           "--output_path", str(out), "--log_samples", "--batch_size", "1", *extra]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    assert found, f"no results file under {out}: {proc.stdout[-2000:]}"
    return json.loads(Path(found[0]).read_text())


def test_lmms_eval_cli_scores_longvu_on_local_tasks(qwen_model, tmp_path):
    video1, video3 = str(VIDEOS / "video1.mp4"), str(VIDEOS / "video3.mp4")
    gen = GenerationOptions(max_new_tokens=6, greedy=True)
    said = qwen_model.ask(video1, QUESTION, generation=gen).text
    assert said, "the tiny model answered nothing"
    conv = qwen_model.conversation()
    conv.add_user(QUESTION)
    feats = qwen_model.features(video3)
    lls = [qwen_model.teacher_forced(feats, conv, c).logprob for c in ("red", "blue", "green")]
    best = max(range(3), key=lambda i: lls[i])
    folder = tmp_path / "tasks"
    # generate_until: doc 0 expects what the model says, doc 1 something it cannot say -> 0.5
    write_task(folder, "longvu_local_gen", [{"video": video1, "question": QUESTION, "answer": said[:3]},
                                            {"video": video1, "question": QUESTION, "answer": "\u2603"}], GEN_BODY)  # fmt: skip
    # multiple_choice (loglikelihood): doc 0's gold is the model's best choice, doc 1's is not -> 0.5
    write_task(folder, "longvu_local_mc", [{"video": video3, "question": QUESTION, "gold": best},
                                           {"video": video3, "question": QUESTION, "gold": (best + 1) % 3}], MC_BODY)  # fmt: skip
    res = run_lmms_eval(folder, "longvu_local_gen,longvu_local_mc", tmp_path / "out", "longvu",
                        f"pretrained={QWEN},device=cpu,dtype=float32", tmp_path)  # fmt: skip
    assert res["results"]["longvu_local_gen"]["match,none"] == pytest.approx(0.5)
    assert res["results"]["longvu_local_mc"]["acc,none"] == pytest.approx(0.5)
    samples = glob.glob(str(tmp_path / "out" / "**" / "*longvu_local_gen.jsonl"), recursive=True)
    first = json.loads(Path(samples[0]).read_text().splitlines()[0])
    assert first["filtered_resps"] == said  # the plugin answers exactly as the Python API does


def test_video_request_shapes(tmp_path):
    from PIL import Image

    assert video_request(["/v/a.mp4"]).path == "/v/a.mp4"
    assert video_request([{"video": "/v/a.mp4", "video_start": 2, "video_end": 5}]).bound == (2.0, 5.0)
    img = Image.new("RGB", (8, 6))
    assert len(video_request([img, img, img]).frames) == 3
    from longvu.errors import LongVUError

    with pytest.raises(LongVUError, match="2 visual inputs"):
        video_request(["/v/a.mp4", "/v/b.mp4"])
    assert video_request([]) is None and video_request(None) is None  # a text-only question


def test_generation_options_and_until():
    opts, until = generation_options({"max_new_tokens": 7, "temperature": 0, "until": "\n\n"}, 128)
    assert (opts.max_new_tokens, opts.greedy, until) == (7, True, ["\n\n"])
    opts, _ = generation_options({"do_sample": True, "temperature": 0.7, "top_p": 0.9}, 128)
    assert (opts.max_new_tokens, opts.greedy, opts.temperature, opts.top_p) == (128, False, 0.7, 0.9)
    assert cut_at("A. because\n\nmore", ["\n\n"]) == "A. because"


def test_presets_follow_the_task_name(tmp_path):
    from longvu.eval.lmms import LongVULmms

    m = LongVULmms(pretrained=str(QWEN), device="cpu", dtype="float32", cache=str(tmp_path), max_frames=50)
    assert m.preset_for("videomme").name == "videomme"
    assert m.preset_for("mlvu_dev").max_frames == 50  # --model_args max_frames overrides the preset's 1000
    assert m.preset_for("egoschema_subset").name == "egoschema"
    assert m.preset_for("mvbench_action_sequence").sample_fps == 2.0
    assert m.preset_for("my_local_task") is None
    view = m._model_for(m.preset_for("mlvu_dev"))
    assert (view.config.dino_threshold, view.config.drop_threshold) == (0.82, 0.77)
    assert view.model.llm is m.lv.model.llm  # thresholds change, the weights are shared
    # frames given as images: one clip, answered through the same pipeline
    from PIL import Image

    frames = [Image.new("RGB", (32, 24), (i * 40, 0, 0)) for i in range(3)]
    feats = m._encode(m.lv, video_request(frames), None)
    assert len(feats) == 3 and feats.timestamps == [0.0, 1.0, 2.0]


def test_text_only_questions_go_to_the_llm_alone(tmp_path):
    from decode_util import TEXT_PROMPT, greedy_decode
    from lmms_eval.api.instance import Instance

    from longvu.eval.lmms import LongVULmms

    m = LongVULmms(pretrained=str(QWEN), device="cpu", dtype="float32", cache=str(tmp_path))
    m.task_dict = {"text_task": {"test": [{"question": "What is two plus two?"}]}}
    meta = {"task": "text_task", "doc_id": 0, "repeats": 1}
    no_visual = lambda doc: []  # noqa: E731
    gen = Instance("generate_until", ("What is two plus two?", {"max_new_tokens": 6, "temperature": 0},
                                      no_visual, 0, "text_task", "test"), 0, meta)  # fmt: skip
    ids = m.lv.tokenizer(TEXT_PROMPT).input_ids  # the prompt without a video placeholder
    expected = m.lv.tokenizer.decode(greedy_decode(m.lv, ids, 6), skip_special_tokens=True).strip()
    assert expected and m.generate_until([gen]) == [expected]
    ll = Instance("loglikelihood", ("What is two plus two?", " four", no_visual, 0, "text_task", "test"), 0, meta)
    nll, exact = m.loglikelihood([ll])[0].text
    conv = m.lv.conversation(video=False)
    conv.add_user("What is two plus two?")
    forced = m.lv.teacher_forced(None, conv, "four")
    assert forced.decisions is None and nll == pytest.approx(-forced.logprob) and exact == forced.exact_match
    assert nll != float("inf")  # scored, not the failure value
