"""The server's front door: checks every HTTP request passes before a route sees it.

Plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would hide client disconnects
from the routes, and disconnects are what cancel a running job), in this order:

1. :class:`HostGuard`: the ``Host`` header must name this server (``--allowed-hosts``;
   loopback names for a server on a loopback address).  A web page that re-points its own
   domain at 127.0.0.1 (DNS rebinding) sends its own name and gets a 421.
2. CORS (optional, ``--cors-origins``): Starlette's ``CORSMiddleware`` answers preflights
   for the listed origins.  Off by default: no cross-origin page may read an answer.
3. :class:`RequestGuard`:

   * a request that carries an ``Origin`` other than this server's own (or a listed CORS
     origin) may only read (``GET``/``HEAD``): a cross-site form or ``fetch`` that posts
     to the server is refused (403) whatever its content type;
   * the API key, compared in constant time, on every route but the page (``/``, its
     ``/static/`` files) and ``/health``;
   * the body's media type (``application/json`` for JSON routes, ``multipart/form-data``
     for uploads; 415 otherwise), and its size while it streams in: a declared
     ``Content-Length`` over the route's limit is refused before a byte is read, and a
     body that grows past it stops with a 413 at that point.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
PUBLIC_PATHS = ("/", "/health")  # with /static/...: what a browser may load before it has the key
SMALL_BODY = 64 << 10  # any route without a body rule (GET, DELETE, unknown paths)
MULTIPART_SLACK = 64 << 10  # a multipart body's boundaries, headers and small fields, beside the file


class BodyRefused(Exception):
    """Raised from ``receive`` once a body breaks a rule; answered with ``error`` (see :class:`RequestGuard`)."""

    def __init__(self, error: tuple, headers: dict | None = None) -> None:
        super().__init__(error[1])
        self.error, self.headers = error, headers


@dataclass(frozen=True)
class BodyRule:
    """What a route's body must be: its media type (``None``: any) and its largest size in bytes.

    ``shown_mb`` is the limit an error quotes (an upload's file limit, without the multipart framing).
    """

    media_type: str | None
    limit: int
    what: str = "the request body"
    shown_mb: float | None = None


async def send_error(send, status: int, message: str, code: str, type_: str = "invalid_request_error",
                     headers: dict | None = None) -> None:  # fmt: skip
    """An error in OpenAI's JSON shape, sent straight from the middleware."""

    body = json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


# ---------------------------------------------------------------------- Host
def host_name(value: str) -> str:
    """``Host`` header (or allow-list entry) without its port, lower case: ``[::1]:8000`` -> ``[::1]``."""
    value = value.strip().lower().rstrip(".")
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    name, sep, port = value.rpartition(":")
    return name.rstrip(".") if sep and port.isdigit() else value


def default_allowed_hosts(bind: str, has_key: bool) -> tuple[str, ...]:
    """The allow-list for a server bound to ``bind`` when ``--allowed-hosts`` is not given.

    Loopback names, plus the bound name or address itself.  A wildcard bind (``0.0.0.0``,
    ``::``) accepts any name only behind an API key: without one, a rebinding page would
    reach it under any name.
    """
    bind = bind.strip().lower()
    try:
        ip = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        return tuple(dict.fromkeys((*LOOPBACK_HOSTS, host_name(bind))))
    if ip.is_unspecified:
        return ("*",) if has_key else LOOPBACK_HOSTS
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, literal)))


