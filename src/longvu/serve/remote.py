"""Downloads for ``--allow-remote-urls``, safe against server-side request forgery.

A request's URL is fetched only if every hop goes to the public internet:

* ``http`` and ``https`` only, no credentials in the URL;
* the host is resolved once per hop and *every* address it resolves to must be globally
  reachable: each block the special-purpose registries (RFC 6890 and its updates) mark
  otherwise is listed here and refused, IPv6 forms embedding such an IPv4 address too;
* the connection goes to the address that was checked (no second lookup that a DNS
  rebinding answer could change), with TLS verified against the host name;
* redirects are followed here, each one checked the same way, at most ``max_redirects``;
* one deadline covers the whole download (lookups, connects, redirects, reading), and the
  body is refused once it passes ``max_bytes`` (before, if ``Content-Length`` says so).

Every refusal and failure gives the caller the same :class:`RemoteRefused` (the server's
one message), so the server cannot be used to map hosts and ports it can reach.  Written
on ``http.client`` because urllib cannot connect to a pre-checked address nor stop at
each redirect; downloads run on the :class:`Downloader`'s own threads, apart from the model.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)

# The IANA special-purpose address registries (RFC 6890, updated by RFC 8190 and later
# assignments): every block whose "globally reachable" is False, or that is no unicast
# destination a download could mean.  Written out rather than trusting ``ip.is_global``,
# whose answer changes between Python versions (3.11 counts 192.0.0.8-192.0.0.255 as public).
_V4_NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8",  # this network (RFC 791)
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local (cloud metadata services live here)
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890); its two anycast exceptions are no video host either
    "192.0.2.0/24",  # documentation TEST-NET-1 (RFC 5737)
    "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526)
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "198.51.100.0/24",  # documentation TEST-NET-2
    "203.0.113.0/24",  # documentation TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved (RFC 1112), 255.255.255.255 broadcast included
))  # fmt: skip
_V6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")  # outside it: loopback, ULA, link-local, multicast, ...
_V6_NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in (
    "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 included (its exceptions: _V6_EXCEPTIONS)
    "2001:db8::/32",  # documentation (RFC 3849)
    "3fff::/20",  # documentation (RFC 9637)
))  # fmt: skip
# Blocks of 2001::/23 the registry marks globally reachable and that name real hosts (anycast services,
# AMT relays, AS112 servers).  ORCHIDv2 (2001:20::/28) and drone IDs (2001:30::/28) are identifiers,
# not locators (RFC 7343): refused.
_V6_EXCEPTIONS = tuple(ipaddress.ip_network(n) for n in (
    "2001:1::1/128",  # port control protocol anycast (RFC 7723)
    "2001:1::2/128",  # TURN anycast (RFC 8155)
    "2001:3::/32",  # AMT (RFC 7450)
    "2001:4:112::/48",  # AS112-v6 (RFC 7535)
))  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052): as public as its IPv4
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")  # 6to4 (RFC 3056): as public as the IPv4 it embeds


class RemoteRefused(Exception):
    """The URL was refused or could not be fetched (deliberately without saying why)."""


class RemoteTooLarge(Exception):
    """The remote file is larger than the limit."""


def public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is globally reachable by the special-purpose registries (see the tables above).

    IPv6 must be global unicast (``2000::/3``) outside the non-global blocks, or the NAT64
    or 6to4 form of a public IPv4 address; IPv4-mapped, IPv4-compatible, local-use NAT64
    (``64:ff9b:1::/48``), discard-only and every other form outside ``2000::/3`` are refused.
    """
    if ip.version == 4:
        return not any(ip in net for net in _V4_NOT_GLOBAL)
    if ip in _NAT64:
        return public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip not in _V6_GLOBAL_UNICAST:
        return False
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour is not None and public_address(ip.sixtofour)
    if any(ip in net for net in _V6_EXCEPTIONS):
        return True
    return not any(ip in net for net in _V6_NOT_GLOBAL)


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a module function, so that tests can stand in for DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


def connect(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to the checked ``address`` (a module function, so that tests can route it)."""
    return socket.create_connection((address, port), timeout=timeout)


class Downloader:
    """Runs downloads on its own threads (never the model's), each under one deadline and size cap."""

    def __init__(self, workers: int = 4, *, deadline_s: float = 120.0, max_redirects: int = 5) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="longvu-download")
        self.dns = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="longvu-dns")
        self.deadline_s, self.max_redirects = deadline_s, max_redirects
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False

    def submit(self, url: str, out, max_bytes: int):
        """A future of the number of bytes written to the open file ``out``."""
        return self.pool.submit(self.fetch, url, out, max_bytes)

    def fetch(self, url: str, out, max_bytes: int) -> int:
        """Download ``url`` into ``out`` (blocking).  Raises RemoteRefused or RemoteTooLarge."""
        deadline = time.monotonic() + self.deadline_s
        mine: list[socket.socket] = []  # this download's sockets: shut at the deadline, whatever they wait for
        watchdog = threading.Timer(self.deadline_s, _shut, args=(mine,))
        watchdog.daemon = True
        watchdog.start()
        try:
            for _ in range(self.max_redirects + 1):
                response, conn, sock = self._request(_parse(url), deadline, mine)
                try:
                    if response.status in REDIRECTS:
                        url = urljoin(url, _location(response))
                        continue
                    if response.status != 200:
                        raise RemoteRefused()
                    size = _copy(response, sock, out, max_bytes, deadline)
                    if self.closed or time.monotonic() >= deadline:  # a shut socket reads as a clean end
                        raise RemoteRefused()
                    return size
                finally:
                    response.close()
                    conn.close()
            raise RemoteRefused()  # too many redirects
        except (RemoteRefused, RemoteTooLarge):
            raise
        except (OSError, http.client.HTTPException, ValueError, UnicodeError, FutureTimeout):
            raise RemoteRefused() from None  # one answer for every failure: no oracle
        finally:
            watchdog.cancel()
            with self.lock:
                self.sockets.difference_update(mine)

    def _request(self, target: tuple[str, str, int, str], deadline: float, mine: list):
        scheme, host, port, path = target
        address = self._checked_address(host, port, deadline)
        sock = connect(address, port, _remaining(deadline))
        self._track(sock, mine)
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            self._track(sock, mine)
        conn = (http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection)(host, port)
        conn.sock = sock  # already connected, to the address that was checked
        conn.request("GET", path, headers={"User-Agent": "longvu", "Accept-Encoding": "identity"})
        sock.settimeout(_remaining(deadline))
        # the socket is returned too: getresponse() drops the connection's reference when the answer closes it
        return conn.getresponse(), conn, sock

    def _track(self, sock: socket.socket, mine: list) -> None:
        with self.lock:
            if self.closed:
                sock.close()
                raise RemoteRefused()
            self.sockets.add(sock)
        mine.append(sock)

    def _checked_address(self, host: str, port: int, deadline: float) -> str:
        addresses = self.dns.submit(resolve, host, port).result(timeout=_remaining(deadline))
        parsed = [ipaddress.ip_address(a.split("%")[0]) for a in addresses]
        if not parsed or not all(public_address(ip) for ip in parsed):
            raise RemoteRefused()
        return str(parsed[0])

    def close(self) -> None:
        """Stop: in-flight downloads fail at once (their sockets are shut), no new one starts."""
        with self.lock:
            self.closed = True
            _shut(self.sockets)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.dns.shutdown(wait=False, cancel_futures=True)


def _shut(sockets) -> None:
    for sock in list(sockets):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _parse(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path?query)`` of an http(s) URL without credentials, else RemoteRefused."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise RemoteRefused()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or parts.username is not None or parts.password is not None:
        raise RemoteRefused()
    host = parts.hostname
    if not host:
        raise RemoteRefused()
    port = parts.port or (443 if scheme == "https" else 80)
    host = host.encode("idna").decode("ascii") if not host.isascii() else host
    path = parts.path or "/"
    return scheme, host, port, path + (f"?{parts.query}" if parts.query else "")


def _location(response) -> str:
    location = response.getheader("Location")
    if not location:
        raise RemoteRefused()
    response.read(64 << 10)  # a redirect's own body is not wanted
    return location


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise RemoteRefused()
    return left


def _copy(response, sock, out, max_bytes: int, deadline: float) -> int:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise RemoteTooLarge()
    size = 0
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = response.read1(1 << 20)  # whatever has come: read() would wait for the whole MB
        if not chunk:
            if declared is not None and declared.strip().isdigit() and size != int(declared):
                raise RemoteRefused()  # cut short
            return size
        size += len(chunk)
        if size > max_bytes:
            raise RemoteTooLarge()
        out.write(chunk)
