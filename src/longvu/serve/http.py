"""The HTTP layer under the app, bounded before any request reaches it (before the API key too).

uvicorn's own settings where it has them: the h11 parser (not httptools, which has no limit
on a request head) with ``h11_max_incomplete_event_size`` bounding the request line and
headers, ``timeout_keep_alive`` for idle connections between requests, the listen
``backlog``.  What uvicorn lacks is added by :class:`GuardedH11Protocol`:

* a connection cap: a connection over ``max_connections`` is answered 503 and closed at
  once, so that idle clients cannot use up the process's file descriptors;
* a head deadline: a connection must send a whole request head within
  ``header_timeout_s`` of opening (or of its previous answer), else it is closed; a client
  that sends nothing, or one endless header a byte at a time, holds a socket that long.

Body deadlines (a client that stops sending its body, or trickles it) are enforced per
request by :class:`~longvu.serve.guard.RequestGuard`, which sees the body as it arrives.
"""

from __future__ import annotations

import resource

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for each request head."""

    max_connections = 1024
    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer = None
        if len(self.connections) > self.max_connections:
            transport.write(_BUSY)
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self.head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        """No whole request head in time (or a refused body still coming): close the connection."""
        self.head_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE and not (self.cycle is None or self.cycle.response_complete):
            self._disarm()  # a request is in: its body has deadlines of its own

    def on_response_complete(self) -> None:
        self._arm()  # the next head (or the rest of a refused body) has the same deadline
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_for(settings: ServerSettings) -> type[GuardedH11Protocol]:
    """:class:`GuardedH11Protocol` with ``settings``' limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"max_connections": settings.max_connections, "header_timeout_s": settings.header_timeout_s})  # fmt: skip


def uvicorn_config(app, settings: ServerSettings, host: str, port: int, **kw) -> uvicorn.Config:
    """The uvicorn configuration that bounds the HTTP layer as ``settings`` say."""
    return uvicorn.Config(app, host=host, port=port, http=protocol_for(settings),
                          h11_max_incomplete_event_size=settings.max_header_kb * 1024,
                          timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)), backlog=settings.backlog,
                          timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)), **kw)  # fmt: skip


def raise_open_files_limit(cap: int = 1 << 20) -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit (at most ``cap``); ``(before, after)``.

    Each connection holds a file descriptor: a soft limit of 256 or 1024 (common defaults)
    would refuse clients long before ``--max-connections``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft
