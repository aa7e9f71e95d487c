"""Live sessions on the server: a stream fed by chunks, chats over what was seen (``longvu.covered_s``),
bad chunks refused with 4xx and nothing of the session lost, bounds (sessions, bytes, key)."""

from __future__ import annotations

import io
import time

from live_util import write
from server_util import local_client

from longvu.serve.app import create_app
from longvu.serve.settings import ServerSettings

KEY = {"Authorization": "Bearer k"}


def stream_bytes(seconds: float) -> bytes:
    out = io.BytesIO()
    write(out, seconds)
    return out.getvalue()


def chat(client, live_id: str, question: str = "What happens?") -> dict:
    body = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": live_id}},
                                                      {"type": "text", "text": question}]}],
            "max_tokens": 3, "temperature": 0}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body, headers=KEY)
    assert r.status_code == 200, r.text
    return r.json()


def wait_seen(client, live_id: str, seen_s: float | None, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = client.get(f"/v1/live/{live_id}", headers=KEY).json()
        if (seen_s is not None and st["seen_s"] >= seen_s) or st["ended"]:
            return st
        time.sleep(0.2)
    raise AssertionError(f"not seen {seen_s}s in time: {st}")


def test_live_session_fed_by_chunks(qwen_model, tmp_path):
    video = stream_bytes(48)
    mb = (len(video) + 1000) / 2**20  # the whole stream fits, a few more packets do not
    settings = ServerSettings(api_key="k", max_live_sessions=1, max_upload_mb=mb, upload_dir=str(tmp_path / "up"))
    with local_client(create_app(qwen_model, settings)) as client:
        assert client.post("/v1/live").status_code == 401  # behind the key
        r = client.post("/v1/live", json={"fps": 0.5}, headers=KEY)
        assert r.status_code == 200, r.text
        sid = r.json()["id"]
        assert sid.startswith("live-") and r.json()["seen_s"] == 0.0
        r = client.post("/v1/live", headers=KEY)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_live_sessions"

        def send(data: bytes, offset: int | None = None):
            url = f"/v1/live/{sid}" + ("" if offset is None else f"?offset={offset}")
            return client.post(url, content=data, headers={**KEY, "Content-Type": "video/mp2t"})

        r = send(b"this is not a video, just some words\n" * 40)
        assert r.status_code == 415 and r.json()["error"]["code"] == "invalid_chunk"
        cut = [0, 24 * 1024, len(video) * 8 // 10, len(video) * 9 // 10, len(video)]  # 80%: past 32 s of stream
        assert send(video[: cut[1]]).json()["bytes_received"] == cut[1]
        r = send(video[cut[2] : cut[3]], offset=cut[2])  # a chunk skipped
        assert r.status_code == 409 and r.json()["error"]["code"] == "out_of_order"
        r = send(bytes(range(256)) * 20)  # not the continuation of the MPEG-TS stream
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_chunk"
        assert send(video[cut[1] : cut[2]], offset=cut[1]).status_code == 200
        mid = wait_seen(client, sid, 32)
        assert mid["format"] == "mpegts" and mid["error"] is None and not mid["ended"]
        answer = chat(client, sid)
        assert answer["longvu"]["covered_s"] == [0.0, 32.0]
        for a, b in zip(cut[2:], cut[3:]):
            assert send(video[a:b], offset=a).status_code == 200
        r = send(video[:188] * 10)  # whole TS packets, but past the bytes one stream may have
        assert r.status_code == 413 and r.json()["error"]["code"] == "live_too_large"
        assert client.delete(f"/v1/live/{sid}", headers=KEY).status_code == 200
        end = wait_seen(client, sid, None)
        assert end["ended"] and end["seen_s"] == 48.0 and end["error"] is None
        assert end["bytes_received"] == len(video)  # every accepted chunk, none of the refused ones
        assert chat(client, sid)["longvu"]["covered_s"] == [0.0, 48.0]
        r = send(video[:188], offset=len(video))
        assert r.status_code == 409 and r.json()["error"]["code"] == "live_ended"
        r = client.post("/v1/chat/completions", headers=KEY, json={"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "live-nope"}}, {"type": "text", "text": "q"}]}]})  # fmt: skip
        assert r.status_code == 404 and r.json()["error"]["code"] == "live_not_found"


def test_live_bounds(qwen_model, tmp_path):
    settings = ServerSettings(max_live_sessions=0, upload_dir=str(tmp_path / "up"))
    with local_client(create_app(qwen_model, settings)) as client:
        assert client.post("/v1/live").status_code == 429
        assert client.get("/v1/live/live-x").status_code == 404
        assert client.post("/v1/live", json={"fps": -1}).status_code == 400
    settings = ServerSettings(live_idle_s=0.2, upload_dir=str(tmp_path / "up2"))
    with local_client(create_app(qwen_model, settings)) as client:
        sid = client.post("/v1/live").json()["id"]
        assert client.get(f"/v1/live/{sid}").status_code == 200
        time.sleep(0.5)
        assert client.get(f"/v1/live/{sid}").status_code == 404  # expired: closed and deleted
        assert not list((tmp_path / "up2").glob("live-*"))
