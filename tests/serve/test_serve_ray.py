"""``longvu serve --replicas 2`` on a local Ray cluster: both replicas answer, a video's turns stay on one
replica, and killing a busy replica loses no accepted request (each is answered, retried on the other
replica, or fails with a clean 503)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from conftest import FIXTURES, QWEN, scene_frames, write_video

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[serve-ray]' in a clone)")

from longvu.serve.settings import ServerSettings  # noqa: E402

VIDEOS = FIXTURES / "videos"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray import serve

    from longvu.serve import replicas as serve_ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServerSettings(model_name="tiny", allowed_local_media_path=str(VIDEOS), api_key="k3y")
    url = serve_ray.start(str(QWEN), {"device": "cpu", "dtype": "float32"}, settings, host="127.0.0.1", port=port,
                          replicas=2, cpus=1, cache_dir=str(tmp_path_factory.mktemp("cache")),
                          ray_init={"num_cpus": 4})  # fmt: skip
    try:
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def authed(url: str):
    return httpx.Client(base_url=url, headers={"Authorization": "Bearer k3y"}, timeout=300)


def test_two_replicas_answer_and_follow_ups_stay(cluster, tmp_path):
    with authed(cluster) as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # the same app and page
        assert httpx.get(cluster + "/v1/models").status_code == 401  # the same API key
        results: list = []

        def one(i: int) -> None:
            results.append(c.post("/v1/chat/completions", json=_body(f"video{1 + 2 * (i % 2)}.mp4", f"Q{i}?")))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 6
        assert len({r.json()["longvu"]["replica"] for r in results}) == 2  # both replicas answered
        # a new video (an upload): its follow-up turns go to the replica that encoded it
        up = c.post("/v1/files", files={"file": ("v.mp4", (VIDEOS / "video1.mp4").read_bytes(), "video/mp4")}).json()
        first = c.post("/v1/chat/completions", json=_body(up["id"], "turn 0?")).json()
        time.sleep(2.0)  # the replica reports the video's key to Serve's routers (eventually consistent)
        turns = [first] + [c.post("/v1/chat/completions", json=_body(up["id"], f"turn {i}?")).json() for i in (1, 2)]
        assert {t["longvu"]["replica"] for t in turns} == {first["longvu"]["replica"]}
        # the shared feature cache is keyed by content: video1 was encoded above, by either replica
        assert [t["longvu"]["from_cache"] for t in turns] == [True, True, True]
        # a replica's progress reaches the stream: a video not encoded yet, before its first token
        clip = write_video(tmp_path / "new.mp4", scene_frames(40, h=32, w=32), fps=2)
        new = c.post("/v1/files", files={"file": ("new.mp4", clip.read_bytes(), "video/mp4")}).json()
        r = c.post("/v1/chat/completions", json=_body(new["id"], "what?", stream=True))
        chunks = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
        first = next((i for i, ch in enumerate(chunks) if ch["choices"][0]["delta"].get("content")), len(chunks) - 1)
        stages = [ch["longvu"]["progress"]["stage"] for ch in chunks[:first] if "progress" in ch.get("longvu", {})]
        assert "decoding" in stages and "encoding" in stages and stages[-1] == "answering", stages


def _body(video: str, question: str, stream: bool = False, max_tokens: int = 4) -> dict:
    return {"model": "tiny", "max_tokens": max_tokens, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                      {"type": "text", "text": question}]}]}  # fmt: skip


def _wait_until_both_replicas_busy(c: httpx.Client, timeout: float = 120.0) -> None:
    """Until the ingress queues a job: its two workers (one per replica) then each run one on a replica."""
    deadline = time.monotonic() + timeout
    while c.get("/health").json()["queued"] < 1:
        assert time.monotonic() < deadline, "the requests never filled both replicas"
        time.sleep(0.05)
    time.sleep(0.5)  # the router hands each worker's job to its replica (a long generation runs for seconds)


def test_killing_a_busy_replica_loses_no_accepted_request(cluster):
    import ray

    n, results = 4, []
    with authed(cluster) as c:

        def one(i: int) -> None:  # ~1000 tokens: a few seconds of generation, so the killed replica is mid-answer
            try:
                r = c.post("/v1/chat/completions", json=_body(f"video{1 + 2 * (i % 2)}.mp4", f"kill {i}?",
                                                              max_tokens=1000))  # fmt: skip
                results.append((r.status_code, r.json()))
            except httpx.HTTPError as e:  # a lost request (no answer): fails below
                results.append((-1, repr(e)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        _wait_until_both_replicas_busy(c)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "ModelReplica" in a["name"]]
        assert len(names) == 2
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads) and len(results) == n  # none hung, none lost
        answered = [body for status, body in results if status == 200]
        failed = [(status, body) for status, body in results if status != 200]
        for status, body in failed:  # failed cleanly: a 5xx in OpenAI's error shape that says why
            assert 500 <= status < 600 and body["error"]["code"] == "replica_failed", (status, body)
        retried = sum(body["longvu"]["replica_retries"] for body in answered)
        assert len(answered) + len(failed) == n and len(failed) + retried >= 1  # the killed replica was busy
        assert len(answered) >= n - 1, results  # only the job the replica was answering may fail
        assert c.post("/v1/chat/completions", json=_body("video3.mp4", "after?")).status_code == 200


def test_ray_address_needs_replicas(capsys):
    from longvu.cli.main import main

    assert main(["serve", "--model", str(QWEN), "--ray", "auto"]) == 2
    assert "--ray needs --replicas N" in capsys.readouterr().err
