"""``--allow-remote-urls`` downloads (``longvu.serve.remote``): only public addresses on every hop, one deadline,
a size cap while reading, and one answer for every refusal.

The tests run offline: a local HTTP server plays the internet.  ``remote.resolve`` and
``remote.connect`` (the module's seams for DNS and TCP) are replaced so that made-up public
names resolve to public documentation-free addresses and those addresses are routed to the
local server; loopback names keep their real resolution and must be refused.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import FIXTURES
from server_util import local_client
from test_server import assert_error, body

from longvu.serve import remote
from longvu.serve.app import create_app
from longvu.serve.remote import Downloader, RemoteRefused, RemoteTooLarge, public_address
from longvu.serve.settings import ServerSettings

VIDEO = FIXTURES / "videos" / "video3.mp4"
PUBLIC = {"cdn.example": ["93.184.215.14"], "other.example": ["2606:4700::6810:84e5"],
          "mixed.example": ["93.184.215.14", "10.0.0.7"], "inside.example": ["169.254.169.254"]}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        if path == "/video.mp4":
            self._send(200, VIDEO.read_bytes())
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
        elif path == "/big-streamed":  # no Content-Length: read until the connection closes
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"x" * (1 << 20))
            except OSError:
                pass
        elif path == "/slow":  # headers, then a byte a second: only the total deadline stops it
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass
        else:
            self._send(404, b"no")

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def internet(monkeypatch):
    """A local server that the made-up public names in :data:`PUBLIC` lead to; yields its port."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    real_resolve, real_connect = remote.resolve, remote.connect
    routed = {a for addresses in PUBLIC.values() for a in addresses}
    monkeypatch.setattr(remote, "resolve", lambda host, p: PUBLIC.get(host) or real_resolve(host, p))
    monkeypatch.setattr(remote, "connect", lambda address, p, timeout: real_connect(
        "127.0.0.1" if address in routed else address, port if address in routed else p, timeout))  # fmt: skip
    yield port
    srv.shutdown()
    srv.server_close()


def fetch(url: str, max_bytes: int = 1 << 30, deadline_s: float = 30.0) -> bytes:
    dl = Downloader(deadline_s=deadline_s)
    out = io.BytesIO()
    try:
        dl.fetch(url, out, max_bytes)
    finally:
        dl.close()
    return out.getvalue()


@pytest.mark.parametrize(
    "address,public",
    [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
     ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
     ("0.0.0.0", False), ("224.0.0.1", False), ("255.255.255.255", False), ("192.0.2.1", False),
     ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
     ("64:ff9b::a9fe:a9fe", False), ("2002:7f00:1::", False),
     ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False)],
)  # fmt: skip
def test_public_address(address, public):
    assert public_address(ipaddress.ip_address(address)) is public


# Every block the special-purpose registries mark not globally reachable: its first, a middle and its last
# address are refused (whatever Python's own ``is_global`` says on this version).
NOT_GLOBAL = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
              "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
              "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
              "::/128", "::1/128", "::ffff:0:0/96", "::/96", "64:ff9b:1::/48", "100::/64", "2001::/32",
              "2001:2::/48", "2001:10::/28", "2001:20::/28", "2001:db8::/32", "3fff::/20", "5f00::/16",
              "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8"]  # fmt: skip
GLOBAL = ["1.1.1.1", "8.8.8.8", "93.184.215.14", "100.63.255.255", "100.128.0.0", "192.0.1.255", "192.0.3.0",
          "192.31.196.1", "192.52.193.1", "192.175.48.1", "198.17.255.255", "198.20.0.0", "223.255.255.255",
          "2606:4700::1111", "2a00:1450:4001::200e", "2001:1::1", "2001:1::2", "2001:3::1", "2001:4:112::1",
          "2001:200::1", "64:ff9b::808:808", "2002:808:808::1", "2620:4f:8000::1"]  # fmt: skip


