"""The OpenAI-compatible server: API shape, the openai client, security, bad input, load limits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time

import httpx
import pytest
from conftest import FIXTURES
from server_util import LiveServer, local_client

from longvu.serve.app import create_app
from longvu.serve.errors import APIError
from longvu.serve.jobs import Worker
from longvu.serve.settings import ServerSettings

VIDEO = FIXTURES / "videos" / "video3.mp4"
DATA_URL = "data:video/mp4;base64," + base64.b64encode(VIDEO.read_bytes()).decode()


def body(url: str = DATA_URL, question: str = "What is the person doing?", **kw) -> dict:
    return {
        "model": "tiny",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
            }
        ],  # fmt: skip
        "max_tokens": 8,
        "temperature": 0,
        **kw,
    }


@pytest.fixture()
def media(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(VIDEO.read_bytes())
    (tmp_path / "secret.mp4").write_bytes(VIDEO.read_bytes())
    os.symlink(tmp_path / "secret.mp4", folder / "link.mp4")
    return folder


@pytest.fixture()
def client(qwen_model, media, tmp_path):
    settings = ServerSettings(model_name="tiny", allowed_local_media_path=str(media), upload_dir=str(tmp_path / "up"))
    with local_client(create_app(qwen_model, settings)) as c:
        yield c


def assert_error(r, status: int, needle: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert needle in err["message"]


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"


def test_chat_completion_with_data_url(client, qwen_model):
    r = client.post("/v1/chat/completions", json=body())
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "chat.completion" and j["model"] == "tiny"
    msg = j["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert j["choices"][0]["finish_reason"] in ("stop", "length")
    # the same answer as the Python API
    from longvu import GenerationOptions

    ref = qwen_model.ask(
        VIDEO, "What is the person doing?", generation=GenerationOptions(max_new_tokens=8, greedy=True)
    )
    assert msg["content"] == ref.text
    u = j["usage"]
    assert u["prompt_tokens"] == ref.trace.data["counts"]["sequence_length"]
    assert (
        u["completion_tokens"] == len(ref.token_ids)
        and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    )
    lv = j["longvu"]
    assert lv["counts"] == ref.trace.data["counts"]
    assert len(lv["sampled_timestamps"]) == 6 and lv["kept_indices"] == list(range(6))


def test_any_model_name_is_answered_by_the_served_model(client):
    # As llama.cpp's server: a client whose default names another model (lmms-eval's openai model sends
    # "grok-2-latest" without model_version) is answered, and the response names the model that answered.
    ref = client.post("/v1/chat/completions", json=body(url="clip.mp4")).json()
    for name in ("grok-2-latest", "m" * 10_000):
        r = client.post("/v1/chat/completions", json=body(url="clip.mp4", model=name))
        assert r.status_code == 200 and r.json()["model"] == "tiny", r.text[:500]
        assert r.json()["choices"] == ref["choices"] and len(r.text) < 5000  # the same answer; the name not echoed
    no_name = body(url="clip.mp4")
    del no_name["model"]
    assert client.post("/v1/chat/completions", json=no_name).json()["choices"] == ref["choices"]
    r = client.post("/v1/chat/completions", json=body(url="clip.mp4", model="gpt-4o", stream=True))
    chunks = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
    assert chunks and {c["model"] for c in chunks} == {"tiny"}
    assert client.get("/v1/models").json()["data"] == [{"id": "tiny", "object": "model", "created": 0,
                                                          "owned_by": "longvu"}]  # fmt: skip


def test_upload_then_file_id_and_cleanup(client, tmp_path):
    r = client.post("/v1/files", files={"file": ("my video.mp4", VIDEO.read_bytes(), "video/mp4")},
                    data={"purpose": "vision"})  # fmt: skip
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["id"].startswith("file-") and f["bytes"] == VIDEO.stat().st_size and f["filename"] == "my video.mp4"
    stored = list((tmp_path / "up").iterdir())
    assert [p.name for p in stored] == [f["id"] + ".bin"]  # a generated name and extension, not the client's
    r = client.post("/v1/chat/completions", json=body(url=f["id"]))
    assert r.status_code == 200, r.text
    assert client.delete(f"/v1/files/{f['id']}").json()["deleted"] is True
    assert list((tmp_path / "up").iterdir()) == []
    assert_error(client.post("/v1/chat/completions", json=body(url=f["id"])), 404, "no uploaded file")
    # data URLs leave nothing behind either
    client.post("/v1/chat/completions", json=body())
    assert list((tmp_path / "up").iterdir()) == []


def test_local_paths_and_traversal(client, media, tmp_path):
    assert client.post("/v1/chat/completions", json=body(url="clip.mp4")).status_code == 200
    assert client.post("/v1/chat/completions", json=body(url=str(media / "clip.mp4"))).status_code == 200
    assert client.post("/v1/chat/completions", json=body(url="file://" + str(media / "clip.mp4"))).status_code == 200
    for bad in ["../secret.mp4", str(tmp_path / "secret.mp4"), "link.mp4", "file:///etc/passwd", "/etc/passwd",
                "clip.mp4/../../secret.mp4"]:  # fmt: skip
        assert_error(client.post("/v1/chat/completions", json=body(url=bad)), 403, "outside the allowed media folder")
    assert_error(client.post("/v1/chat/completions", json=body(url="nope.mp4")), 404, "no such file")


def test_local_paths_disabled_by_default(qwen_model):
    with local_client(create_app(qwen_model, ServerSettings(model_name="tiny"))) as c:
        assert_error(c.post("/v1/chat/completions", json=body(url="/etc/passwd")), 400, "local paths are disabled")
        assert_error(c.post("/v1/chat/completions", json=body(url="http://127.0.0.1:1/v.mp4")), 400,
                     "remote URLs are disabled")  # fmt: skip


def test_api_key(qwen_model):
    with local_client(create_app(qwen_model, ServerSettings(model_name="tiny", api_key="s3cret"))) as c:
        assert c.get("/health").status_code == 200
        assert_error(c.get("/v1/models"), 401, "API key")
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401, "API key")
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


@pytest.mark.parametrize(
    "make,status,needle",
    [
        (lambda: "{not json", 400, "not valid JSON"),
        (lambda: json.dumps([1, 2]), 400, "JSON object"),
        (lambda: json.dumps({"messages": []}), 400, "non-empty list"),
        (lambda: json.dumps({**body(), "messages": [{"role": "user", "content": "hi"}]}), 400, "no video"),
        (lambda: json.dumps(body(url="data:video/mp4;base64," + base64.b64encode(b"not a video").decode())), 400,
         "not a readable video file"),
        (lambda: json.dumps(body(url="data:image/png;base64,AAAA")), 415, "unsupported media type"),
        (lambda: json.dumps(body(url="data:video/mp4;base64,%%%")), 400, "not valid base64"),
        (lambda: json.dumps({**body(), "max_tokens": -3}), 400, "max_tokens"),
        (lambda: json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "x"}}]}]}), 400, "unsupported content part"),
        (lambda: json.dumps({**body(), "messages": body()["messages"] + [{"role": "assistant", "content": "x"}]}),
         400, "last message must come from the user"),
    ],
)  # fmt: skip
def test_bad_input_gets_4xx_and_server_keeps_serving(client, make, status, needle):
    r = client.post("/v1/chat/completions", content=make(), headers={"Content-Type": "application/json"})
    assert_error(r, status, needle)
    assert client.get("/health").status_code == 200


def test_upload_limits(qwen_model, tmp_path):
    s = ServerSettings(model_name="tiny", max_upload_mb=0.01, upload_dir=str(tmp_path / "up"))
    with local_client(create_app(qwen_model, s)) as c:
        assert_error(c.post("/v1/files", files={"file": ("v.mp4", VIDEO.read_bytes(), "video/mp4")}), 413, "limit")
        assert list((tmp_path / "up").iterdir()) == []  # the partial upload is removed
        assert_error(c.post("/v1/chat/completions", json=body()), 413, "limit")
        assert_error(c.post("/v1/files", files={"file": ("v.mp4", b"", "video/mp4")}), 400, "empty")


def test_video_duration_limit(qwen_model):
    with local_client(create_app(qwen_model, ServerSettings(model_name="tiny", max_video_seconds=2))) as c:
        r = c.post("/v1/chat/completions", json=body())
        assert_error(r, 413, "the video lasts more than 2s (the limit)")
        assert r.json()["error"]["param"] == "max_seconds"


def test_multi_turn_reuses_the_cache(client):
    first = client.post("/v1/chat/completions", json=body()).json()
    answer = first["choices"][0]["message"]["content"]
    messages = body()["messages"] + [{"role": "assistant", "content": answer},
                                     {"role": "user", "content": "And then?"}]  # fmt: skip
    r = client.post("/v1/chat/completions", json={**body(), "messages": messages})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["longvu"]["from_cache"] is True
    assert j["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


def parse_sse(text: str) -> list:
    events = [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streaming_sse(client):
    plain = client.post("/v1/chat/completions", json=body()).json()
    r = client.post("/v1/chat/completions", json=body(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = parse_sse(r.text)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip() == plain["choices"][0]["message"]["content"]
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["usage"] == plain["usage"] and last["longvu"]["counts"] == plain["longvu"]["counts"]


def test_queue_full_gives_503():
    async def scenario():
        w = Worker(1)
        await w.start()
        gate = threading.Event()
        first = w.submit(gate.wait)  # occupies the worker
        await asyncio.sleep(0.1)
        w.submit(lambda: None)  # fills the queue
        with pytest.raises(APIError) as e:
            w.submit(lambda: None)
        gate.set()
        await first
        await w.stop()
        return e.value

    err = asyncio.run(scenario())
    assert err.status == 503 and err.headers["Retry-After"] == "5"


def test_openai_client_and_disconnect_cancels(qwen_model, tmp_path):
    import openai

    s = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"), max_tokens_limit=200000)
    with LiveServer(create_app(qwen_model, s)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
        assert [m.id for m in client.models.list()] == ["tiny"]
        content = [{"type": "video_url", "video_url": {"url": DATA_URL}}, {"type": "text", "text": "What?"}]
        resp = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                              max_tokens=6, temperature=0)  # fmt: skip
        assert resp.choices[0].message.role == "assistant" and resp.usage.completion_tokens == 6
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                                max_tokens=6, temperature=0, stream=True)  # fmt: skip
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text.strip() == resp.choices[0].message.content
        other = client.chat.completions.create(model="other", messages=[{"role": "user", "content": content}],
                                               max_tokens=6, temperature=0)  # fmt: skip
        assert other.model == "tiny" and other.choices[0].message.content == resp.choices[0].message.content

        # A client that goes away mid-stream cancels its generation: a very long answer is
        # started, the connection dropped, and the next request is answered promptly.
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60,
                          json={**body(max_tokens=200000), "model": "tiny", "stream": True,
                                "temperature": 0}) as r:  # fmt: skip
            assert r.status_code == 200
            started = False
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    started = True
                    break
            assert started  # the long answer was under way when the client left
        t0 = time.time()
        r = httpx.post(srv.url + "/v1/chat/completions", json=body(), timeout=120)
        assert r.status_code == 200
        assert time.time() - t0 < 60


def test_max_tokens_above_the_limit_is_refused(client):
    r = client.post("/v1/chat/completions", json=body(max_tokens=4097))
    assert_error(r, 400, "at most 4096")
    assert r.json()["error"]["param"] == "max_tokens"
    assert client.post("/v1/chat/completions", json=body(max_tokens=4)).status_code == 200


def test_context_policy_through_the_api(client):
    r = client.post("/v1/chat/completions", json=body(question="Tell me everything about it. " * 4000))
    assert_error(r, 400, "the prompt is ")
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # a long history is trimmed, oldest first, and the newest question is answered
    msgs = body()["messages"]
    for i in range(30):
        msgs += [{"role": "assistant", "content": f"answer {i} " + "blah " * 150},
                 {"role": "user", "content": f"question {i + 1}?"}]  # fmt: skip
    r = client.post("/v1/chat/completions", json={**body(), "messages": msgs})
    assert r.status_code == 200, r.text
    assert r.json()["longvu"]["dropped_messages"] > 0


def test_a_client_leaving_mid_encode_frees_the_worker(qwen_model, tmp_path):
    from conftest import scene_frames, write_video

    from longvu import LongVU
    from longvu.errors import Cancelled

    long_video = write_video(tmp_path / "long.mp4", scene_frames(1200, scene_len=7), fps=2)  # 10 min, 600 frames
    lv = LongVU(qwen_model.model, cache=None)
    outcomes = []
    real = lv.features

    def spy(*a, **k):
        try:
            return real(*a, **k)
        except BaseException as e:
            outcomes.append(type(e))
            raise

    lv.features = spy
    url = "data:video/mp4;base64," + base64.b64encode(long_video.read_bytes()).decode()
    with LiveServer(create_app(lv, ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up")))) as srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/chat/completions", json=body(url=url), timeout=2.0)
        r = httpx.post(srv.url + "/v1/chat/completions", json=body(), timeout=120)
        assert r.status_code == 200
    assert outcomes[0] is Cancelled  # the long encode stopped instead of running to its end


def test_request_timeout_cancels_the_encode_and_answers_504(qwen_model, tmp_path):
    """``--request-timeout``: a request still encoding when it runs out gets a 504, and its encode stops
    (it does not hold the only worker until the whole video is done)."""
    from conftest import scene_frames, write_video

    from longvu import LongVU
    from longvu.errors import Cancelled

    long_video = write_video(tmp_path / "long.mp4", scene_frames(1200, scene_len=7), fps=2)  # 600 frames to encode
    lv = LongVU(qwen_model.model, cache=None)
    outcomes, real = [], lv.features

    def spy(*a, **k):
        try:
            return real(*a, **k)
        except BaseException as e:
            outcomes.append((type(e), time.monotonic()))
            raise

    lv.features = spy
    url = "data:video/mp4;base64," + base64.b64encode(long_video.read_bytes()).decode()
    settings = ServerSettings(model_name="tiny", upload_dir=str(tmp_path / "up"), request_timeout_s=1.5)
    with local_client(create_app(lv, settings)) as c:
        t0 = time.monotonic()
        r = c.post("/v1/chat/completions", json=body(url=url))
        answered = time.monotonic()
        assert_error(r, 504, "the request took longer than 1.5s")
        assert r.json()["error"]["code"] == "timeout" and answered - t0 < 30
        deadline = answered + 30
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.1)
        # the encode stopped soon instead of running to its end: the job's thread, and so the worker, is free
        assert outcomes and outcomes[0][0] is Cancelled
        assert outcomes[0][1] - answered < 10
