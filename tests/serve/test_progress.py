"""Progress in the streaming API: ``longvu.progress`` chunks while a video is decoded and encoded,
before the first token; the non-streaming response unchanged."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import scene_frames, write_video
from server_util import local_client

from longvu.serve import openai as serve_openai
from longvu.serve.app import create_app
from longvu.serve.jobs import ProgressFeed
from longvu.serve.settings import ServerSettings

MINUTES = 10


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """10 minutes at 1 fps, 32x32: 600 frames, written in about a second."""
    folder = tmp_path_factory.mktemp("long")
    write_video(folder / "ten.mp4", scene_frames(MINUTES * 60, h=32, w=32, scene_len=30), fps=1)
    return folder


FPS = 0.1  # 60 of the 600 frames: the encoding a CPU test can afford, progress counted the same way


def request(**kw) -> dict:
    content = [{"type": "video_url", "video_url": {"url": "ten.mp4"}}, {"type": "text", "text": "What happens?"}]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 3, "temperature": 0,
            "media_io_kwargs": {"video": {"fps": FPS}}, **kw}  # fmt: skip


def sse_chunks(text: str) -> list[dict]:
    events = [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_progress_chunks_come_before_the_first_token(qwen_model, long_video, tmp_path):
    settings = ServerSettings(model_name="tiny", allowed_local_media_path=str(long_video))
    with local_client(create_app(qwen_model, settings)) as c:
        r = c.post("/v1/chat/completions", json=request(stream=True))
        assert r.status_code == 200, r.text
        chunks = sse_chunks(r.text)
        first_text = next(i for i, ch in enumerate(chunks) if ch["choices"][0]["delta"].get("content"))
        progress = [ch["longvu"]["progress"] for ch in chunks[:first_text] if "progress" in ch.get("longvu", {})]
        assert len(progress) >= 2, progress
        for p in progress:
            assert set(p) == {"stage", "done", "total"} and isinstance(p["done"], int) and isinstance(p["total"], int)
            assert p["stage"] in ("queued", "decoding", "encoding", "answering")
            assert 0 <= p["done"] and (p["total"] == 0 or p["done"] <= p["total"])
        stages = [p["stage"] for p in progress]
        assert stages.index("decoding") < stages.index("encoding") < stages.index("answering")
        decoding = [p for p in progress if p["stage"] == "decoding"]
        sampled = len(chunks[-1]["longvu"]["sampled_timestamps"])
        assert sampled == MINUTES * 60 * FPS
        assert decoding[-1] == {"stage": "decoding", "done": sampled, "total": sampled}
        assert [p["done"] for p in decoding] == sorted(p["done"] for p in decoding)
        encoding = [p for p in progress if p["stage"] == "encoding"]
        stored = encoding[-1]["total"]
        assert 0 < stored <= sampled and encoding[-1]["done"] == stored  # the frames kept by frame reduction
        assert progress[-1] == {"stage": "answering", "done": stored, "total": stored}
        # no progress after the text began; the progress chunks are valid chunks with an empty delta
        assert not any("progress" in ch.get("longvu", {}) for ch in chunks[first_text:])
        assert all(ch["choices"][0]["delta"] == {} for ch in chunks[:first_text] if "progress" in ch.get("longvu", {}))
        # the non-streaming response is unchanged: no progress in it (and the features now come from the cache)
        plain = c.post("/v1/chat/completions", json=request()).json()
        assert "progress" not in plain["longvu"] and set(plain) == {"id", "object", "created", "model", "choices",
                                                                   "usage", "longvu"}  # fmt: skip


def test_progress_repeats_while_nothing_moves(qwen_model, tmp_path, monkeypatch):
    """The latest progress is re-sent at least every PROGRESS_EVERY_S until the first token."""
    monkeypatch.setattr(serve_openai, "PROGRESS_EVERY_S", 0.2)
    gate = threading.Event()

    class SlowBackend:
        concurrency = 1

        def stream(self, job, cancel, progress=None):
            progress("decoding", 1, 10)
            gate.wait(1.5)  # a long prefill: nothing new to report
            return iter(())

    settings = ServerSettings(model_name="tiny", allowed_local_media_path=str(tmp_path))
    write_video(tmp_path / "ten.mp4", scene_frames(4, h=32, w=32), fps=1)
    with local_client(create_app(qwen_model, settings, backend=SlowBackend())) as c:
        r = c.post("/v1/chat/completions", json=request(stream=True))
    gate.set()
    events = [e for e in r.text.split("\n\n") if e.startswith("data: {")]
    progress = [json.loads(e[6:])["longvu"]["progress"] for e in events if '"progress"' in e]
    assert progress.count({"stage": "decoding", "done": 1, "total": 10}) >= 3, progress


def test_progress_feed_throttles_counts_but_not_stages():
    posted = []
    feed = ProgressFeed(posted.append, every_s=60)
    for i in range(100):
        feed("decoding", i, 100)
    feed("decoding", 100, 100)  # a stage's last count goes at once
    feed("encoding", 0, 7)
    feed("encoding", 3, 7)
    feed("answering", 7, 7)
    assert posted == [{"stage": "decoding", "done": 0, "total": 100}, {"stage": "decoding", "done": 100, "total": 100},
                      {"stage": "encoding", "done": 0, "total": 7}, {"stage": "answering", "done": 7, "total": 7}]  # fmt: skip