def _samples(block: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    net = ipaddress.ip_network(block)
    return [net[0], net[net.num_addresses // 2], net[-1]]


@pytest.mark.parametrize("block", NOT_GLOBAL)
def test_every_not_globally_reachable_block_is_refused(block):
    for ip in _samples(block):
        assert public_address(ip) is False, ip


@pytest.mark.parametrize("address", GLOBAL)
def test_globally_reachable_addresses_are_allowed(address):
    assert public_address(ipaddress.ip_address(address)) is True


def test_embedded_ipv4_is_as_public_as_the_ipv4():
    """NAT64 and 6to4 forms carry an IPv4 address: every non-global IPv4 block stays refused inside them."""
    for block in NOT_GLOBAL:
        net = ipaddress.ip_network(block)
        if net.version == 4:
            for v4 in _samples(block):
                nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | int(v4))
                six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | 1)
                assert not public_address(nat64) and not public_address(six_to_four), v4


def test_a_public_url_is_downloaded(internet):
    assert fetch("http://cdn.example/video.mp4") == VIDEO.read_bytes()
    assert fetch("http://other.example/video.mp4") == VIDEO.read_bytes()  # an IPv6 answer
    assert fetch("http://cdn.example/redirect?http://other.example/video.mp4") == VIDEO.read_bytes()
    assert fetch("http://cdn.example/redirect?/video.mp4") == VIDEO.read_bytes()  # a relative Location


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:{port}/video.mp4", "http://localhost:{port}/video.mp4", "http://[::1]:{port}/video.mp4",
     "http://2130706433:{port}/video.mp4", "http://0x7f000001:{port}/video.mp4", "http://0:{port}/video.mp4",
     "http://mixed.example/video.mp4", "http://inside.example/latest/meta-data/",
     "http://cdn.example/redirect?http://127.0.0.1:{port}/video.mp4",
     "http://cdn.example/redirect?http://inside.example/", "http://cdn.example/redirect?file:///etc/passwd",
     "http://cdn.example/redirect?ftp://cdn.example/video.mp4", "http://cdn.example/loop",
     "http://cdn.example/missing", "file:///etc/passwd", "ftp://cdn.example/video.mp4", "gopher://cdn.example/",
     "http://user:pw@cdn.example/video.mp4", "http://cdn.example/video.mp4\r\nX-Injected: 1", "http:///nohost",
     "http://no-such-host.invalid/video.mp4", "https://cdn.example/video.mp4"],
)  # fmt: skip
def test_refusals(internet, url):
    """Private hosts, on the first hop or after a redirect, other schemes, failures: all one RemoteRefused.

    (The last one: the local server speaks no TLS, so the handshake fails.)
    """
    with pytest.raises(RemoteRefused) as e:
        fetch(url.format(port=internet))
    assert str(e.value) == ""  # nothing that tells one refusal from another


def test_size_cap_while_downloading(internet):
    with pytest.raises(RemoteTooLarge):
        fetch("http://cdn.example/big-declared", max_bytes=1 << 20)
    with pytest.raises(RemoteTooLarge):
        fetch("http://cdn.example/big-streamed", max_bytes=1 << 20)
    assert len(fetch("http://cdn.example/video.mp4", max_bytes=VIDEO.stat().st_size)) == VIDEO.stat().st_size


def test_one_deadline_for_the_whole_download(internet):
    """A server that trickles a byte a second never trips a per-read timeout; the total deadline stops it."""
    with pytest.raises(RemoteRefused):
        fetch("http://cdn.example/slow", deadline_s=2.0)


def test_close_stops_downloads_in_flight(internet):
    dl = Downloader(deadline_s=120.0)
    fut = dl.submit("http://cdn.example/slow", io.BytesIO(), 1 << 20)
    time.sleep(0.5)
    dl.close()
    with pytest.raises(RemoteRefused):
        fut.result(timeout=30)


def test_through_the_server(qwen_model, internet, tmp_path):
    s = ServerSettings(model_name="tiny", allow_remote_urls=True, upload_dir=str(tmp_path / "up"), max_upload_mb=2)
    with local_client(create_app(qwen_model, s)) as c:
        r = c.post("/v1/chat/completions", json=body(url="http://cdn.example/video.mp4"))
        assert r.status_code == 200, r.text
        messages = set()
        for url in (f"http://127.0.0.1:{internet}/video.mp4", "http://inside.example/", "http://cdn.example/missing",
                    f"http://127.0.0.1:{_closed_port()}/", "http://cdn.example/redirect?http://10.0.0.1/"):  # fmt: skip
            r = c.post("/v1/chat/completions", json=body(url=url))
            assert_error(r, 400, "could not download the video from that URL")
            messages.add(r.text)
        assert len(messages) == 1  # the same answer, whatever the reason: no port scanner
        assert_error(c.post("/v1/chat/completions", json=body(url="http://cdn.example/big-streamed")), 413, "limit")
        assert list((tmp_path / "up").iterdir()) == []  # every download's file is gone after its request


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
