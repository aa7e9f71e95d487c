"""The server's boundaries: Host, origin, key, media types, body sizes, the store, media limits, error text.

Each class of hole is tried in a few shapes; the server must refuse with a 4xx in
OpenAI's error shape, name no server path, and keep serving.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
from conftest import FIXTURES
from server_util import LiveServer, local_client
from test_server import assert_error, body

from longvu.serve.app import create_app
from longvu.serve.settings import ServerSettings

VIDEO = FIXTURES / "videos" / "video3.mp4"  # 480x320, 128 frames, 5.12 s
CHAT = "/v1/chat/completions"


def settings(tmp_path, **kw) -> ServerSettings:
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    if not (media / "clip.mp4").exists():
        (media / "clip.mp4").write_bytes(VIDEO.read_bytes())
    base = {"model_name": "tiny", "allowed_local_media_path": str(media), "upload_dir": str(tmp_path / "up")}
    return ServerSettings(**{**base, **kw})


@pytest.fixture()
def client(qwen_model, tmp_path):
    with local_client(create_app(qwen_model, settings(tmp_path))) as c:
        yield c


# ---------------------------------------------------------------------- Host, origin, CORS
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil", "0"])
def test_a_foreign_host_name_is_refused(client, host):
    """DNS rebinding: a page whose own name now points at 127.0.0.1 sends that name."""
    r = client.get("/health", headers={"Host": host})
    assert_error(r, 421, "does not answer to that host name")
    assert client.post(CHAT, json=body(url="clip.mp4"), headers={"Host": host}).status_code == 421


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1234", "[::1]:8000", "LOCALHOST."])
def test_loopback_names_are_answered(client, host):
    assert client.get("/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_setting(qwen_model, tmp_path):
    s = settings(tmp_path, allowed_hosts=("video.example.com", ".corp.example"))
    with local_client(create_app(qwen_model, s)) as c:
        assert c.get("/health").status_code == 421  # 127.0.0.1 is not in this list
        for ok in ("video.example.com", "video.example.com:443", "corp.example", "a.b.corp.example"):
            assert c.get("/health", headers={"Host": ok}).status_code == 200, ok
        assert c.get("/health", headers={"Host": "evilcorp.example"}).status_code == 421


def test_default_hosts_follow_the_bind_address():
    from longvu.serve.guard import default_allowed_hosts

    assert default_allowed_hosts("127.0.0.1", False) == ("localhost", "127.0.0.1", "[::1]")
    assert default_allowed_hosts("::1", False) == ("localhost", "127.0.0.1", "[::1]")
    assert default_allowed_hosts("192.168.1.5", False) == ("localhost", "127.0.0.1", "[::1]", "192.168.1.5")
    assert default_allowed_hosts("0.0.0.0", True) == ("*",)  # any name, behind the key
    assert default_allowed_hosts("0.0.0.0", False) == ("localhost", "127.0.0.1", "[::1]")


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9", "https://127.0.0.1"])
def test_cross_origin_writes_are_refused(client, origin):
    """A page on another origin may not post to the server, whatever its content type (text/plain included)."""
    for ctype in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
        r = client.post(
            CHAT, content=json.dumps(body(url="clip.mp4")), headers={"Origin": origin, "Content-Type": ctype}
        )
        assert_error(r, 403, "cross-origin requests are not allowed")
    assert client.delete("/v1/files/file-" + "0" * 32, headers={"Origin": origin}).status_code == 403
    # a preflight (CORS is off): refused, so the browser never sends the request
    r = client.options(CHAT, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_same_origin_page_may_post(client):
    r = client.post(CHAT, json=body(url="clip.mp4"), headers={"Origin": "http://127.0.0.1"})
    assert r.status_code == 200, r.text


def test_cors_origins_setting(qwen_model, tmp_path):
    s = settings(tmp_path, cors_origins=("https://app.example",), api_key="k")
    with local_client(create_app(qwen_model, s)) as c:
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        r = c.options(CHAT, headers=pre)  # a preflight carries no key
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.options(CHAT, headers={**pre, "Origin": "https://other.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = c.post(CHAT, json=body(url="clip.mp4"), headers={"Origin": "https://app.example",
                                                               "Authorization": "Bearer k"})  # fmt: skip
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.post(CHAT, json=body(url="clip.mp4"), headers={"Origin": "https://other.example",
                                                               "Authorization": "Bearer k"})  # fmt: skip
        assert r.status_code == 403


# ---------------------------------------------------------------------- the key, the docs
def test_every_data_route_needs_the_key(qwen_model, tmp_path):
    with local_client(create_app(qwen_model, settings(tmp_path, api_key="s3cret"))) as c:
        for path in ("/", "/health", "/static/app.js", "/static/style.css"):  # the page must load to ask for it
            assert c.get(path).status_code == 200, path
        q = "?video=clip.mp4&t=0"
        for method, path in [("GET", "/v1/models"), ("GET", "/v1/thumbnail" + q), ("GET", "/v1/video?video=clip.mp4"),
                             ("GET", "/v1/files/file-" + "0" * 32), ("DELETE", "/v1/files/x"), ("POST", "/v1/files"),
                             ("POST", CHAT), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/redoc"),
                             ("GET", "/nope"), ("POST", "/health"), ("GET", "/static/../server.py")]:  # fmt: skip
            for auth in (None, "Bearer wrong", "Bearer s3cret2", "s3cret", "Basic s3cret", "Bearer "):
                headers = {"Authorization": auth} if auth else {}
                r = c.request(method, path, headers=headers)
                assert_error(r, 401, "API key")
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=good).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "bearer  s3cret "}).status_code == 200
        assert c.get("/v1/thumbnail" + q, headers=good).status_code == 200
        assert c.get("/docs", headers=good).status_code == 404  # off without --docs


def test_key_check_is_constant_time_by_construction():
    """Both sides are hashed first, so the comparison time does not depend on where they differ or their lengths."""
    from longvu.serve.guard import bearer_ok, key_digest

    d = key_digest("s3cret")
    scope = lambda h: {"headers": [(b"authorization", h.encode())]}  # noqa: E731
    assert bearer_ok(scope("Bearer s3cret"), d)
    assert not any(bearer_ok(scope(h), d) for h in ("Bearer s3cre", "Bearer s3cret2", "Bearer x" * 1000, "", "s3cret"))


def test_docs_only_with_the_setting(qwen_model, tmp_path):
    with local_client(create_app(qwen_model, settings(tmp_path))) as c:
        assert [c.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [404] * 3
    with local_client(create_app(qwen_model, settings(tmp_path, docs=True, api_key="k"))) as c:
        assert c.get("/openapi.json").status_code == 401
        assert c.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()["info"]["title"] == "longvu"
        assert c.get("/docs", headers={"Authorization": "Bearer k"}).status_code == 200


def test_static_files_are_a_fixed_list(client):
    for name in ("..%2Fserver.py", "index.html", "x%00y", "a" * 300, "app.js%00.css"):
        assert client.get("/static/" + name).status_code == 404


# ---------------------------------------------------------------------- media types
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                   "application/jsonx", "text/json"])  # fmt: skip
def test_json_routes_need_application_json(client, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post(CHAT, content=json.dumps(body(url="clip.mp4")).encode(), headers=headers)
    assert_error(r, 415, "application/json")


def test_json_with_a_charset_is_fine(client):
    r = client.post(
        CHAT, content=json.dumps(body(url="clip.mp4")), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200, r.text


def test_uploads_need_multipart(client):
    assert_error(client.post("/v1/files", content=VIDEO.read_bytes(), headers={"Content-Type": "video/mp4"}), 415,
                 "multipart/form-data")  # fmt: skip
    assert_error(client.post("/v1/files", json={"file": "x"}), 415, "multipart/form-data")


# ---------------------------------------------------------------------- request bodies
def _raw(url: str, head: str, body: bytes = b"", read_timeout: float = 30) -> tuple[int, str]:
    """Send a raw HTTP/1.1 request; returns the status and the response text."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data.decode(errors="replace")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(qwen_model, tmp_path):
    s = settings(tmp_path, max_json_mb=1, max_upload_mb=1)
    with LiveServer(create_app(qwen_model, s)) as srv:
        for path, ctype in ((CHAT, "application/json"), ("/v1/files", "multipart/form-data; boundary=b")):
            # 10 GB declared, a few bytes sent: the answer comes at once, nothing is buffered
            head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {10 << 30}\r\nConnection: close\r\n")  # fmt: skip
            status, text = _raw(srv.url, head, b'{"messages": [')
            assert status == 413 and "larger than this server's limit (1 MB)" in text, text
        assert _raw(srv.url, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n")[0] == 200


def test_a_streamed_body_over_the_limit_stops_at_the_limit(qwen_model, tmp_path):
    """Chunked bodies declare no size: they are counted as they arrive (a data: URL, a multipart upload)."""
    import httpx

    s = settings(tmp_path, max_json_mb=1, max_upload_mb=1)
    sent = {"chat": 0, "upload": 0}

    def chunks(kind: str, first: bytes):
        yield first
        for _ in range(64):  # 64 MB more, if the server kept reading
            sent[kind] += 1
            yield b"A" * (1 << 20)

    with LiveServer(create_app(qwen_model, s)) as srv:
        prefix = b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "video_url", ' \
                 b'"video_url": {"url": "data:video/mp4;base64,'  # fmt: skip
        r = httpx.post(srv.url + CHAT, content=chunks("chat", prefix), headers={"Content-Type": "application/json"},
                       timeout=60)  # fmt: skip
        assert_error(r, 413, "a chat request is larger than this server's limit (1 MB)")
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.mp4"\r\n\r\n'
        r = httpx.post(srv.url + "/v1/files", content=chunks("upload", part), timeout=60,
                       headers={"Content-Type": "multipart/form-data; boundary=b"})  # fmt: skip
        assert r.status_code == 413, r.text
        assert list((tmp_path / "up").iterdir()) == []  # the partial upload is gone
        assert httpx.get(srv.url + "/health").status_code == 200


def test_bad_json_bodies(client):
    deep = "[" * 100_000 + "]" * 100_000
    for raw in [b"\xff\xfe{}", deep.encode(), b'{"a": ' + b"1" * 5000 + b"}", b"{" * 5, b"", b"\x00",
                json.dumps({"x": "\ud800"}).encode()[:-2]]:  # fmt: skip
        r = client.post(CHAT, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw[:20], r.text)
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "make,needle",
    [(lambda b: {**b, "messages": b["messages"] * 5000}, "at most 1024 messages"),
     (lambda b: {**b, "messages": [{"role": "user", "content": [*b["messages"][0]["content"],
                                                                {"type": "text", "text": "x" * 1_000_001}]}]},
      "more than 1000000 characters"),
     (lambda b: {**b, "messages": [{"role": "user", "content": [*b["messages"][0]["content"],
                                                                {"type": "text", "text": "\ud800"}]}]},
      "invalid Unicode"),
     (lambda b: {**b, "seed": 10**30}, "'seed' must be an integer"),
     (lambda b: {**b, "model": ["tiny"]}, "'model' must be a string"),
     (lambda b: {**b, "temperature": float("nan")}, "temperature"),
     (lambda b: {**b, "messages": [{"role": "user", "content": [{"type": "text", "text": "<image> hi"},
                                                                *b["messages"][0]["content"]]}]}, "<image>")],
)  # fmt: skip
def test_hostile_chat_requests_are_4xx(client, make, needle):
    r = client.post(CHAT, content=json.dumps(make(body(url="clip.mp4"))), headers={"Content-Type": "application/json"})
    assert_error(r, 400, needle)
    assert len(r.text) < 2000  # client text is not echoed back at length


# ---------------------------------------------------------------------- the store
def test_stored_names_are_the_servers_own(client, tmp_path):
    for name in ("x.m3u8", "a/../../b.mp4", "c.concat", "\u202ee.mp4", "d" * 300 + ".mkv", ""):
        r = client.post("/v1/files", files={"file": (name, VIDEO.read_bytes(), "video/mp4")})
        assert r.status_code == 200, r.text
        assert r.json()["filename"] and len(r.json()["filename"]) <= 255
    names = sorted(p.name for p in (tmp_path / "up").iterdir())
    assert len(names) == 6 and all(n.startswith("file-") and n.endswith(".bin") and len(n) == 41 for n in names)


def test_a_playlist_upload_cannot_reach_outside_files(client, tmp_path):
    """The audit's hole: an upload named x.m3u8 listing a video outside the allowed folder."""
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(VIDEO.read_bytes())
    for text in (f"#EXTM3U\n#EXTINF:5,\n{secret}\n#EXT-X-ENDLIST\n", f"ffconcat version 1.0\nfile '{secret}'\n",
                 f"#EXTM3U\n#EXTINF:5,\nfile://{tmp_path}/missing.mp4\n"):  # fmt: skip
        fid = client.post("/v1/files", files={"file": ("x.m3u8", text.encode(), "application/x-mpegurl")}).json()["id"]
        r = client.post(CHAT, json=body(url=fid))
        assert_error(r, 400, "not a readable video file")
        assert str(tmp_path) not in r.text and "missing" not in r.text


def test_upload_quota_across_files(qwen_model, tmp_path):
    size = VIDEO.stat().st_size
    s = settings(tmp_path, max_upload_total_mb=(2.5 * size) / 2**20)
    with local_client(create_app(qwen_model, s)) as c:
        up = lambda: c.post("/v1/files", files={"file": ("v.mp4", VIDEO.read_bytes(), "video/mp4")})  # noqa: E731
        first, second = up().json()["id"], up().json()["id"]
        r = up()
        assert_error(r, 413, "upload storage is full")
        assert r.json()["error"]["code"] == "upload_quota_exceeded"
        assert len(list((tmp_path / "up").iterdir())) == 2
        data_url = "data:video/mp4;base64," + base64.b64encode(VIDEO.read_bytes()).decode()
        assert_error(c.post(CHAT, json=body(url=data_url)), 413, "upload storage is full")  # data URLs count too
        assert c.delete(f"/v1/files/{first}").status_code == 200
        assert c.post(CHAT, json=body(url=data_url)).status_code == 200  # the freed room, given back after
        assert up().status_code == 200
        assert c.get(f"/v1/files/{second}").status_code == 200


def test_image_frames_share_one_budget_per_request(qwen_model, tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(__import__("numpy").random.default_rng(0).integers(0, 255, (64, 64, 3), dtype="uint8")).save(
        buf, format="PNG"
    )
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    s = settings(tmp_path, max_upload_mb=3.5 * len(buf.getvalue()) / 2**20)
    with local_client(create_app(qwen_model, s)) as c:
        frames = lambda n: {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [  # noqa: E731
            *[{"type": "image_url", "image_url": {"url": png}}] * n, {"type": "text", "text": "hi"}]}]}  # fmt: skip
        assert c.post(CHAT, json=frames(3)).status_code == 200
        assert_error(c.post(CHAT, json=frames(4)), 413, "image frames together")
        assert list((tmp_path / "up").iterdir()) == []


