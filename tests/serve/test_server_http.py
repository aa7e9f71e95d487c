"""The HTTP layer of a real ``longvu serve`` process, bounded before the API key (issue 21).

Header floods, silent and slow clients, idle connections past the cap, bodies in flight:
each class is tried in a few shapes against one server on 127.0.0.1 with short deadlines;
``/health`` must keep answering within 2 s and the server's RSS must stay flat.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from conftest import QWEN
from server_util import ServeProcess

CHAT = "/v1/chat/completions"
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
# the deadlines this server runs under (seconds)
HEADER_S, BODY_IDLE_S, BODY_S = 3, 2, 6


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    args = ["--upload-dir", str(tmp / "up"), "--cache-dir", str(tmp / "cache"), "--served-model-name", "tiny",
            "--header-timeout", str(HEADER_S), "--body-idle-timeout", str(BODY_IDLE_S), "--body-timeout", str(BODY_S),
            "--max-connections", "400", "--max-json-mb", "6", "--max-bodies-in-flight-mb", "8",
            "--api-key", "k" * 32]  # fmt: skip
    with ServeProcess(*args, model=QWEN) as s:
        yield s


def _connect(srv) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=30)


def _health_s(srv) -> float:
    t0 = time.monotonic()
    r = httpx.get(srv.url + "/health", timeout=10)
    assert r.status_code == 200
    return time.monotonic() - t0


def _closed_within(sock: socket.socket, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (reading what it answered), or ``limit_s`` if it never does."""
    t0, got = time.monotonic(), b""
    sock.settimeout(0.5)
    while time.monotonic() - t0 < limit_s:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        got += data
    return time.monotonic() - t0, got


def _flood(srv, unit: bytes, prefix: bytes, stop: threading.Event, sent: list) -> None:
    """Send ``prefix`` then ``unit`` over and over until the server closes the connection or ``stop``."""
    with _connect(srv) as s:
        try:
            s.sendall(prefix)
            while not stop.is_set():
                s.sendall(unit)
                sent.append(len(unit))
        except OSError:
            pass  # closed by the server: what should happen


@pytest.mark.parametrize(
    "prefix,unit",
    [(HEAD + b"X-Endless: ", b"a" * 4096),  # one endless header value
     (HEAD, b"X-H: v\r\n" * 512),  # endless small headers
     (b"GET /health?", b"q" * 4096),  # an endless request line
     (HEAD + b"X-Endless", b"b" * 4096)],  # an endless header name
)  # fmt: skip
def test_header_floods_are_cut_and_health_answers(srv, prefix, unit):
    """Two connections sending one endless head: each is cut at the head limit, /health stays fast, RSS flat."""
    rss0 = srv.peak_rss_mb()
    stop, sent = threading.Event(), []
    floods = [threading.Thread(target=_flood, args=(srv, unit, prefix, stop, sent)) for _ in range(2)]
    for t in floods:
        t.start()
    try:
        time.sleep(0.5)
        times = [_health_s(srv) for _ in range(5)]
    finally:
        stop.set()
        for t in floods:
            t.join(timeout=30)
    assert max(times) < 2.0, times
    assert sum(sent) < 64 << 20  # cut early (the kernel's buffers take some), not read for ever
    assert srv.peak_rss_mb() - rss0 < 50, (rss0, srv.peak_rss_mb())


def test_too_many_header_fields_is_431(srv):
    headers = {f"x-h{i}": "v" for i in range(150)}
    r = httpx.get(srv.url + "/health", headers=headers, timeout=10)
    assert r.status_code == 431 and r.json()["error"]["code"] == "too_many_headers"


