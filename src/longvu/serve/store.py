"""Where the server keeps the media it is sent: uploads, data: URLs and downloads.

Every file is stored under a name the server makes (``file-<32 hex>.bin`` for uploads,
``tmp-<32 hex>.bin`` for a request's data: URLs and downloads), never the client's name
or extension: the extension is what FFmpeg would have used to pick a demuxer (an
``.m3u8`` playlist naming files outside the allowed folder, say).  The intake then picks
the format by content from its allow-list.

Bounded: every byte written is first reserved against a total quota for the folder
(``--max-upload-total-mb``; the bytes of uploads, and of data: URLs and downloads while
their request runs), and files older than the time to live are removed by a sweep that
runs on a timer.  Writes happen on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ..errors import display_path

FILE_ID = re.compile(r"file-[0-9a-f]{32}")
_STORED = re.compile(r"(file|tmp)-[0-9a-f]{32}\.bin")
SUFFIX = ".bin"


class QuotaExceeded(Exception):
    """The store's total quota would be passed (the server answers 413)."""


class MediaStore:
    """A server-owned folder of media files under a total quota, swept of old files.

    Uploads can be found by id after a restart (the file is the record; its client-side
    name, kept in memory, is then forgotten).
    """

    def __init__(self, folder: str | None, ttl_s: float, quota_bytes: int) -> None:
        self.own = folder is None
        self.root = Path(folder or tempfile.mkdtemp(prefix="longvu-uploads-"))
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ttl_s, self.quota = ttl_s, quota_bytes
        self.meta: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.used = sum(p.stat().st_size for p in self._stored())

    # ------------------------------------------------------------------ quota
    def reserve(self, n: int) -> None:
        with self.lock:
            if self.used + n > self.quota:
                raise QuotaExceeded()
            self.used += n

    def release(self, n: int) -> None:
        with self.lock:
            self.used = max(0, self.used - n)

    # ------------------------------------------------------------------ files
    def new_path(self, kind: str = "file") -> tuple[str, Path]:
        fid = f"{kind}-{uuid.uuid4().hex}"
        return fid, self.root / f"{fid}{SUFFIX}"

    def write_temp(self, data: bytes) -> tuple[Path, callable]:
        """Store ``data`` for one request (blocking: call it off the event loop); returns the path and its cleanup."""
        self.reserve(len(data))
        _, path = self.new_path("tmp")
        try:
            with open(path, "xb") as f:
                f.write(data)
        except BaseException:
            self._remove(path, len(data))
            raise
        return path, lambda: self._remove(path, len(data))

    def register(self, fid: str, path: Path, filename: str, purpose: str) -> dict:
        info = {"id": fid, "object": "file", "bytes": path.stat().st_size, "created_at": int(time.time()),
                "filename": _client_name(filename), "purpose": purpose}  # fmt: skip
        self.meta[fid] = info
        return dict(info)

    def info(self, fid: str) -> dict | None:
        path = self.get(fid)
        if path is None:
            return None
        if fid not in self.meta:  # stored before a restart: the file is the record
            st = path.stat()
            self.meta[fid] = {"id": fid, "object": "file", "bytes": st.st_size, "created_at": int(st.st_mtime),
                              "filename": "upload", "purpose": "vision"}  # fmt: skip
        return dict(self.meta[fid])

    def get(self, fid: str) -> Path | None:
        if not FILE_ID.fullmatch(fid):
            return None
        path = self.root / f"{fid}{SUFFIX}"
        return path if path.is_file() else None

    def delete(self, fid: str) -> bool:
        path = self.get(fid)
        self.meta.pop(fid, None)
        if path is None:
            return False
        self._remove(path, path.stat().st_size)
        return True

    def _remove(self, path: Path, size: int) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self.release(size)

    def _stored(self):
        return (p for p in self.root.iterdir() if _STORED.fullmatch(p.name))

    def sweep(self) -> int:
        """Remove stored files older than the time to live (blocking); returns how many went."""
        cutoff, removed = time.time() - self.ttl_s, 0
        for path in list(self._stored()):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime < cutoff:
                self.meta.pop(path.stem, None)
                self._remove(path, st.st_size)
                removed += 1
        return removed

    async def sweep_every(self, interval_s: float) -> None:
        """Sweep on a timer, off the event loop, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.sweep)

    def close(self) -> None:
        if self.own:
            shutil.rmtree(self.root, ignore_errors=True)


def _client_name(name: str) -> str:
    """The client's file name, as metadata only: no folders, printable, at most 255 characters."""
    base = re.split(r"[/\\]", name or "")[-1] or "upload"
    return display_path(base, limit=250)


