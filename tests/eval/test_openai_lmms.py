"""The other direction: lmms-eval's own ``openai`` chat model, pointed at ``longvu serve``, scores local tasks.

One task passes the video by URL (``pass_video_url=True``: a ``file://`` path under the
allowed folder, sampled by ``media_io_kwargs``), the other sends a video's frames as an
ordered list of ``image_url`` parts, with no ``model_version`` (lmms-eval's default names another
model, which the server answers as its own).  As in test_lmms.py, the expected answers are chosen
from what the tiny model says in-process, so the score lmms-eval computes is known (0.5).
"""

from __future__ import annotations

import pytest
from conftest import FIXTURES
from server_util import LiveServer
from test_lmms import GEN_BODY, QUESTION, run_lmms_eval, write_task

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e '.[lmms]' in a clone)")

from longvu import GenerationOptions  # noqa: E402
from longvu.model.video import Sampling, VideoClip, load_video  # noqa: E402
from longvu.serve.app import create_app  # noqa: E402
from longvu.serve.settings import ServerSettings  # noqa: E402

VIDEOS = FIXTURES / "videos"


def test_lmms_eval_openai_model_against_longvu_serve(qwen_model, tmp_path):
    from PIL import Image

    gen = GenerationOptions(max_new_tokens=6, greedy=True)
    video = str(VIDEOS / "video1.mp4")
    said_video = qwen_model.ask(video, QUESTION, sampling=Sampling(max_frames=8), generation=gen).text
    clip = load_video(VIDEOS / "video3.mp4")
    frame_files = []
    for i, f in enumerate(clip.frames[:3]):
        frame_files.append(str(tmp_path / f"frame{i}.png"))
        Image.fromarray(f).save(frame_files[-1])
    frames = VideoClip("x", clip.frames[:3], [0, 1, 2], [0.0, 1.0, 2.0], 1.0, 1, 3)
    said_frames = qwen_model.ask(frames, QUESTION, generation=gen).text
    assert said_video and said_frames
    folder = tmp_path / "tasks"
    write_task(folder, "longvu_url_gen", [{"video": video, "question": QUESTION, "answer": said_video[:3]},
                                          {"video": video, "question": QUESTION, "answer": "\u2603"}], GEN_BODY)  # fmt: skip
    frame_body = GEN_BODY.replace("doc_to_text:", "doc_to_visual: !function utils.doc_to_frames\ndoc_to_text:")
    docs = [
        {"video": "", "frames": frame_files, "question": QUESTION, "answer": a} for a in (said_frames[:3], "\u2603")
    ]
    write_task(folder, "longvu_frames_gen", docs, frame_body)
    text = (
        (folder / "longvu_frames_gen.yaml").read_text().replace("doc_to_visual: !function utils.doc_to_visual\n", "", 1)
    )
    (folder / "longvu_frames_gen.yaml").write_text(text)

    settings = ServerSettings(model_name="tiny", allowed_local_media_path=str(VIDEOS), upload_dir=str(tmp_path / "up"))
    with LiveServer(create_app(qwen_model, settings)) as srv:
        args = (f"model_version=tiny,base_url={srv.url}/v1,api_key=unused,pass_video_url=True,max_frames_num=8,"
                "num_concurrent=2,timeout=120,max_retries=1")  # fmt: skip
        res = run_lmms_eval(folder, "longvu_url_gen", tmp_path / "out1", "openai", args, tmp_path)
        assert res["results"]["longvu_url_gen"]["match,none"] == pytest.approx(0.5)
        # without model_version: lmms-eval's default ("grok-2-latest") is answered by the served model
        args = args.replace("model_version=tiny,", "").replace("pass_video_url=True", "pass_video_url=False")
        res = run_lmms_eval(folder, "longvu_frames_gen", tmp_path / "out2", "openai", args, tmp_path)
        assert res["results"]["longvu_frames_gen"]["match,none"] == pytest.approx(0.5)
