"""Request shapes of lmms-eval and vLLM clients: image frames, media_io_kwargs, audio_url videos, waiting queue."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import wave

import numpy as np
import pytest
from conftest import FIXTURES
from server_util import local_client
from test_server import assert_error, body

from longvu.model.video import load_video
from longvu.serve.app import create_app
from longvu.serve.errors import APIError
from longvu.serve.jobs import Worker
from longvu.serve.parts import client_wait_s
from longvu.serve.settings import ServerSettings

VIDEO = FIXTURES / "videos" / "video3.mp4"


@pytest.fixture(scope="module")
def frames_png() -> list[str]:
    """The first 4 sampled frames of video3 as PNG data URLs (what lmms-eval's openai model sends)."""
    from PIL import Image

    clip = load_video(VIDEO)
    out = []
    for f in clip.frames[:4]:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


@pytest.fixture()
def client(qwen_model, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(VIDEO.read_bytes())
    with wave.open(str(folder / "voice.wav"), "wb") as w:  # an audio-only file
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((np.sin(np.arange(8000) / 5) * 3000).astype("<i2").tobytes())
    settings = ServerSettings(model_name="tiny", allowed_local_media_path=str(folder), upload_dir=str(tmp_path / "up"))
    with local_client(create_app(qwen_model, settings)) as c:
        yield c


def frames_body(urls: list[str], **kw) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"model": "tiny", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "What happens?"}]}], **kw}  # fmt: skip


def test_image_parts_are_one_videos_frames(client, qwen_model, frames_png):
    r = client.post("/v1/chat/completions", json=frames_body(frames_png))
    assert r.status_code == 200, r.text
    lv = r.json()["longvu"]
    assert lv["sampled_timestamps"] == [0.0, 1.0, 2.0, 3.0] and lv["counts"]["sampled_frames"] == 4
    # the same frames through the Python API give the same answer
    from longvu import GenerationOptions
    from longvu.model.video import VideoClip

    clip = load_video(VIDEO)
    four = VideoClip("x", clip.frames[:4], [0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0], 1.0, 1, 4)
    want = qwen_model.ask(four, "What happens?", generation=GenerationOptions(max_new_tokens=4, greedy=True)).text
    assert r.json()["choices"][0]["message"]["content"] == want
    # media_io_kwargs: fps is the frames' rate, num_frames thins them evenly
    r = client.post(
        "/v1/chat/completions", json=frames_body(frames_png, media_io_kwargs={"video": {"fps": 2, "num_frames": 2}})
    )
    assert r.json()["longvu"]["sampled_timestamps"] == [0.0, 1.0]  # frames 0 and 2 at 2 fps


def test_media_io_kwargs_sample_the_video(client):
    r = client.post("/v1/chat/completions", json=body(url="clip.mp4", media_io_kwargs={"video": {"num_frames": 5}}))
    assert r.status_code == 200, r.text
    assert r.json()["longvu"]["counts"]["sampled_frames"] == 5
    r = client.post(
        "/v1/chat/completions", json=body(url="clip.mp4", media_io_kwargs={"video": {"start": 2, "end": 6}})
    )
    ts = r.json()["longvu"]["sampled_timestamps"]
    assert ts and min(ts) >= 2 and max(ts) < 6
    r = client.post("/v1/chat/completions", json=body(url="clip.mp4", media_io_kwargs={"video": {"fps": 2}}))
    full = client.post("/v1/chat/completions", json=body(url="clip.mp4")).json()["longvu"]["counts"]["sampled_frames"]
    assert r.json()["longvu"]["counts"]["sampled_frames"] > full


@pytest.mark.parametrize(
    "kw,needle",
    [({"media_io_kwargs": {"video": {"num_frames": 0}}}, "num_frames must be a number >= 1"),
     ({"media_io_kwargs": {"video": {"fps": "fast"}}}, "fps must be a number"),
     ({"media_io_kwargs": {"video": {"start": 5, "end": 2}}}, "end must be after start"),
     ({"media_io_kwargs": {"video": {"frames": 3}}}, "unknown keys"),
     ({"media_io_kwargs": [1]}, "'media_io_kwargs' must be")],
)  # fmt: skip
def test_bad_media_io_kwargs(client, kw, needle):
    assert_error(client.post("/v1/chat/completions", json=body(url="clip.mp4", **kw)), 400, needle)


def test_audio_url_video_and_audio_only(client):
    b = body(url="clip.mp4")
    b["messages"][0]["content"][0] = {"type": "audio_url", "audio_url": {"url": "clip.mp4"}}
    assert client.post("/v1/chat/completions", json=b).status_code == 200  # a video sent as audio_url
    b["messages"][0]["content"][0] = {"type": "audio_url", "audio_url": {"url": "voice.wav"}}
    assert_error(client.post("/v1/chat/completions", json=b), 400, "not a readable video file")


def test_several_videos_are_a_precise_400(client, frames_png):
    b = body(url="clip.mp4")
    b["messages"][0]["content"].insert(0, {"type": "video_url", "video_url": {"url": "clip.mp4"}})
    r = client.post("/v1/chat/completions", json=b)
    assert_error(r, 400, "only one video per conversation")
    assert r.json()["error"]["code"] == "multiple_videos"
    b = body(url="clip.mp4")
    b["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": frames_png[0]}})
    assert_error(client.post("/v1/chat/completions", json=b), 400, "image frames beside a video")
    assert_error(client.post("/v1/chat/completions", json=frames_body(["data:video/mp4;base64,AAAA"])), 415,
                 "send an image")  # fmt: skip


def test_a_full_queue_waits_when_the_client_deadline_allows():
    async def scenario():
        w = Worker(1, max_waiting=4)
        await w.start()
        gate = threading.Event()
        first = w.submit(gate.wait)  # occupies the worker
        await asyncio.sleep(0.1)
        w.submit(lambda: "queued")  # fills the queue
        with pytest.raises(APIError) as refused:
            await w.submit_waiting(lambda: None, 0.2)  # the slot does not free in time
        asyncio.get_running_loop().call_later(0.3, gate.set)
        waited = await w.submit_waiting(lambda: "waited", 5.0)  # gets a slot once the first job ends
        result = await waited
        await first
        await w.stop()
        return refused.value, result

    refused, result = asyncio.run(scenario())
    assert refused.status == 503 and "within 0.2s" in refused.message and result == "waited"


def test_client_wait_from_headers():
    assert client_wait_s({"x-stainless-read-timeout": "600"}, 1800) == 300  # half the OpenAI SDK's timeout
    assert client_wait_s({"x-longvu-queue-wait": "20"}, 10) == 10  # capped by the server
    assert client_wait_s({"x-stainless-read-timeout": "nan"}, 100) == 0 and client_wait_s({}, 100) == 0