SLOW = {
    "silent": [b""],
    "half a head": [HEAD],
    "a trickled head": [b"G", b"E", b"T", b" ", b"/", b"h", b"e", b"a", b"l", b"t", b"h"] * 4,
    "a stalled body": [b"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + b"k" * 32 +
                       b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b"],
    "a trickled body": [b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " +
                        b"k" * 32 + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"]
                       + [b" "] * 40,
}  # fmt: skip


def test_slow_and_silent_clients_are_dropped(srv):
    """Each kind of slow client is closed by its deadline (plus slack), in parallel with the others."""
    results: dict[str, tuple[float, bytes]] = {}

    def client(name: str, pieces: list[bytes]) -> None:
        with _connect(srv) as s:
            t0 = time.monotonic()
            for p in pieces:
                try:
                    s.sendall(p)
                except OSError:
                    break
                s.settimeout(1.0)  # trickle: one piece a second, reading what comes
                try:
                    if s.recv(65536) == b"":
                        results[name] = (time.monotonic() - t0, b"")
                        return
                except TimeoutError:
                    pass
                except OSError:  # reset by the server while we were sending: dropped too
                    results[name] = (time.monotonic() - t0, b"")
                    return
            took, got = _closed_within(s, 30)
            results[name] = (time.monotonic() - t0, got)

    threads = [threading.Thread(target=client, args=item) for item in SLOW.items()]
    for t in threads:
        t.start()
    time.sleep(1)
    assert _health_s(srv) < 2.0  # slow clients do not slow others
    for t in threads:
        t.join(timeout=60)
    for name, (took, got) in results.items():
        assert took < BODY_S + HEADER_S + 5, (name, took)  # closed, not held for ever
        assert got == b"" or got.startswith(b"HTTP/1.1 408"), (name, got[:200])
    assert set(results) == set(SLOW)


def test_idle_connections_do_not_starve_others_and_are_capped(srv):
    """300 idle connections: /health still answers fast; past --max-connections (400), 503 and closed at once."""
    socks = []
    try:
        for _ in range(300):
            socks.append(_connect(srv))
        assert max(_health_s(srv) for _ in range(5)) < 2.0
        for _ in range(120):
            socks.append(_connect(srv))
        over = socks[-1]
        took, got = _closed_within(over, 10)
        assert took < 5 and got.startswith(b"HTTP/1.1 503"), got[:100]
        time.sleep(HEADER_S + 1)  # the idle ones are closed at the head deadline: room again
        assert max(_health_s(srv) for _ in range(3)) < 2.0
    finally:
        for s in socks:
            s.close()


def test_open_files_limit_is_raised_to_the_hard_limit(srv):
    with open(f"/proc/{srv.proc.pid}/limits") as f:
        line = next(ln for ln in f if ln.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line


def test_bodies_in_flight_share_one_budget(srv):
    """Bodies being read count against --max-bodies-in-flight-mb (8 MB): past it, 503 + Retry-After at once."""
    key = {"Authorization": "Bearer " + "k" * 32, "Content-Type": "application/json"}
    head = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {key['Authorization']}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {5 << 20}\r\n\r\n"
    rss0 = srv.peak_rss_mb()
    stop = threading.Event()
    first = _connect(srv)
    first.sendall(head.encode() + b"{")  # a 5 MB body that keeps coming, slowly: it stays in flight

    def keep_sending() -> None:
        while not stop.wait(0.5):
            first.sendall(b" ")

    keeper = threading.Thread(target=keep_sending)
    keeper.start()
    try:
        time.sleep(0.5)
        with _connect(srv) as second:  # 5 MB more declared: over the 8 MB, refused before a byte is read
            second.sendall(head.encode())
            second.settimeout(5)
            got = second.recv(65536)
        assert got.startswith(b"HTTP/1.1 503") and b"retry-after: 2" in got.lower(), got[:300]
        chunked = httpx.post(srv.url + CHAT, content=iter([b"{"] + [b" " * (1 << 20)] * 5), headers=key, timeout=30)
        assert chunked.status_code == 503 and chunked.headers["retry-after"] == "2", chunked.text  # counted
    finally:
        stop.set()
        keeper.join()
        first.close()
    time.sleep(0.5)
    small = httpx.post(srv.url + CHAT, content=b"{}", headers=key, timeout=30)
    assert small.status_code == 400  # the budget came back: read and refused for what it says
    assert srv.peak_rss_mb() - rss0 < 150, (rss0, srv.peak_rss_mb())  # bounded by the budget, not the bodies