# ---------------------------------------------------------------------- multipart uploads
class UploadError(Exception):
    """A malformed multipart upload (the server answers 400 with this message)."""


class UploadTooLarge(Exception):
    """The uploaded file is larger than the per-file limit (the server answers 413)."""


async def receive_upload(stream, content_type: str, store: MediaStore, max_bytes: int) -> tuple[str, Path, dict]:
    """Stream a ``multipart/form-data`` body (``stream``: its chunks) into the store.

    The ``file`` part goes straight to a new store file, each chunk reserved against the
    quota and written on a worker thread; other parts (``purpose``) are small fields.
    Written here on python-multipart's parser (what Starlette uses) because Starlette's form
    parsing spools the whole upload to a temporary file first, outside any quota.
    Returns ``(file id, path, fields)``; on any error the partial file is removed.
    Raises :class:`UploadError` (or python-multipart's ``FormParserError``), :class:`UploadTooLarge`
    or :class:`QuotaExceeded`.
    """
    # lazy: python_multipart only on this path (the module imports without it)
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise UploadError("the multipart body has no boundary")
    parts = _Parts(max_bytes)
    parser = MultipartParser(boundary, parts.callbacks())
    fid, path = store.new_path("file")

    def feed(out, data: bytes, final: bool = False) -> None:  # on a worker thread: parse, reserve, write
        parser.write(data)
        if final:
            parser.finalize()
        if parts.pending:
            chunk, parts.pending = b"".join(parts.pending), []
            store.reserve(len(chunk))
            parts.reserved += len(chunk)
            out.write(chunk)

    try:
        with open(path, "xb") as out:
            batch: list[bytes] = []
            size = 0
            async for chunk in stream:
                batch.append(chunk)
                size += len(chunk)
                if size >= 1 << 20:
                    await asyncio.to_thread(feed, out, b"".join(batch))
                    batch, size = [], 0
            await asyncio.to_thread(feed, out, b"".join(batch), True)
        parts.check_complete()
    except BaseException:
        path.unlink(missing_ok=True)
        store.release(parts.reserved)
        raise
    return fid, path, parts.fields


class _Parts:
    """Callbacks for python-multipart: the one ``file`` part's bytes, other parts as small fields."""

    MAX_PARTS, MAX_FIELD = 8, 1024

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.pending: list[bytes] = []  # file bytes parsed, not yet written
        self.size = self.reserved = self.count = 0
        self.fields: dict[str, str] = {}
        self.files = 0
        self._header, self._value = bytearray(), bytearray()
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._field = bytearray()

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
                "on_header_end": self._hend, "on_headers_finished": self._hdone, "on_part_data": self._data,
                "on_part_end": self._end}  # fmt: skip

    def _begin(self) -> None:
        self.count += 1
        if self.count > self.MAX_PARTS:
            raise UploadError(f"at most {self.MAX_PARTS} parts in an upload")
        self._disposition, self._name, self._is_file = b"", None, False
        self._field.clear()

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        if bytes(self._header).lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._header.clear()
        self._value.clear()

    def _hdone(self) -> None:
        # lazy: python_multipart only on this path (the module imports without it)
        from python_multipart.multipart import parse_options_header

        kind, params = parse_options_header(self._disposition)
        if kind != b"form-data" or not params.get(b"name"):
            raise UploadError("every part of the upload needs 'Content-Disposition: form-data; name=...'")
        self._name = params[b"name"].decode("utf-8", "replace")
        self._is_file = self._name == "file"
        if self._is_file:
            self.files += 1
            if self.files > 1:
                raise UploadError("send one file per upload")
            self.fields["filename"] = params.get(b"filename", b"upload").decode("utf-8", "replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise UploadTooLarge()
            self.pending.append(bytes(data[start:end]))
        else:
            self._field += data[start:end]
            if len(self._field) > self.MAX_FIELD:
                raise UploadError(f"the field {self._name!r} is longer than {self.MAX_FIELD} bytes")

    def _end(self) -> None:
        if not self._is_file and self._name is not None:
            self.fields[self._name] = self._field.decode("utf-8", "replace")

    def check_complete(self) -> None:
        if not self.files:
            raise UploadError("the upload has no 'file' part")
        if not self.size:
            raise UploadError("the uploaded file is empty")
