"""The server's limits and policies (:class:`ServerSettings`); every default can be changed on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.intake import MediaLimits
from .guard import LOOPBACK_HOSTS


@dataclass
class ServerSettings:
    """Limits and policies of the server; every default can be changed on the command line.

    README "Security model" says what each one guards against.
    """

    model_name: str = "longvu"
    allowed_local_media_path: str | None = None
    allow_remote_urls: bool = False
    api_key: str | None = None
    max_upload_mb: float = 1024.0  # one uploaded, data: URL or downloaded file
    max_upload_total_mb: float = 10240.0  # every stored file together (uploads; data: URLs and downloads in flight)
    max_upload_files: int = 10_000  # stored files at most (uploads, and data: URLs and downloads in flight)
    max_json_mb: float = 256.0  # a JSON request body, data: URLs included
    max_image_frames_mb: float = 2048.0  # one request's image frames, decoded (RGB), held together
    max_video_seconds: float = 4 * 3600.0  # by the stream's own clock, while decoding
    max_video_frames: int = 4 * 3600 * 60  # decoded frames of one video (4 hours at 60 fps)
    max_pixels: int = 4096 * 2160  # width x height of one frame (DCI 4K)
    max_messages: int = 1024
    max_text_chars: int = 1_000_000  # all text of one request
    request_timeout_s: float = 1800.0
    queue_size: int = 8
    max_waiting: int = 64  # requests waiting for a queue slot at most (see server_media.client_wait_s)
    max_new_tokens: int = 512
    max_tokens_limit: int = 4096
    upload_dir: str | None = None
    upload_ttl_s: float = 24 * 3600.0
    sweep_interval_s: float = 60.0  # how often files older than upload_ttl_s are removed
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names answered ("*": any)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (none: CORS off)
    docs: bool = False  # /docs, /redoc and /openapi.json (behind the API key when there is one)
    remote_timeout_s: float = 120.0  # one download, every hop and byte included
    max_redirects: int = 5
    max_live_sessions: int = 4  # live streams followed at once (POST /v1/live)
    live_idle_s: float = 600.0  # a live session with no chunk and no question for this long is closed
    shutdown_timeout_s: float = 5.0  # after SIGTERM/SIGINT, running jobs are cancelled; this long at most
    # The HTTP layer, before the API key (longvu.serve.http, longvu.serve.guard):
    max_connections: int = 1024  # open connections at most; one more is answered 503 and closed
    backlog: int = 2048  # connections the kernel queues before they are accepted
    max_header_kb: int = 16  # request line and headers together (h11's limit); above it, 400 and closed
    max_headers: int = 100  # header fields in one request; above it, 431
    header_timeout_s: float = 10.0  # a connection's whole request head must arrive within this (else closed)
    keep_alive_timeout_s: float = 5.0  # an idle connection between requests is closed after this
    body_idle_timeout_s: float = 30.0  # a body that sends nothing for this long: 408, connection closed
    body_timeout_s: float = 900.0  # a whole body (a 1 GB upload at 1.2 MB/s) must arrive within this: 408
    max_bodies_in_flight_mb: float = 512.0  # chat bodies being read and parsed, all requests together: 503 above

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def limits(self) -> MediaLimits:
        """What one video may cost to decode (enforced while decoding: 413 above)."""
        return MediaLimits(max_seconds=self.max_video_seconds, max_frames=self.max_video_frames,
                           max_pixels=self.max_pixels)  # fmt: skip
