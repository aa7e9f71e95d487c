"""Where the server keeps the media it is sent: uploads, data: URLs and downloads.

Every file is stored under a name the server makes (``file-<32 hex>.bin`` for uploads,
``tmp-<32 hex>.bin`` for a request's data: URLs and downloads), never the client's name
or extension: the extension is what FFmpeg would have used to pick a demuxer (an
``.m3u8`` playlist naming files outside the allowed folder, say).  The intake then picks
the format by content from its allow-list.

Bounded: every byte written is first reserved against a total quota for the folder
(``--max-upload-total-mb``, counted in whole file-system blocks, and ``--max-upload-files``
files; uploads, and data: URLs and downloads while their request runs), and files older
than the time to live are removed by a sweep that runs on a timer.  Writes happen on a
worker thread, never on the event loop.  A file in flight has a name that says which
process writes it; an upload is renamed to its ``file-`` name only once complete, and a
killed server's leftovers are removed when the next one starts.  A full disk while
writing removes the partial file and raises :class:`DiskFull` (a 507).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import display_path
from ..files import OWNER, owner_tag, remove_orphans

FILE_ID = re.compile(r"file-[0-9a-f]{32}")
# A finished upload (kept until its time to live), or an untagged ``tmp-`` file of an older longvu (swept by age).
_STORED = re.compile(r"(file|tmp)-[0-9a-f]{32}\.bin")
# In flight: a partial upload (``part-``, renamed to ``file-`` when complete) or a request's data: URL or
# download (``tmp-``), named after the process writing it: a killed server's are removed at the next start.
_TEMP = re.compile(rf"(part|tmp)-{OWNER}-[0-9a-f]{{32}}\.bin")
_OWNED_DIR = re.compile(rf"longvu-uploads-{OWNER}-\w+")  # the private folder of a server without --upload-dir
SUFFIX = ".bin"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class QuotaExceeded(Exception):
    """The store's total quota would be passed (the server answers 413)."""


class DiskFull(Exception):
    """The disk (or the user's disk quota) filled up while a file was written (the server answers 507)."""


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _DISK_FULL


class MediaStore:
    """A server-owned folder of media files under a total quota, swept of old files.

    The quota counts what fills a disk: each file's size rounded up to whole blocks of the
    file system (a 1-byte file takes a block), and the number of files (``max_files``).
    Uploads can be found by id after a restart (the file is the record; its client-side
    name, kept in memory, is then forgotten).  At start, files a killed server left in
    flight are removed (see :data:`_TEMP`).
    """

    def __init__(self, folder: str | None, ttl_s: float, quota_bytes: int, max_files: int = 10_000) -> None:
        self.own = folder is None
        if folder is None:
            remove_orphans(tempfile.gettempdir(), _OWNED_DIR)
            folder = tempfile.mkdtemp(prefix=f"longvu-uploads-{owner_tag()}-")
        self.root = Path(folder)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.orphans_removed = remove_orphans(self.root, _TEMP)
        self.ttl_s, self.quota, self.max_files = ttl_s, quota_bytes, max_files
        self.block = os.statvfs(self.root).f_frsize or 4096
        self.meta: dict[str, dict] = {}
        self.lock = threading.Lock()
        held = [p.stat().st_size for p in self.root.iterdir() if _STORED.fullmatch(p.name) or _TEMP.fullmatch(p.name)]
        self.used, self.files = sum(map(self.on_disk, held)), len(held)

    # ------------------------------------------------------------------ quota
    def on_disk(self, size: int) -> int:
        """What a file of ``size`` bytes takes on disk: whole blocks, at least one."""
        return max(1, -(-size // self.block)) * self.block

    def reserve(self, n: int, files: int = 0) -> None:
        with self.lock:
            if self.used + n > self.quota or self.files + files > self.max_files:
                raise QuotaExceeded()
            self.used += n
            self.files += files

    def release(self, n: int, files: int = 0) -> None:
        with self.lock:
            self.used = max(0, self.used - n)
            self.files = max(0, self.files - files)

    def charge(self) -> Charge:
        """The quota of one new file, grown as it is written (:class:`Charge`)."""
        return Charge(self)

    # ------------------------------------------------------------------ files
    def new_path(self, kind: str = "file") -> tuple[str, Path]:
        """A new file's id and path: ``file`` (a finished upload) or ``part``/``tmp`` (in flight, tagged)."""
        hexid = uuid.uuid4().hex
        fid = f"file-{hexid}" if kind == "file" else f"{kind}-{owner_tag()}-{hexid}"
        return fid, self.root / f"{fid}{SUFFIX}"

    def write_temp(self, data: bytes) -> tuple[Path, callable]:
        """Store ``data`` for one request (blocking: call it off the event loop); returns the path and its cleanup."""
        charge = self.charge()
        _, path = self.new_path("tmp")
        with undone_on_failure(path, charge):
            charge.add(len(data))
            with open(path, "xb") as f:
                f.write(data)
        return path, lambda: (path.unlink(missing_ok=True), charge.release())

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
        self.release(self.on_disk(size), files=1)

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


class Charge:
    """One file's share of the store's quota: a file, and its bytes in whole blocks as they are written."""

    def __init__(self, store: MediaStore) -> None:
        self.store, self.size, self.bytes, self.file = store, 0, 0, 0
        store.reserve(store.on_disk(0), files=1)
        self.bytes, self.file = store.on_disk(0), 1

    def add(self, n: int) -> None:
        grown = self.store.on_disk(self.size + n)
        self.store.reserve(grown - self.bytes)
        self.size, self.bytes = self.size + n, grown

    def release(self) -> None:
        self.store.release(self.bytes, files=self.file)
        self.bytes = self.file = 0


@contextmanager
def undone_on_failure(path: Path, charge: Charge) -> Iterator[None]:
    """A write into ``path``, charged to ``charge``: if it fails, the file goes and its quota comes back,
    and a full disk is raised as :class:`DiskFull` (the server's 507)."""
    try:
        yield
    except BaseException as e:
        path.unlink(missing_ok=True)
        charge.release()
        if is_disk_full(e):
            raise DiskFull() from None
        raise


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
    _, partial = store.new_path("part")  # renamed to ``path`` once complete: a crash never leaves a torn upload
    charge = store.charge()

    def feed(out, data: bytes, final: bool = False) -> None:  # on a worker thread: parse, reserve, write
        parser.write(data)
        if final:
            parser.finalize()
        if parts.pending:
            chunk, parts.pending = b"".join(parts.pending), []
            charge.add(len(chunk))
            out.write(chunk)

    with undone_on_failure(partial, charge):
        with open(partial, "xb") as out:
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
        os.rename(partial, path)
    return fid, path, parts.fields


class _Parts:
    """Callbacks for python-multipart: the one ``file`` part's bytes, other parts as small fields."""

    MAX_PARTS, MAX_FIELD = 8, 1024

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.pending: list[bytes] = []  # file bytes parsed, not yet written
        self.size = self.count = 0
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
