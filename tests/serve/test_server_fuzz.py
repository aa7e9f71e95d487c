"""Fuzz the server as a whole: hostile HTTP, mutated JSON, damaged videos, through a real ``longvu serve``.

Every answer must be a 2xx or a 4xx; every 4xx the app gives is in OpenAI's JSON error
shape and names no server path; no traceback reaches the log; the process stays under a
fixed peak RSS (from the OS) and answers ``/health`` afterwards; SIGTERM then ends it
(uvicorn's clean shutdown).  The default run sends a few hundred requests (about a minute);
``-m slow`` sends thousands, with more damaged videos.

Also here: SIGTERM or SIGINT while an answer is being generated stops it, tells the client,
and exits within a few seconds.
"""

from __future__ import annotations

import base64
import json
import random
import signal
import socket
from pathlib import Path

import httpx
import pytest
from conftest import QWEN
from media_fuzz import media_variants, seed_videos
from server_util import ServeProcess

SERVER_RSS_MB = 2048  # torch, the tiny model, decoding short clips; 4K would need far more if unbounded
CHAT = "/v1/chat/completions"
# After a clean shutdown uvicorn raises the signal again, so the parent sees "ended by SIGTERM".
CLEAN_EXIT = (0, -signal.SIGTERM)


def valid_body(video: str, **kw) -> dict:
    return {"model": "tiny", "max_tokens": 2, "temperature": 0, **kw,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                      {"type": "text", "text": "What is shown?"}]}]}  # fmt: skip


# ---------------------------------------------------------------------- what is thrown
ODD_VALUES = [None, True, -1, 0, 2**64, 1e308, -1e-308, "", "x" * 5000, "\u0000", "\ud800", [], {}, [[[[]]]],
              {"url": None}, "file:///etc/passwd", "../../../../etc/passwd", "data:,", "<image>", "<|im_start|>"]  # fmt: skip


def mutated_json(rng: random.Random, video: str) -> bytes:
    """A chat body with one field, anywhere in it, replaced, removed or made odd; or its bytes damaged."""
    body = valid_body(video)
    kind = rng.randrange(4)
    if kind == 3:  # damaged bytes
        raw = bytearray(json.dumps(body).encode())
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw[: rng.randint(0, len(raw))] if rng.random() < 0.3 else raw)
    node, key = _random_slot(rng, body)
    if kind == 0:
        node[key] = rng.choice(ODD_VALUES)
    elif kind == 1 and isinstance(node, dict):
        del node[key]
    else:
        body[rng.choice(["max_tokens", "seed", "stream", "top_p", "temperature", "stream_options",
                         "media_io_kwargs", "model", "n", "stop"])] = rng.choice(ODD_VALUES)  # fmt: skip
    return json.dumps(body).encode()


def _random_slot(rng: random.Random, node):
    """A random (container, key) inside ``node``."""
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = rng.choice(keys)
        child = node[key]
        if not isinstance(child, (dict, list)) or not child or rng.random() < 0.3:
            return node, key
        node = child


def raw_requests(port: int) -> list[bytes]:
    """Malformed HTTP: framing, header and target tricks."""
    h = f"Host: 127.0.0.1:{port}\r\n"
    j = "Content-Type: application/json\r\n"
    return [
        b"\x00\x01\x02\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n" + h.encode() + b"\r\n",
        b"GET /health HTTP/1.1\r\n\r\n",  # no Host
        f"GET /health HTTP/1.1\r\n{h}{h}\r\n".encode(),  # two Hosts
        f"GET /{'a' * 20000} HTTP/1.1\r\n{h}\r\n".encode(),
        f"GET /health HTTP/1.1\r\n{h}X-Big: {'b' * 200000}\r\n\r\n".encode(),
        f"GET http://evil.example/health HTTP/1.1\r\n{h}\r\n".encode(),
        f"GET /v1/files/%00%2e%2e HTTP/1.1\r\n{h}\r\n".encode(),
        f"POST {CHAT} HTTP/1.1\r\n{h}{j}Content-Length: -5\r\n\r\n{{}}".encode(),
        f"POST {CHAT} HTTP/1.1\r\n{h}{j}Content-Length: 2\r\nContent-Length: 9\r\n\r\n{{}}".encode(),
        f"POST {CHAT} HTTP/1.1\r\n{h}{j}Content-Length: 1e3\r\n\r\n{{}}".encode(),
        f"POST {CHAT} HTTP/1.1\r\n{h}{j}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n".encode(),
        f"POST {CHAT} HTTP/1.1\r\n{h}{j}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n".encode(),
        f"POST {CHAT} HTTP/1.1\r\n{h}{j}Content-Length: 100\r\n\r\n{{}}".encode(),  # a body cut short
        f"POST /v1/files HTTP/1.1\r\n{h}Content-Type: multipart/form-data; boundary=\r\nContent-Length: 4\r\n\r\n--\r\n".encode(),
        f"BREW /health HTTP/1.1\r\n{h}\r\n".encode(),
        f"GET /health HTTP/1.1\r\n{h}Bad Header: x\r\n\r\n".encode(),
        f"GET /health HTTP/1.1\r\n{h}X-Ctl: a\x00b\r\n\r\n".encode(),
    ]  # fmt: skip


