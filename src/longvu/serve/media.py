"""A request's video, from where the client named it to a local file: data: URLs, uploads, remote URLs, allowed local paths."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
from pathlib import Path

from .errors import APIError, clip, too_large
from .parts import Media
from .remote import RemoteRefused, RemoteTooLarge
from .settings import ServerSettings
from .store import DiskFull, MediaStore, is_disk_full

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


class _Budget:
    """Bytes one request may bring with it (data: URLs, downloads): ``max_upload_mb`` for all its files together."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.left, self.what = limit, limit, what

    def take(self, n: int) -> None:
        if n > self.left:
            raise APIError(413, f"{self.what} is larger than this server's limit ({self.limit / 2**20:.3g} MB)",
                           code="file_too_large")  # fmt: skip
        self.left -= n


async def resolve_media(media: Media, settings: ServerSettings, store: MediaStore, downloader):
    """A local video path, or a list of local image paths (the frames), and one cleanup function."""
    if media.video_url is not None:
        accept = ("video/", "audio/") if media.from_audio_part else ("video/",)
        budget = _Budget(settings.max_upload_bytes, "the video")
        return await _resolve_video(media.video_url, settings, store, downloader, budget, accept)
    budget = _Budget(settings.max_upload_bytes, "the request's image frames together")
    paths, cleanups = [], []
    try:
        for url in media.image_urls:
            path, cleanup = await _resolve_video(url, settings, store, downloader, budget, ("image/",))
            paths.append(path)
            cleanups.append(cleanup)
    except BaseException:
        for c in cleanups:
            c()
        raise
    return paths, lambda: [c() for c in cleanups]


async def _resolve_video(url: str, settings: ServerSettings, store: MediaStore, downloader, budget: _Budget,
                         accept: tuple[str, ...] = ("video/",)):  # fmt: skip
    """A local file path for the request's video (or image: ``accept``), and a cleanup function.

    Files the request brings are stored under the server's own names (``longvu.serve.store``).
    """
    noop = lambda: None  # noqa: E731
    m = _DATA_URL.match(url)
    if m:
        _check_data_url(m, accept)
        path, cleanup = await asyncio.to_thread(_store_data_url, url, m.end(), budget, store)
        return str(path), cleanup
    if url.startswith("file-"):
        path = store.get(url)
        if path is None:
            raise APIError(404, f"no uploaded file {clip(url)!r}", "not_found_error", "file_not_found")
        return str(path), noop
    if re.match(r"^https?://", url, re.I):
        if not settings.allow_remote_urls:
            raise APIError(400, "remote URLs are disabled on this server (start it with --allow-remote-urls)",
                           code="remote_urls_disabled")  # fmt: skip
        return await _download(url, settings, store, downloader, budget)
    local = url[len("file://") :] if url.startswith("file://") else url
    return str(allowed_local(local, settings)), noop


def _check_data_url(m: re.Match, accept: tuple[str, ...]) -> None:
    mime = (m.group("mime") or "").lower()
    if mime and not (mime.startswith(accept) or mime == "application/octet-stream"):
        what = "an image" if accept == ("image/",) else "a video"
        raise APIError(415, f"unsupported media type {clip(mime)!r}: send {what}", code="unsupported_media_type")
    if not m.group("b64"):
        raise APIError(400, "data URLs must be base64-encoded", code="invalid_data_url")


def _store_data_url(url: str, start: int, budget: _Budget, store: MediaStore):
    """Decode a data: URL's payload (``url[start:]``) into a store file (blocking: run off the event loop)."""
    budget.take((len(url) - start) * 3 // 4)
    try:
        data = base64.b64decode(url[start:], validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the data URL is not valid base64", code="invalid_data_url") from None
    if not data:
        raise APIError(400, "the data URL holds no data", code="invalid_data_url")
    return store.write_temp(data)


class _Reserving:
    """A store file that reserves every chunk against the store's quota and the request's budget."""

    def __init__(self, out, store: MediaStore, budget: _Budget) -> None:
        self.out, self.budget, self.charge = out, budget, store.charge()

    def write(self, chunk: bytes) -> None:
        self.budget.take(len(chunk))
        self.charge.add(len(chunk))
        self.out.write(chunk)


async def _download(url: str, settings: ServerSettings, store: MediaStore, downloader, budget: _Budget):
    """Fetch ``url`` on the downloader's threads into a store file (see :mod:`longvu.serve.remote`)."""

    _, path = store.new_path("tmp")
    with open(path, "xb") as out:
        try:
            sink = _Reserving(out, store, budget)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        try:
            await asyncio.wrap_future(downloader.submit(url, sink, settings.max_upload_bytes))
        except BaseException as e:
            path.unlink(missing_ok=True)
            sink.charge.release()
            if is_disk_full(e):
                raise DiskFull() from None
            if isinstance(e, RemoteTooLarge):
                raise too_large(settings) from None
            if isinstance(e, RemoteRefused):  # one message for every reason: no oracle of what is reachable
                raise APIError(400, "could not download the video from that URL", code="download_failed") from None
            raise

    def cleanup() -> None:
        path.unlink(missing_ok=True)
        sink.charge.release()

    return str(path), cleanup


def allowed_local(path: str, settings: ServerSettings) -> Path:
    """Resolve ``path`` (symlinks and ``..`` included) and require it inside the allowed folder.

    Outside the folder (by its name, then by where it leads) is a 403 whether it exists or
    not; a path that cannot be resolved (a NUL byte, a symlink loop, a name too long) a 400.
    """
    if not settings.allowed_local_media_path:
        raise APIError(400, "local paths are disabled on this server (start it with --allowed-local-media-path DIR)",
                       code="local_paths_disabled")  # fmt: skip
    outside = APIError(403, "the path is outside the allowed media folder", "permission_error", "path_not_allowed")
    root = Path(settings.allowed_local_media_path).resolve()
    if "\0" in path:
        raise APIError(400, "the path contains a NUL byte", code="invalid_path")
    lexical = Path(os.path.normpath(root / path))  # no file system access yet
    if lexical != root and root not in lexical.parents:
        raise outside
    try:
        real = lexical.resolve()
        inside = real == root or root in real.parents
        is_file = inside and real.is_file()
    except (OSError, RuntimeError, ValueError):  # a symlink loop (RuntimeError before Python 3.13), ENAMETOOLONG
        raise APIError(400, "the path cannot be resolved (a symlink loop, or a name too long)",
                       code="invalid_path") from None  # fmt: skip
    if not inside:
        raise outside
    if not is_file:
        raise APIError(404, "no such file in the allowed media folder", "not_found_error", "file_not_found")
    return real
