"""A request's video, from where the client named it to a local file: data: URLs, uploads, remote URLs, allowed local paths."""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from fastapi.responses import StreamingResponse

from ..errors import UnsafePathError
from ..files import open_beneath
from ..model.intake import HeldFile
from .errors import APIError, clip, too_large
from .parts import Media
from .remote import RemoteRefused, RemoteTooLarge
from .settings import ServerSettings
from .store import MediaStore, undone_on_failure

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
    held = hold_local(local, settings)
    return held, held.close


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
            with undone_on_failure(path, sink.charge):
                await asyncio.wrap_future(downloader.submit(url, sink, settings.max_upload_bytes))
        except RemoteTooLarge:
            raise too_large(settings) from None
        except RemoteRefused:  # one message for every reason: no oracle of what is reachable
            raise APIError(400, "could not download the video from that URL", code="download_failed") from None

    def cleanup() -> None:
        path.unlink(missing_ok=True)
        sink.charge.release()

    return str(path), cleanup


PATH_MAX = 4096  # Linux's; a longer name is refused as a system call would refuse it


def hold_local(path: str, settings: ServerSettings) -> HeldFile:
    """Open ``path`` inside the allowed folder without following links; the open file, to read and serve.

    The name is normalised lexically (``sub/../clip.mp4`` is ``clip.mp4``), then opened
    component by component with :func:`longvu.files.open_beneath`, so what is checked is the
    file that is read, even if the name is swapped for a link meanwhile.  Outside the folder
    by its name, or through a link anywhere on the way, is a 403 whether it exists or not; a
    name that cannot be opened (a NUL byte, a symlink loop, a name too long) a 400; a missing
    name, a folder or anything but a regular file a 404.
    """
    if not settings.allowed_local_media_path:
        raise APIError(400, "local paths are disabled on this server (start it with --allowed-local-media-path DIR)",
                       code="local_paths_disabled")  # fmt: skip
    root = Path(settings.allowed_local_media_path).resolve()
    if "\0" in path:
        raise APIError(400, "the path contains a NUL byte", code="invalid_path")
    lexical = Path(os.path.normpath(root / path))  # no file system access yet
    if lexical != root and root not in lexical.parents:
        raise _outside()
    if len(os.fsencode(str(lexical))) >= PATH_MAX:
        raise _unresolvable()
    missing = APIError(404, "no such file in the allowed media folder", "not_found_error", "file_not_found")
    if lexical == root:
        raise missing
    try:
        fd = open_beneath(
            root, str(lexical.relative_to(root)), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
        )
    except UnsafePathError:
        raise _refused_link(lexical) from None
    except (FileNotFoundError, NotADirectoryError):
        raise missing from None
    except OSError:  # ENAMETOOLONG, EACCES, ...
        raise _unresolvable() from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise missing
    os.set_blocking(fd, True)
    return HeldFile(fd, str(lexical))


def _outside() -> APIError:
    return APIError(403, "the path is outside the allowed media folder", "permission_error", "path_not_allowed")


def _unresolvable() -> APIError:
    return APIError(400, "the path cannot be resolved (a symlink loop, or a name too long)", code="invalid_path")


def _refused_link(lexical: Path) -> APIError:
    """The error for a path through a link: nothing is opened here, the link's target only chooses the words."""
    try:
        lexical.resolve(strict=True)
    except RuntimeError:  # a symlink loop, before Python 3.13
        return _unresolvable()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return _unresolvable()
    except ValueError:
        return _unresolvable()
    err = _outside()
    err.message += " (symbolic links are not followed)"
    return err


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 16


def held_file_response(held: HeldFile, range_header: str | None, media_type: str) -> StreamingResponse:
    """Serve ``held`` from its descriptor (never reopened by name), honouring one byte range.

    A player seeks with ``Range: bytes=START-END``; one range is answered 206, several or a
    malformed header the whole file (200), a range past the end 416.  The descriptor is
    closed when the body is done or abandoned.
    """
    reader = held.reader()  # the descriptor stays open until the body is done
    held.close()
    size = reader.size()
    start, end, status = 0, size - 1, 200
    m = _RANGE.match((range_header or "").strip())
    if m and (m.group(1) or m.group(2)):
        if m.group(1):
            start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
        else:  # the last N bytes
            start = max(0, size - int(m.group(2)))
        if start > end or start >= size:
            reader.close()
            raise APIError(416, "the range is outside the file", code="range_not_satisfiable",
                           headers={"Content-Range": f"bytes */{size}"})  # fmt: skip
        status = 206
    headers = {"X-Content-Type-Options": "nosniff", "Content-Disposition": "inline", "Accept-Ranges": "bytes",
               "Content-Length": str(end - start + 1)}  # fmt: skip
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"

    def body() -> Iterator[bytes]:
        try:
            reader.seek(start)
            while (left := end + 1 - reader.tell()) > 0:
                chunk = reader.read(min(CHUNK, left))
                if not chunk:
                    return  # the file shrank: the client sees a short body
                yield chunk
        finally:
            reader.close()

    return StreamingResponse(body(), status_code=status, media_type=media_type, headers=headers)
