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

    def stream(self, job, cancel):
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