def other_requests(rng: random.Random) -> list[tuple[str, str, dict]]:
    """``(method, path, httpx options)`` for the routes around the chat: files, thumbnails, the player, the rest."""
    videos = ["video1.mp4", "../x", "/etc/passwd", "file-" + "0" * 32, "file-zz", "data:video/mp4;base64,AAAA",
              "http://127.0.0.1/", "\x00", "a" * 5000, "", "video1.h264"]  # fmt: skip
    out = []
    for _ in range(40):
        t = rng.choice(["0", "-1", "nan", "inf", "1e400", "x", "0.5", "99999"])
        w = rng.choice(["16", "0", "-5", "1000000", "x", "160"])
        out.append(("GET", "/v1/thumbnail", {"params": {"video": rng.choice(videos), "t": t, "w": w}}))
        out.append(("GET", "/v1/video", {"params": {"video": rng.choice(videos)}}))
    for method in ("GET", "DELETE", "PUT", "PATCH"):
        out += [(method, p, {}) for p in ("/v1/files/file-" + "1" * 32, "/v1/files/../../etc", "/v1/models", "/nope")]
    out += [("POST", "/v1/files", {"files": {"file": ("x.m3u8", b"#EXTM3U\n/etc/passwd\n")},
                                   "data": {"purpose": "x" * 100}}),
            ("POST", "/v1/files", {"content": b"--b\r\n\r\n--b--", "headers": {"Content-Type": "multipart/form-data; boundary=b"}}),
            ("POST", CHAT, {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
            ("POST", CHAT, {"json": valid_body("video1.mp4"), "headers": {"Origin": "http://evil.example"}}),
            ("GET", "/health", {"headers": {"Host": "evil.example"}}),
            ("GET", "/docs", {}), ("GET", "/openapi.json", {}), ("GET", "/static/..%2f..%2fserver.py", {})]  # fmt: skip
    return out


# ---------------------------------------------------------------------- checks
def check_answer(r: httpx.Response, secret_dirs: list[str]) -> None:
    assert r.status_code < 500, (r.request.method, str(r.request.url)[:120], r.status_code, r.text[:500])
    text = r.text
    for d in secret_dirs:
        assert d not in text, text[:500]
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and err["type"], text[:500]
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
        assert events and all(e == "[DONE]" or json.loads(e) for e in events), text[:500]
        for e in events:
            if e != "[DONE]" and "error" in json.loads(e):
                assert json.loads(e)["error"]["code"] != 500, e


def raw_status(port: int, data: bytes) -> int | None:
    """Send raw bytes; the status of the answer, or None if the server just closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


def run_fuzz(tmp_path: Path, n_json: int, n_media: int, seed: int) -> dict:
    media, up = tmp_path / "media", tmp_path / "up"
    seeds = seed_videos(media)
    rng = random.Random(seed)
    stats = {"2xx": 0, "4xx": 0, "closed": 0}
    args = ["--allowed-local-media-path", str(media), "--upload-dir", str(up), "--cache-dir", str(tmp_path / "cache"), "--max-tokens-limit", "4",
            "--max-new-tokens", "2", "--max-video-seconds", "30", "--max-pixels", str(1280 * 720),
            "--max-upload-mb", "8", "--max-json-mb", "16", "--served-model-name", "tiny"]  # fmt: skip
    secrets = [str(tmp_path), str(Path.home())]
    with ServeProcess(*args, model=QWEN) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:

        def count(r: httpx.Response) -> None:
            check_answer(r, secrets)
            stats["2xx" if r.status_code < 300 else "4xx"] += 1

        for data in raw_requests(srv.port):
            status = raw_status(srv.port, data)
            assert status is None or status < 500, (data[:80], status)
            stats["closed" if status is None else "2xx" if status < 300 else "4xx"] += 1
        for _ in range(n_json):
            raw = mutated_json(rng, rng.choice(seeds).name)
            count(c.post(CHAT, content=raw, headers={"Content-Type": "application/json"}))
        for method, path, kw in other_requests(rng):
            count(c.request(method, path, **kw))
        for i, (name, data) in enumerate(media_variants(seeds, n_media, seed)):
            count(_send_video(c, media, i, name, data))
        assert c.get("/health").status_code == 200  # alive after all of it
        peak = srv.peak_rss_mb()
        rc = srv.terminate()
    assert rc in CLEAN_EXIT, srv.stderr[-3000:]
    assert "Traceback" not in srv.stderr and "Traceback" not in srv.stdout, srv.stderr[-3000:]
    assert peak < SERVER_RSS_MB, f"peak RSS {peak:.0f} MB"
    assert not up.exists() or [p.name for p in up.iterdir() if p.name.startswith("tmp-")] == []
    return stats


def _send_video(c: httpx.Client, media: Path, i: int, name: str, data: bytes) -> httpx.Response:
    """A damaged video three ways in turn: by path in the allowed folder, as an upload, as a data: URL."""
    if i % 3 == 0:
        (media / f"v{i}.bin").write_bytes(data)
        return c.post(CHAT, json=valid_body(f"v{i}.bin", stream=i % 2 == 0))
    if i % 3 == 1:
        r = c.post("/v1/files", files={"file": (name, data, "video/mp4")})
        if r.status_code != 200:
            return r
        return c.post(CHAT, json=valid_body(r.json()["id"]))
    return c.post(CHAT, json=valid_body("data:video/mp4;base64," + base64.b64encode(data).decode()))


def test_server_fuzz(tmp_path):
    stats = run_fuzz(tmp_path, n_json=150, n_media=42, seed=0)
    assert stats["2xx"] > 20 and stats["4xx"] > 150  # the corpus means something: both kinds of answer


@pytest.mark.slow
def test_server_fuzz_long(tmp_path):
    stats = run_fuzz(tmp_path, n_json=2000, n_media=400, seed=1)
    assert stats["2xx"] > 100 and stats["4xx"] > 1000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_running_answer(tmp_path, sig):
    """SIGTERM or SIGINT (Ctrl-C) mid-answer: the generation stops, the client hears why, and the process
    exits within a few seconds (not after the answer)."""
    import time

    from conftest import FIXTURES

    args = ["--allowed-local-media-path", str(FIXTURES / "videos"), "--no-cache", "--max-tokens-limit", "100000",
            "--served-model-name", "tiny"]  # fmt: skip
    with ServeProcess(*args, model=QWEN) as srv:
        body = valid_body("video3.mp4", max_tokens=100000, stream=True)
        pieces, events = 0, []
        with httpx.stream("POST", srv.url + CHAT, json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if '"content": "' in line and '"content": ""' not in line:
                        pieces += 1
                        if pieces == 3:
                            sent = time.monotonic()
                            srv.proc.send_signal(sig)
        rc = srv.proc.wait(timeout=60)
        took = time.monotonic() - sent
    assert "Application shutdown complete" in srv.stderr, srv.stderr[-3000:]
    if sig == signal.SIGTERM:
        assert rc in CLEAN_EXIT, srv.stderr[-3000:]
    else:  # uvicorn shuts down, then hands the Ctrl-C on: the CLI's one line and exit 130
        assert rc == 130 and srv.stderr.splitlines()[-1] == "longvu: interrupted", srv.stderr[-3000:]
    assert took < 10, f"the server took {took:.1f}s to stop"
    assert pieces < 1000  # far from the 100000 tokens asked for
    last = json.loads(events[-1])
    assert last["error"]["code"] == "shutting_down", events[-3:]
    assert "Traceback" not in srv.stderr