class HostGuard:
    """Answer 421 to a request whose ``Host`` is not in ``allowed`` (``*``: any; ``.example.com``: it and below)."""

    def __init__(self, app, allowed: tuple[str, ...] | list[str]) -> None:
        self.app = app
        entries = [host_name(h) if h not in ("*",) and not h.startswith(".") else h.lower() for h in allowed]
        self.any = "*" in entries
        self.exact = {h for h in entries if not h.startswith(".")}
        self.suffixes = tuple(h for h in entries if h.startswith("."))

    def allows(self, host: str | None) -> bool:
        if host is None:
            return False
        name = host_name(host)
        return self.any or name in self.exact or any(name.endswith(s) or name == s[1:] for s in self.suffixes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self.allows(_header(scope, b"host")):
            await send_error(send, 421, "this server does not answer to that host name (see --allowed-hosts)",
                             "host_not_allowed")  # fmt: skip
            return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------- the rest
def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer_ok(scope, digest: bytes) -> bool:
    """Whether the request's ``Authorization: Bearer KEY`` is the key (constant time, whatever its length)."""
    scheme, _, token = (_header(scope, b"authorization") or "").strip().partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    return hmac.compare_digest(hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest(), digest)


def same_origin(origin: str, scope) -> bool:
    """Whether ``origin`` is this server's own (the scheme it was reached by, and its ``Host``)."""
    host = _header(scope, b"host")
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(host) and parts.scheme == scope.get("scheme", "http") and parts.netloc.lower() == host.strip().lower()


class RequestGuard:
    """Origin, API key, media type and body size (see the module docstring).

    ``rules`` maps ``(method, path)`` to a :class:`BodyRule`; other requests may carry at
    most :data:`SMALL_BODY` bytes.
    """

    def __init__(self, app, *, rules: dict[tuple[str, str], BodyRule], api_key: str | None = None,
                 cors_origins: tuple[str, ...] = (), deadlines: tuple[float, float] = (30.0, 900.0),
                 max_headers: int = 100) -> None:  # fmt: skip
        self.app, self.rules = app, rules
        self.idle_s, self.body_s = deadlines  # no byte for idle_s, or the whole body not in body_s: 408
        self.max_headers = max_headers
        self.digest = key_digest(api_key) if api_key else None
        self.cors_any = "*" in cors_origins
        self.cors = {o.rstrip("/").lower() for o in cors_origins}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await send_error(send, *refusal)
            return
        rule = self._rule(scope["method"], scope["path"]) or BodyRule(None, SMALL_BODY)
        await self._limited(scope, receive, send, rule)

    def _refusal(self, scope) -> tuple | None:
        """``(status, message, code, type)`` if the request is refused before its body is read."""
        method, path = scope["method"], scope["path"]
        if len(scope.get("headers") or ()) > self.max_headers:
            return 431, f"more than {self.max_headers} header fields", "too_many_headers", "invalid_request_error"
        origin = _header(scope, b"origin")
        if origin is not None and method not in ("GET", "HEAD") and not self._origin_ok(origin, scope):
            return 403, "cross-origin requests are not allowed (see --cors-origins)", "origin_not_allowed", \
                "permission_error"  # fmt: skip
        public = method in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith("/static/"))
        if self.digest is not None and not public and not bearer_ok(scope, self.digest):
            return 401, "missing or wrong API key (send it as 'Authorization: Bearer KEY')", "invalid_api_key", \
                "authentication_error"  # fmt: skip
        rule = self._rule(method, path)
        if rule is not None and rule.media_type is not None:
            mime = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if mime != rule.media_type:
                return 415, f"send {rule.what} as {rule.media_type} (got {mime or 'no Content-Type'})", \
                    "unsupported_media_type", "invalid_request_error"  # fmt: skip
        limit = rule.limit if rule is not None else SMALL_BODY
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            return too_large(rule)
        return None

    def _rule(self, method: str, path: str) -> BodyRule | None:
        """The route's rule: by its path, else by its parent's ``/*`` (a path that ends in an id)."""
        return self.rules.get((method, path)) or self.rules.get((method, path.rpartition("/")[0] + "/*"))

    def _origin_ok(self, origin: str, scope) -> bool:
        return same_origin(origin, scope) or self.cors_any or origin.rstrip("/").lower() in self.cors

    async def _limited(self, scope, receive, send, rule: BodyRule) -> None:
        """Run the app with ``receive`` counting body bytes (past ``rule.limit``, a 413) under the body
        deadlines (no byte for ``idle_s``, or not all of it within ``body_s`` of the head: a 408 that
        closes the connection).  Once the body is complete, ``receive`` waits for a disconnect unbounded."""
        received, started, complete = 0, False, False
        deadline = time.monotonic() + self.body_s

        async def counted():
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.idle_s, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                raise BodyRefused(too_slow(), {"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > rule.limit:
                    raise BodyRefused(too_large(rule))
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyRefused as e:
            if not started:
                await send_error(send, *e.error, headers=e.headers)


def too_slow() -> tuple:
    return 408, "the request body came too slowly (see --body-idle-timeout, --body-timeout)", "request_timeout", \
        "invalid_request_error"  # fmt: skip


def too_large(rule: BodyRule | None) -> tuple:
    rule = rule or BodyRule(None, SMALL_BODY)
    mb = rule.shown_mb if rule.shown_mb is not None else rule.limit / (1 << 20)
    return 413, f"{rule.what} is larger than this server's limit ({mb:.3g} MB)", "request_too_large", \
        "invalid_request_error"  # fmt: skip
