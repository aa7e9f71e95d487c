"""``longvu serve``: the OpenAI-compatible HTTP server and its web page (:mod:`longvu.serve.app`).

New server options go in :func:`add_server_options` (one ``add_argument`` each, with a help
string; the default is shown by the help formatter) and into :func:`server_settings`,
which maps them onto :class:`~longvu.serve.app.ServerSettings`; checks that need no model go in
:func:`check_server_args`.
"""

from __future__ import annotations

import argparse
import os

from ..errors import LongVUError
from . import common as c

COMMANDS = {"serve": "an OpenAI-compatible HTTP server with a web page"}


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help=COMMANDS["serve"],
                       description="Serve the model over HTTP: POST /v1/chat/completions (OpenAI's shape, with "
                                   "video_url parts), /v1/files uploads, and a web page at /.",
                       epilog=c.examples(
                           c.TINY_NOTE,
                           f"longvu serve --model {c.TINY_MODEL} --device cpu",
                           "# then: longvu ask VIDEO QUESTION --server http://127.0.0.1:8000",
                           "longvu serve --model /models/LongVU_Qwen2_7B --device cuda --allowed-local-media-path /data/videos",
                           "longvu serve --host 0.0.0.0 --api-key \"$KEY\" --replicas 4        # Ray Serve, 4 GPUs",
                       ))  # fmt: skip
    c.add_model_options(p)
    add_server_options(p.add_argument_group("server"))
    from .serve_options import add_options as add_security_options

    add_security_options(p)
    r = p.add_argument_group("scale-out (Ray Serve)")
    r.add_argument("--replicas", type=c.positive_int, metavar="N",
                   help="run N model replicas as a Ray Serve deployment (default: one model in this process)")  # fmt: skip
    r.add_argument("--ray", metavar="ADDRESS",
                   help="Ray cluster for --replicas: 'auto', an address, or 'local' (default: a local cluster)")  # fmt: skip


def add_server_options(n) -> None:
    """The server's own options (an argparse group)."""
    from ..serve.settings import ServerSettings  # the defaults' one home

    n.add_argument("--host", default="127.0.0.1", help="address to listen on")
    n.add_argument("--port", type=c.port, default=8000, help="port to listen on (1-65535)")
    n.add_argument("--served-model-name", metavar="NAME", help="model id clients send (default: the --model folder's name)")  # fmt: skip
    n.add_argument("--allowed-local-media-path", metavar="DIR", help="folder whose videos requests may name by path (default: none)")  # fmt: skip
    n.add_argument("--allow-remote-urls", action="store_true", help="let requests name http(s) video URLs")
    n.add_argument("--api-key", default=os.environ.get("LONGVU_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but the page and /health "
                        "(default: $LONGVU_API_KEY, else none)")  # fmt: skip
    n.add_argument("--max-upload-mb", type=c.positive_number, default=ServerSettings.max_upload_mb, metavar="MB", help="largest video accepted")  # fmt: skip
    n.add_argument("--max-video-seconds", type=c.positive_number, default=ServerSettings.max_video_seconds, metavar="S", help="longest video accepted")  # fmt: skip
    n.add_argument("--request-timeout", type=c.positive_number, default=1800.0, metavar="S", help="seconds before a request is abandoned")  # fmt: skip
    n.add_argument("--queue-size", type=c.positive_int, default=8, metavar="N", help="requests waiting at most (then 503)")  # fmt: skip
    n.add_argument("--max-new-tokens", type=c.positive_int, default=512, metavar="N", help="answer length when a request does not say")  # fmt: skip
    n.add_argument("--max-tokens-limit", type=c.positive_int, default=4096, metavar="N",
                   help="largest max_tokens a request may ask for; above it, 400")  # fmt: skip
    n.add_argument("--upload-dir", metavar="DIR", help="where uploads are kept (default: a private temporary folder)")
    n.add_argument("--quiet", "-q", action="store_true", help="nothing on stderr but errors and the server's log")


def check_server_args(args: argparse.Namespace) -> None:
    if args.api_key is not None and not args.api_key.strip():
        # an empty key would turn authentication off without a word: refused before the model loads
        where = "LONGVU_API_KEY" if args.api_key == os.environ.get("LONGVU_API_KEY") else "--api-key"
        raise LongVUError(f"{where} is empty: give a key, or leave it unset to serve without one")
    if args.allowed_local_media_path and not os.path.isdir(args.allowed_local_media_path):
        raise LongVUError(f"--allowed-local-media-path {args.allowed_local_media_path}: not a folder")
    if args.upload_dir:
        c.check_output_dir(args.upload_dir, "--upload-dir")
    if args.ray and not args.replicas:
        raise LongVUError("--ray needs --replicas N")
    check_port_free(args.host, args.port)


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` and let go, so a port in use is refused before the model loads (as the
    web server would bind it: SO_REUSEADDR, so a port whose last connections linger is not refused)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise LongVUError(f"--host {host}: not an address this machine can listen on ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise LongVUError(
                    f"--port {port}: already in use on {host} (another server? pick another --port)"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise LongVUError(f"--host {host}: not an address of this machine") from None
            raise LongVUError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def server_settings(args: argparse.Namespace):
    from ..serve.settings import ServerSettings
    from . import serve_options

    return ServerSettings(
        model_name=args.served_model_name or str(args.model).rstrip("/").split("/")[-1],
        allowed_local_media_path=args.allowed_local_media_path,
        allow_remote_urls=args.allow_remote_urls,
        api_key=args.api_key,
        max_upload_mb=args.max_upload_mb,
        max_video_seconds=args.max_video_seconds,
        request_timeout_s=args.request_timeout,
        queue_size=args.queue_size,
        max_new_tokens=args.max_new_tokens,
        max_tokens_limit=args.max_tokens_limit,
        upload_dir=args.upload_dir,
        **serve_options.settings_kwargs(args),  # security and limits
    )


def run(args: argparse.Namespace) -> int:
    from ..config import check_set_options
    from .common import load_options

    overrides = check_set_options(args.overrides)
    check_server_args(args)
    settings = server_settings(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        c.log(args, f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it")
    from . import serve_options

    for warning in serve_options.warnings(args, settings.allowed_hosts):
        c.log(args, warning)
    if args.replicas:
        from ..serve import replicas as serve_ray

        load = {"device": args.device, "dtype": args.dtype, "siglip": args.siglip, "dinov2": args.dinov2,
                "overrides": overrides, "options": load_options(args), "adapter": args.adapter}  # fmt: skip
        serve_ray.run(args.model, load, settings, host=args.host, port=args.port, replicas=args.replicas,
                      address=args.ray, cache_dir="" if args.no_cache else args.cache_dir)  # fmt: skip
        return 0
    from ..serve.app import serve
    from ..serve.http import raise_open_files_limit

    before, after = raise_open_files_limit()  # one descriptor per connection: see docs/security.md
    if after != before:
        c.log(args, f"open-file limit raised from {before} to {after} (the hard limit)")
    if after < settings.max_connections + 64:
        c.log(args, f"warning: the open-file limit ({after}) is below --max-connections ({settings.max_connections}) "
                    "plus what the server itself opens; raise it (ulimit -n) or lower --max-connections")  # fmt: skip
    lv = c.load_model(args, overrides, progress=False)
    serve(lv, settings, args.host, args.port)
    return 0
