"""``longvu ask --server URL``: ask a running ``longvu serve`` instead of loading a model here.

The server holds the loaded model and the feature cache, so a question costs one HTTP
request: this process imports neither torch nor transformers.  The video goes as its
absolute path when the server allows it (``--allowed-local-media-path``); otherwise it is
uploaded (``POST /v1/files``) and deleted when the answer is complete.  The answer streams
to stdout; the server's report (frames kept, tokens per stage) goes to stderr.  An API key
is read from ``$LONGVU_API_KEY``.

The standard library is enough for one JSON request and its Server-Sent Events, so no HTTP
client is imported (each import would cost start-up time, the point of this path).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from ..config import DEFAULT_MODEL
from ..errors import LongVUError
from .common import check_generation_args, log

# Options that act on a model loaded here; with --server they would be ignored, so they are refused.
LOCAL_ONLY = {
    "siglip": "--siglip", "dinov2": "--dinov2", "overrides": "--set", "quantize": "--quantize",
    "vision_device": "--vision-device", "vision_dtype": "--vision-dtype", "llm_gpu_memory": "--llm-gpu-memory",
    "no_cache": "--no-cache", "cache_dir": "--cache-dir", "trace": "--trace", "trace_arrays": "--trace-arrays",
    "top_k": "--top-k", "adapter": "--adapter",
}  # fmt: skip
PATH_REFUSED = ("local_paths_disabled", "path_not_allowed", "file_not_found")


def ask_server(args, question: str) -> int:
    """Send the question about ``args.video`` to ``args.server`` and print the answer as it streams."""
    _check_local_options(args)
    check_generation_args(args)
    video = Path(args.video).resolve()
    if not video.is_file():
        raise LongVUError(f"{args.video}: no such file")
    base = args.server.rstrip("/")
    resp, fid = _open_answer(base, _request_body(args, question, str(video)), video)
    try:
        _print_stream(args, resp)
    finally:
        if fid is not None:
            _call(base, f"/v1/files/{fid}", method="DELETE").close()
    return 0


def _open_answer(base: str, body: dict, video: Path):
    """The streaming response, and the id of the upload to delete afterwards (None: sent by path)."""
    fid = None
    try:
        try:
            return _post_chat(base, body), None
        except _Refused as e:
            if e.code not in PATH_REFUSED:
                raise
        fid = _upload(base, video)
        body["messages"][0]["content"][0]["video_url"]["url"] = fid
        return _post_chat(base, body), fid
    except _Refused as e:
        if fid is not None:
            _call(base, f"/v1/files/{fid}", method="DELETE").close()
        raise LongVUError(f"the server refused the question: {e.message}") from None


def _check_local_options(args) -> None:
    if args.model != DEFAULT_MODEL:
        raise LongVUError("--model: not with --server (the server decides its model: the one `longvu serve` loaded)")
    given = [opt for dest, opt in LOCAL_ONLY.items() if getattr(args, dest, None)]
    given += [f"--{k}" for k in ("device", "dtype") if getattr(args, k) != "auto"]
    if given:
        raise LongVUError(f"{', '.join(given)}: not with --server (the server's own settings apply)")


def _request_body(args, question: str, video: str) -> dict:
    body: dict = {
        "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                  {"type": "text", "text": question}]}],
        "stream": True,
        "max_tokens": args.max_new_tokens,
    }  # fmt: skip
    gen = {"temperature": 0 if args.greedy else args.temperature, "top_p": args.top_p, "seed": args.seed}
    body.update({k: v for k, v in gen.items() if v is not None})
    frames = {"fps": args.fps, "num_frames": args.max_frames, "start": args.start, "end": args.end}
    body["media_io_kwargs"] = {"video": {k: v for k, v in frames.items() if v is not None}}
    return body


class _Refused(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _headers(extra: dict | None = None) -> dict:
    h = dict(extra or {})
    key = os.environ.get("LONGVU_API_KEY")
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


def _call(base: str, path: str, *, data=None, headers: dict | None = None, method: str = "GET"):
    """An open response, or :class:`_Refused` (an HTTP error) / LongVUError (no server)."""
    req = urllib.request.Request(base + path, data=data, headers=_headers(headers), method=method)
    try:
        return urllib.request.urlopen(req)  # noqa: S310 (the user's own server URL)
    except urllib.error.HTTPError as e:
        raise _refusal(e) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LongVUError(f"cannot reach {base} ({reason}); is `longvu serve` running there?") from None


def _refusal(e: urllib.error.HTTPError) -> _Refused:
    try:
        err = json.loads(e.read() or b"{}").get("error") or {}
    except ValueError:
        err = {}
    return _Refused(e.code, err.get("code"), err.get("message") or f"HTTP {e.code}")


def _post_chat(base: str, body: dict):
    return _call(base, "/v1/chat/completions", data=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip


def _upload(base: str, video: Path) -> str:
    """Upload ``video`` with a multipart body streamed from the file; returns the file id."""
    boundary = uuid.uuid4().hex
    name = video.name.replace('"', "_")
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nvision\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    tail = f"\r\n--{boundary}--\r\n".encode()

    def parts():
        yield head
        with open(video, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield tail

    size = len(head) + video.stat().st_size + len(tail)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(size)}
    try:
        with _call(base, "/v1/files", data=parts(), headers=headers, method="POST") as resp:
            return json.loads(resp.read())["id"]
    except _Refused as e:
        raise LongVUError(f"the server refused the upload: {e.message}") from None


def _print_stream(args, resp) -> None:
    """Write the streamed answer to stdout (as it comes, or at the end) and the server's report to stderr."""
    live = args.stream if args.stream is not None else sys.stdout.isatty()
    report, text = None, []
    with resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise LongVUError(f"the server could not answer: {event['error'].get('message')}")
            delta = event["choices"][0]["delta"].get("content") if event.get("choices") else None
            if delta:
                text.append(delta)
                if live:
                    sys.stdout.write(delta)
                    sys.stdout.flush()
            if "counts" in event.get("longvu", {}):  # the closing report (progress chunks carry "progress")
                report = event["longvu"]
    sys.stdout.write(("" if live else "".join(text).strip()) + "\n")
    sys.stdout.flush()
    if report is not None:
        from ..pipeline.trace import summary_lines

        log(args, summary_lines(report["counts"], len(report["high_res_indices"])))