def test_old_files_are_swept_on_a_timer(qwen_model, tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    orphan, other = up / ("tmp-" + "a" * 32 + ".bin"), up / "notes.txt"  # left by an earlier run; not ours
    orphan.write_bytes(b"x"), other.write_bytes(b"x")
    os.utime(orphan, (time.time() - 10, time.time() - 10))
    s = settings(tmp_path, upload_ttl_s=1.0, sweep_interval_s=0.1)
    with local_client(create_app(qwen_model, s)) as c:
        fid = c.post("/v1/files", files={"file": ("v.mp4", VIDEO.read_bytes(), "video/mp4")}).json()["id"]
        assert c.get(f"/v1/files/{fid}").status_code == 200
        deadline = time.time() + 30
        while (up / f"{fid}.bin").exists() and time.time() < deadline:
            time.sleep(0.1)  # no request in between: the timer does it
        assert not (up / f"{fid}.bin").exists() and not orphan.exists() and other.exists()
        assert c.get(f"/v1/files/{fid}").status_code == 404


def test_uploads_survive_a_restart(qwen_model, tmp_path):
    s = settings(tmp_path)
    with local_client(create_app(qwen_model, s)) as c:
        fid = c.post("/v1/files", files={"file": ("v.mp4", VIDEO.read_bytes(), "video/mp4")}).json()["id"]
    with local_client(create_app(qwen_model, s)) as c:
        assert c.get(f"/v1/files/{fid}").json()["bytes"] == VIDEO.stat().st_size
        assert c.post(CHAT, json=body(url=fid)).status_code == 200
        for bad in ("file-../up", "file-" + "0" * 32, "file-" + "A" * 32, "file-x\x00"):
            assert c.post(CHAT, json=body(url=bad)).status_code == 404


def test_malformed_uploads(client, tmp_path):
    def post(raw: bytes, boundary: str = "b"):
        return client.post(
            "/v1/files", content=raw, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )

    part = lambda name, data, fn='; filename="v.mp4"': (  # noqa: E731
        f'--b\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n'.encode() + data + b"\r\n"
    )
    video = VIDEO.read_bytes()
    assert_error(post(part("file", video) + part("file", video) + b"--b--\r\n"), 400, "one file")
    assert_error(post(part("other", b"x", "") + b"--b--\r\n"), 400, "no 'file' part")
    assert_error(post(part("file", b"") + b"--b--\r\n"), 400, "empty")
    assert_error(post(part("purpose", b"x" * 5000, "") + part("file", video) + b"--b--\r\n"), 400, "longer than")
    assert_error(post(b"".join(part(f"f{i}", b"x", "") for i in range(20)) + b"--b--\r\n"), 400, "at most 8 parts")
    assert post(b"garbage without boundaries").status_code == 400
    assert client.post("/v1/files", content=b"x", headers={"Content-Type": "multipart/form-data"}).status_code == 400
    assert list((tmp_path / "up").iterdir()) == []
    r = post(part("purpose", b"vision", "") + part("file", video) + b"--b--\r\n")
    assert r.status_code == 200 and r.json()["purpose"] == "vision" and r.json()["bytes"] == len(video)


# ---------------------------------------------------------------------- paths
def test_hostile_paths_are_4xx(client, tmp_path):
    media = tmp_path / "media"
    os.symlink(media / "loop1", media / "loop2")
    os.symlink(media / "loop2", media / "loop1")
    (media / "sub").mkdir()
    cases = {"a\x00b.mp4": 400, "loop1": 400, "x" * 300 + ".mp4": 400, ("d/" * 3000) + "v.mp4": 400, "sub": 404,
             "sub/../../secret.mp4": 403, "sub/../clip.mp4": 200, "./": 404, ".": 404, "clip.mp4\x00.txt": 400}  # fmt: skip
    for path, status in cases.items():
        for url in (path, "file://" + str(media / path)):
            r = client.post(CHAT, json=body(url=url))
            assert r.status_code == status, (path[:30], r.text)
            assert str(tmp_path) not in r.text
            t = client.get("/v1/thumbnail", params={"video": url, "t": 0})
            assert t.status_code == status and str(tmp_path) not in t.text
    assert_error(client.post(CHAT, json=body(url="")), 400, "needs a 'url'")


def test_error_messages_name_no_server_path(qwen_model, tmp_path):
    """Every way a video can fail, through every route that opens one."""
    s = settings(tmp_path)
    media = tmp_path / "media"
    bad = {"trunc.mp4": VIDEO.read_bytes()[:3000], "text.mp4": b"hello " * 100, "zero.mp4": b"\x00" * 4096,
           "audio.wav": b"RIFF" + b"\x00" * 100}  # fmt: skip
    for name, data in bad.items():
        (media / name).write_bytes(data)
    with local_client(create_app(qwen_model, s)) as c:
        for name, data in bad.items():
            fid = c.post("/v1/files", files={"file": (name, data, "video/mp4")}).json()["id"]
            data_url = "data:video/mp4;base64," + base64.b64encode(data).decode()
            for video in (name, fid, data_url):
                responses = [c.post(CHAT, json=body(url=video)), c.post(CHAT, json=body(url=video, stream=True))]
                if not video.startswith("data:"):
                    responses += [c.get("/v1/thumbnail", params={"video": video, "t": 1}),
                                  c.get("/v1/video", params={"video": video})]  # fmt: skip
                for r in responses:
                    text = r.text
                    assert str(tmp_path) not in text and "/tmp" not in text and "longvu-" not in text, text
                    assert 400 <= r.status_code < 500 or '"error"' in text, (video[:40], r.status_code, text)


# ---------------------------------------------------------------------- media limits: 413
@pytest.mark.parametrize(
    "kw,limit",
    [({"max_pixels": 480 * 320 - 1}, "max_pixels"), ({"max_video_frames": 100}, "max_frames"),
     ({"max_video_seconds": 3.0}, "max_seconds")],
)  # fmt: skip
def test_media_limits_are_413_on_every_route(qwen_model, tmp_path, kw, limit):
    with local_client(create_app(qwen_model, settings(tmp_path, **kw))) as c:
        fid = c.post("/v1/files", files={"file": ("v.mp4", VIDEO.read_bytes(), "video/mp4")}).json()["id"]
        data_url = "data:video/mp4;base64," + base64.b64encode(VIDEO.read_bytes()).decode()
        for video in ("clip.mp4", fid, data_url):
            r = c.post(CHAT, json=body(url=video))
            assert r.status_code == 413 and r.json()["error"]["param"] == limit, r.text
        if limit == "max_pixels":
            assert c.get("/v1/thumbnail", params={"video": "clip.mp4", "t": 1}).status_code == 413
            assert c.get("/v1/video", params={"video": fid}).status_code == 413
        if limit == "max_frames":  # a seek far into the video decodes many frames from its keyframe
            assert c.get("/v1/thumbnail", params={"video": "clip.mp4", "t": 5}).status_code in (200, 413)
        assert c.get("/health").status_code == 200


def test_limits_apply_to_a_cached_video(qwen_model, tmp_path):
    """The feature cache answers from what decoding found: a cached video over the limits is refused too."""
    with local_client(create_app(qwen_model, settings(tmp_path))) as c:
        c.post(CHAT, json=body(url="clip.mp4"))
        assert c.post(CHAT, json=body(url="clip.mp4")).json()["longvu"]["from_cache"] is True
    for kw, limit in (({"max_video_frames": 100}, "max_frames"), ({"max_pixels": 480 * 320 - 1}, "max_pixels")):
        with local_client(create_app(qwen_model, settings(tmp_path, **kw))) as c:
            r = c.post(CHAT, json=body(url="clip.mp4"))
            assert r.status_code == 413 and r.json()["error"]["param"] == limit, r.text


def test_image_frames_over_the_pixel_limit(qwen_model, tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 20, 30)).save(buf, format="PNG")
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    msg = lambda n: {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [  # noqa: E731
        *[{"type": "image_url", "image_url": {"url": png}}] * n, {"type": "text", "text": "hi"}]}]}  # fmt: skip
    with local_client(create_app(qwen_model, settings(tmp_path, max_pixels=400 * 300 - 1))) as c:
        r = c.post(CHAT, json=msg(1))
        assert r.status_code == 413 and r.json()["error"]["param"] == "max_pixels", r.text
    with local_client(create_app(qwen_model, settings(tmp_path, max_image_frames_mb=3 * 400 * 300 * 3 / 2**20))) as c:
        assert c.post(CHAT, json=msg(3)).status_code == 200
        r = c.post(CHAT, json=msg(4))
        assert r.status_code == 413 and r.json()["error"]["param"] == "max_image_frames_mb", r.text


def test_image_frames_of_other_formats_are_refused(client):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    for data in (eps, b"GIF89a" + b"\x00" * 20, b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, b"II*\x00" + b"\x00" * 50):
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        r = client.post(CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}]})  # fmt: skip
        assert_error(r, 400, "not a readable image")
