"""``longvu serve``'s security and limit options, and their :class:`~longvu.serve.app.ServerSettings` fields.

Kept apart from ``cli.py`` so that the server's policy lives in one place; importing this
module is cheap (no FastAPI).  README "Security model" describes each option.
"""

from __future__ import annotations

import argparse

from ..serve.guard import default_allowed_hosts
from ..serve.settings import ServerSettings


def _number(kind, minimum: float = 0.0, name: str = "a number"):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not value > minimum:
            raise argparse.ArgumentTypeError(f"expected {name} above {minimum:g}, got {text!r}")
        return value

    return parse


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return names


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the security and limit options to the ``serve`` subcommand's parser."""
    positive, count = _number(float), _number(int, name="a whole number")
    g = parser.add_argument_group("security and limits (see README, Security model)")
    g.add_argument("--allowed-hosts", type=_names, metavar="NAMES",
                   help="Host header names the server answers, comma-separated ('*' any, '.example.com' a domain); "
                        "default: localhost, 127.0.0.1, [::1] and the --host address")  # fmt: skip
    g.add_argument(
        "--cors-origins",
        type=_names,
        default=(),
        metavar="ORIGINS",
        help="origins whose web pages may call the API (e.g. https://app.example.com); default none",
    )
    g.add_argument("--docs", action="store_true", help="serve /docs, /redoc and /openapi.json (behind the key)")
    g.add_argument("--max-pixels", type=count, default=ServerSettings.max_pixels,
                   help="largest frame, width x height (4096x2160 by default); above it, 413")  # fmt: skip
    g.add_argument("--max-video-frames", type=count, default=ServerSettings.max_video_frames,
                   help="most decoded frames per video (4 hours at 60 fps by default); above it, 413")  # fmt: skip
    g.add_argument(
        "--max-json-mb",
        type=positive,
        default=ServerSettings.max_json_mb,
        help="largest JSON request body, data: URLs included",
    )
    g.add_argument(
        "--max-upload-total-mb",
        type=positive,
        default=ServerSettings.max_upload_total_mb,
        help="all stored uploads together, with data: URLs and downloads in flight",
    )
    g.add_argument("--max-upload-files", type=count, default=ServerSettings.max_upload_files, metavar="N",
                   help="stored files at most, uploads and files in flight together")  # fmt: skip
    g.add_argument(
        "--max-image-frames-mb",
        type=positive,
        default=ServerSettings.max_image_frames_mb,
        help="one request's image frames, decoded to RGB",
    )
    g.add_argument(
        "--upload-ttl",
        type=positive,
        default=ServerSettings.upload_ttl_s,
        metavar="SECONDS",
        help="uploads older than this are removed",
    )
    _add_http_options(parser, {"count": count, "positive": positive})
    g.add_argument(
        "--remote-timeout",
        type=positive,
        default=ServerSettings.remote_timeout_s,
        metavar="SECONDS",
        help="deadline of one --allow-remote-urls download, redirects included",
    )
    add_live_options(parser)


def add_live_options(parser: argparse.ArgumentParser) -> None:
    """Bounds on live sessions (``POST /v1/live``: a video streamed in chunks while it is asked about)."""
    g = parser.add_argument_group("live sessions (see docs/live.md)")
    g.add_argument("--max-live-sessions", type=_number(int, -1, "a whole number"),
                   default=ServerSettings.max_live_sessions, help="live streams followed at once; 0 turns them off")  # fmt: skip
    g.add_argument("--live-idle", type=_number(float), default=ServerSettings.live_idle_s, metavar="SECONDS",
                   help="a live session with no chunk and no question for this long is closed and deleted")  # fmt: skip


# The HTTP layer's limits (longvu.serve.http, longvu.serve.guard): option, ServerSettings field, type, help.
# Their defaults are ServerSettings' (one home per default); an option left out keeps it.
HTTP_OPTIONS = [
    ("--max-connections", "max_connections", "count", "open connections at most; one more is answered 503 and closed"),
    ("--backlog", "backlog", "count", "connections the kernel queues before the server accepts them"),
    ("--max-header-kb", "max_header_kb", "count", "request line and headers together, in KB; above it, 400"),
    ("--max-headers", "max_headers", "count", "header fields per request; above it, 431"),
    ("--header-timeout", "header_timeout_s", "positive", "seconds a connection has to send a whole request head"),
    ("--keep-alive-timeout", "keep_alive_timeout_s", "positive", "seconds an idle connection is kept between requests"),
    ("--body-idle-timeout", "body_idle_timeout_s", "positive", "seconds a request body may send nothing; then 408"),
    ("--body-timeout", "body_timeout_s", "positive", "seconds a whole request body may take; then 408"),
    ("--max-bodies-in-flight-mb", "max_bodies_in_flight_mb", "positive",
     "chat bodies being read and parsed, all requests together; above it, 503 + Retry-After"),
]  # fmt: skip


def _add_http_options(parser: argparse.ArgumentParser, kinds: dict) -> None:
    from ..serve.settings import ServerSettings

    g = parser.add_argument_group("HTTP layer, before the API key (see docs/security.md)")
    for flag, field, kind, text in HTTP_OPTIONS:
        default = ServerSettings.__dataclass_fields__[field].default
        g.add_argument(flag, dest=field, type=kinds[kind], default=None, help=f"{text} (default {default:g})")


def settings_kwargs(args: argparse.Namespace) -> dict:
    """The :class:`~longvu.serve.app.ServerSettings` fields these options set."""
    hosts = args.allowed_hosts or default_allowed_hosts(args.host, bool(args.api_key))
    http = {field: getattr(args, field) for _, field, _, _ in HTTP_OPTIONS if getattr(args, field, None) is not None}
    return {**http, "allowed_hosts": hosts, "cors_origins": args.cors_origins, "docs": args.docs,
            "max_pixels": args.max_pixels, "max_video_frames": args.max_video_frames,
            "max_json_mb": args.max_json_mb, "max_upload_total_mb": args.max_upload_total_mb,
            "max_upload_files": args.max_upload_files,
            "max_image_frames_mb": args.max_image_frames_mb, "upload_ttl_s": args.upload_ttl,
            "remote_timeout_s": args.remote_timeout,
            "max_live_sessions": args.max_live_sessions, "live_idle_s": args.live_idle}  # fmt: skip


def warnings(args: argparse.Namespace, hosts: tuple[str, ...]) -> list[str]:
    """What an operator should hear about these settings at start-up."""
    out = []
    if (
        args.allowed_hosts is None
        and hosts == default_allowed_hosts("0.0.0.0", False)
        and args.host in ("0.0.0.0", "::")
    ):
        out.append(f"warning: listening on {args.host} without --api-key: only the host names "
                   f"{', '.join(hosts)} are answered; pass --allowed-hosts NAMES for others")  # fmt: skip
    if "*" in args.cors_origins:
        out.append("warning: --cors-origins '*' lets every web page call this server")
    return out
