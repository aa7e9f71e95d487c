"""Refusals a client meets before its answer starts, and what the server's files cost (issue 21).

Streamed requests are refused like plain ones; the upload quota counts files and blocks;
a full disk is a 507 that leaves no partial file; nothing needs a model here (a gate
stands in for it), so every case is cheap.
"""

from __future__ import annotations

import base64
import errno
import threading
import time

import httpx
import pytest
from conftest import FIXTURES
from server_util import LiveServer, local_client

from longvu.errors import LongVUError
from longvu.serve import store as store_module
from longvu.serve.app import create_app
from longvu.serve.settings import ServerSettings

VIDEO = FIXTURES / "videos" / "video3.mp4"
CHAT = "/v1/chat/completions"


def settings(tmp_path, **kw) -> ServerSettings:
    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    (media / "clip.mp4").write_bytes(VIDEO.read_bytes())
    base = {"model_name": "tiny", "allowed_local_media_path": str(media), "upload_dir": str(tmp_path / "up")}
    return ServerSettings(**{**base, **kw})


def chat(url: str = "clip.mp4", **kw) -> dict:
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What?"}]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **kw}


class GatedBackend:
    """Stands in for the model: each job waits at the gate, then fails as a bad input would (a 400)."""

    concurrency = 1

    def __init__(self) -> None:
        self.gate = threading.Event()

    def stream(self, job, cancel, progress=None):
        self.gate.wait(60)
        raise LongVUError("released")


# ---------------------------------------------------------------------- streaming refusals
@pytest.mark.parametrize(
    "extra,headers",
    [({"stream": True}, {}), ({"stream": True, "stream_options": {"include_usage": True}}, {}),
     ({"stream": True}, {"x-longvu-queue-wait": "0.5"}), ({"stream": False}, {}),
     ({"stream": True}, {"x-stainless-read-timeout": "1"})],
)  # fmt: skip
def test_a_full_queue_is_503_before_any_stream_starts(tmp_path, extra, headers):
    """Streamed or not, waiting a little or not: a full queue is a 503 with Retry-After, in JSON, no event stream."""
    backend = GatedBackend()
    app = create_app(None, settings(tmp_path, queue_size=1), backend=backend)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        busy = [threading.Thread(target=c.post, args=(CHAT,), kwargs={"json": chat()}) for _ in range(2)]
        for t in busy:  # one runs (held at the gate), one waits in the queue: it is full
            t.start()
            time.sleep(0.3)
        deadline = time.time() + 20
        while c.get("/health").json()["queued"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        r = c.post(CHAT, json=chat(**extra), headers=headers)
        backend.gate.set()
        for t in busy:
            t.join(timeout=60)
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "queue_full"


# ---------------------------------------------------------------------- quota: files and blocks
@pytest.mark.parametrize("size", [1, 100, 4097])
def test_tiny_uploads_are_counted_in_blocks(tmp_path, size):
    """20,000 tiny uploads under a 1 MB quota: refused once their blocks fill it, long before 20,000."""
    s = settings(tmp_path, max_upload_total_mb=1.0)
    with local_client(create_app(None, s)) as c:
        block = c.app.state.store.block
        accepted = 0
        for _ in range(20_000):
            r = c.post("/v1/files", files={"file": ("v.mp4", b"x" * size, "video/mp4")})
            if r.status_code != 200:
                break
            accepted += 1
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_quota_exceeded"
        per_file = -(-size // block) * block
        assert accepted == (1 << 20) // per_file
        on_disk = sum(p.stat().st_blocks * 512 for p in (tmp_path / "up").iterdir())
        assert on_disk <= 1 << 20


def test_the_number_of_files_is_capped(tmp_path):
    s = settings(tmp_path, max_upload_files=25)
    with local_client(create_app(None, s)) as c:
        codes = [c.post("/v1/files", files={"file": ("v", b"x", "video/mp4")}).status_code for _ in range(40)]
        assert codes == [200] * 25 + [413] * 15
        data_url = "data:video/mp4;base64," + base64.b64encode(b"x").decode()
        assert c.post(CHAT, json=chat(data_url)).status_code == 413  # a data: URL is a file too
        assert len(list((tmp_path / "up").iterdir())) == 25


# ---------------------------------------------------------------------- a full disk: 507
class _FullDisk:
    """A file whose writes fail with ``err`` once ``room`` bytes are written (a full disk, a quota, a size limit)."""

    def __init__(self, f, room: int, err: int) -> None:
        self.f, self.room, self.err = f, room, err

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.f.write(data[: self.room])
            raise OSError(self.err, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
@pytest.mark.parametrize("room", [0, 3000])
def test_a_full_disk_is_507_and_leaves_nothing(tmp_path, monkeypatch, err, room):
    """Upload and data: URL, at the first byte and mid-file: 507, no partial file, the quota given back."""
    real_open = open
    monkeypatch.setattr(store_module, "open", lambda p, mode="r": _FullDisk(real_open(p, mode), room, err),
                        raising=False)  # fmt: skip
    s = settings(tmp_path)
    data = VIDEO.read_bytes()
    with local_client(create_app(None, s)) as c:
        used = c.app.state.store.used
        r = c.post("/v1/files", files={"file": ("v.mp4", data, "video/mp4")})
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage", r.text
        r = c.post(CHAT, json=chat("data:video/mp4;base64," + base64.b64encode(data).decode()))
        assert r.status_code == 507 and "disk is full" in r.json()["error"]["message"]
        assert list((tmp_path / "up").iterdir()) == [] and c.app.state.store.used == used
        monkeypatch.undo()
        assert c.post("/v1/files", files={"file": ("v.mp4", data, "video/mp4")}).status_code == 200


# ---------------------------------------------------------------------- kill -9: nothing left after the next start
def _wait_for(find, limit_s: float = 60.0):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError("never appeared")


def _ask_quietly(url: str) -> None:
    try:
        httpx.post(
            url + CHAT, timeout=60, json=chat("long.mp4", media_io_kwargs={"video": {"fps": 25, "num_frames": 1500}})
        )
    except httpx.HTTPError:
        pass  # the server is killed mid-answer: no answer is what is expected


@pytest.mark.slow
def test_a_killed_server_leaves_nothing_after_the_next_start(tmp_path, monkeypatch):
    """kill -9 mid-upload (own upload folder, and the private one in the temp folder) and mid-encode, then start."""
    import socket

    from conftest import QWEN
    from media_util import pattern, write_clip
    from server_util import ServeProcess

    tmp, up, media = tmp_path / "tmp", tmp_path / "up", tmp_path / "media"
    for d in (tmp, media):
        d.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the servers' temporary folder: spills, private upload folders
    write_clip(media / "long.mp4", pattern(1500), fps=25)  # a minute of frames: an encode to interrupt
    common = ["--allowed-local-media-path", str(media), "--no-cache", "--max-new-tokens", "2"]
    for own in (["--upload-dir", str(up)], []):
        with ServeProcess(*common, *own, model=QWEN) as srv:
            folder = up if own else _wait_for(lambda: [p for p in tmp.iterdir() if p.name.startswith("longvu-up")])[0]
            s = socket.create_connection(("127.0.0.1", srv.port))
            part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.mp4"\r\n\r\n' + b"v" * (3 << 20)
            s.sendall(f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b"
                      f"\r\nContent-Length: {10 << 20}\r\n\r\n".encode() + part)  # fmt: skip
            _wait_for(lambda d=folder: [p for p in d.iterdir() if p.name.startswith("part-") and p.stat().st_size])
            if not own:  # mid-encode too: a chat request, killed once its spill folder exists
                threading.Thread(target=_ask_quietly, args=(srv.url,), daemon=True).start()
                _wait_for(lambda: [p for p in tmp.iterdir() if p.name.startswith("longvu-spill-")])
            srv.proc.kill()
            srv.proc.wait()
            s.close()
        left = sorted(p.name for p in (folder.iterdir() if own else tmp.iterdir()))
        wanted = ("part-",) if own else ("longvu-uploads-", "longvu-spill-")  # what a kill -9 leaves
        assert all(any(n.startswith(w) for n in left) for w in wanted), left
        with ServeProcess(*common, *own, model=QWEN) as srv:
            if own:
                assert list(up.iterdir()) == []
            else:  # only the new server's own private folder: the killed one's folder and spill are gone
                names = [p.name for p in tmp.iterdir() if p.name.startswith("longvu")]
                assert len(names) == 1 and names[0].startswith(f"longvu-uploads-{srv.proc.pid}x"), names
