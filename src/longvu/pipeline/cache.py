"""On-disk feature cache: a second question about the same video skips decode and encode.

Entries are safetensors files (the :class:`~longvu.model.encode.VisualFeatures` of one
video: SVA sampler outputs of the frames that can be kept, stage-1 similarities,
frame timestamps) with an SQLite index.  The key covers everything the features
depend on: the video's content hash, the sampling settings, the config fields that
change features (:func:`longvu.config.feature_fields`), the identity of the tower and
connector weights, the dtype.

* Bounded: least-recently-used entries are evicted past ``max_bytes``.
* Safe under several processes: SQLite (WAL, busy timeout) serialises the index;
  blobs are written to a temporary name and renamed into place.
* Verified: each blob's sha256 is in the index; a corrupt or truncated blob is
  deleted and reported as a miss, so the caller recomputes it.
* Self-healing: a corrupt index is moved aside (``index.sqlite.corrupt-*``) and rebuilt
  empty; ``clear`` always works.
* Never fails the caller's work: a failed read is a miss and a failed write (disk full)
  is skipped, each with a warning on the ``longvu`` logger.
* Private: folders are 0700 and files 0600; neither the index nor the blobs hold video
  paths (only sha256 hashes of them).  A video's content hash is remembered under its
  path hash with its device, inode, size, mtime and ctime, so a file replaced in place
  (even with the same size and mtime) is hashed again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LongVUError
from ..files import OWNER, disk_usage, owner_alive, owner_tag, remove_orphans
from ..model.intake import HeldFile, VideoSource, source_name

if TYPE_CHECKING:  # torch and the encoder are imported when features are stored or read, not for `cache info`
    from ..model.encode import VisualFeatures

CACHE_FORMAT = 2  # 2: upright frames and PTS timestamps; no paths in blobs
SCHEMA_VERSION = 2  # 2: file_digests keyed by path hash and inode/ctime; hashed entries.video
MEMO_ROWS = 10_000  # remembered file hashes (least recently used go first)

log = logging.getLogger("longvu")


def default_cache_dir() -> Path:
    env = os.environ.get("LONGVU_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "longvu"


def default_cache_bytes() -> int:
    return int(float(os.environ.get("LONGVU_CACHE_MAX_GB", "20")) * 1024**3)


def _sha256_stream(f, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return _sha256_stream(f, chunk)


def _path_hash(path: str) -> str:
    return hashlib.sha256(os.fsencode(path)).hexdigest()


def _file_identity(st: os.stat_result) -> str:
    # ctime cannot be set by tools that restore mtime, and a replaced file has a new inode.
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _private_dir(path: Path, *, tighten: bool) -> None:
    """Create ``path`` 0700; with ``tighten``, also make an existing folder of ours private."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if tighten:
        _make_private(path, 0o700)


def _make_private(path: Path, mode: int) -> None:
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(mode)
    except FileNotFoundError:
        pass


def _is_corrupt(e: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (not "locked", "full" or other passing trouble)."""
    code = getattr(e, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (11, 26)
    return type(e) is sqlite3.DatabaseError


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno)
    return " ".join(str(e).split()) or type(e).__name__


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


@contextmanager
def _flock(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class FeatureCache:
    """A bounded, process-safe LRU cache of :class:`VisualFeatures` under ``root``."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None, *,
                 sweep: bool = True) -> None:  # fmt: skip
        """``sweep``: remove the half-written blobs of killed processes now (``cache info`` only counts them)."""
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = default_cache_bytes() if max_bytes is None else int(max_bytes)
        self.blobs = self.root / "blobs"
        self.index = self.root / "index.sqlite"
        try:
            _private_dir(self.root, tighten=False)  # may be a folder the user named: created private, else left
            _private_dir(self.blobs, tighten=True)
            for suffix in ("", "-wal", "-shm"):
                _make_private(Path(f"{self.index}{suffix}"), 0o600)
            self._init_index()
            removed, size = remove_orphans(self.blobs, _TMP_BLOB) if sweep else (0, 0)
        except (OSError, sqlite3.Error) as e:
            raise LongVUError(
                f"the feature cache in {self.root} is not usable ({_reason(e)}); use --no-cache"
            ) from None
        if removed:
            log.warning(
                "feature cache: removed %d blob(s) a killed process left half-written (%d bytes)", removed, size
            )

    def _init_index(self) -> None:
        # Two processes may create the index at the same moment; switching to WAL takes a
        # lock that SQLite does not always wait for, so retry that briefly.  WAL then stays on.
        for attempt in range(100):
            try:
                self._run(_create_schema)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.1)

    @contextmanager
    def _db(self):
        if not self.index.exists():  # created private; SQLite gives its -wal/-shm files the same mode
            os.close(os.open(self.index, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.index, timeout=60, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """``fn(db)`` on the index; a corrupt index is moved aside and rebuilt, then ``fn`` runs again."""
        try:
            with self._db() as db:
                return fn(db)
        except sqlite3.DatabaseError as e:
            if not (_is_corrupt(e) or self.index.is_dir()):
                raise
            self._rebuild(e, _inode(self.index))
        with self._db() as db:
            return fn(db)

    def _rebuild(self, error: sqlite3.DatabaseError, broken: int | None) -> None:
        """Move the index aside and start a new one, unless another process did (``broken``: its inode)."""
        with _flock(self.root / "index.lock"):
            if _inode(self.index) != broken:
                return
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.index}{suffix}")
                if src.exists():
                    os.replace(src, self.root / f"index.sqlite{suffix}.corrupt-{stamp}")
            log.warning(
                "the feature cache index was corrupt (%s); moved it aside as index.sqlite.corrupt-%s and started"
                " a new one",
                _reason(error),
                stamp,
            )
            with self._db() as db:
                _create_schema(db)
            self._drop_orphans()

    def _drop_orphans(self) -> None:
        """Delete blobs the index does not know (after a rebuild, all of them)."""
        known = {r[0] for r in self._run(lambda db: db.execute("SELECT file FROM entries").fetchall())}
        for blob in self.blobs.glob("*.safetensors"):
            if blob.name not in known:
                blob.unlink(missing_ok=True)

    # ----------------------------------------------------------------- keys
    def video_digest(self, path: VideoSource) -> str:
        """sha256 of the file's bytes, remembered by path hash and file identity so it is hashed once."""
        if isinstance(path, HeldFile):  # read through its descriptor, never opened again by name
            real, opener = path.name, path.reader
        else:
            real = os.path.realpath(path)
            opener = lambda: open(real, "rb")  # noqa: E731
        with opener() as f:
            ident = (_path_hash(real), _file_identity(os.fstat(f.fileno())))
            digest = self._memo_get(ident)
            if digest is None:
                digest = _sha256_stream(f)
                if _file_identity(os.fstat(f.fileno())) == ident[1]:  # not changed while hashing
                    self._memo_put(ident, digest)
        return digest

    def _memo_get(self, ident: tuple[str, str]) -> str | None:
        def lookup(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT sha256 FROM file_digests WHERE path_hash=? AND stat=?", ident).fetchone()
            if row:
                db.execute("UPDATE file_digests SET seen=? WHERE path_hash=?", (time.time(), ident[0]))
            return row[0] if row else None

        return self._quietly(lookup, None, "read a remembered video hash")

    def _memo_put(self, ident: tuple[str, str], digest: str) -> None:
        def store(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)", (*ident, digest, time.time()))
            db.execute(
                "DELETE FROM file_digests WHERE path_hash NOT IN"
                " (SELECT path_hash FROM file_digests ORDER BY seen DESC LIMIT ?)",
                (MEMO_ROWS,),
            )

        self._quietly(store, None, "remember a video hash")

    def _quietly(self, fn: Callable[[sqlite3.Connection], Any], default: Any, what: str) -> Any:
        """``fn`` on the index; if it fails, a warning and ``default`` (the cache is an optimisation)."""
        try:
            return self._run(fn)
        except (OSError, sqlite3.Error) as e:
            log.warning("feature cache: could not %s (%s); continuing without it", what, _reason(e))
            return default

    @staticmethod
    def make_key(**parts) -> str:
        parts["format"] = CACHE_FORMAT
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    # ----------------------------------------------------------------- get/put
    def get(self, key: str, video: str | os.PathLike | None = None) -> VisualFeatures | None:
        """The entry for ``key`` (its ``path`` set to ``video``), or None on a miss or any failure."""
        row = self._quietly(
            lambda db: db.execute("SELECT file, size, sha256 FROM entries WHERE key=?", (key,)).fetchone(),
            None,
            "read the index",
        )
        feats = None if row is None else self._load(key, *row)
        if feats is None:
            return None
        self._quietly(
            lambda db: db.execute("UPDATE entries SET last_access=? WHERE key=?", (time.time(), key)),
            None,
            "update the index",
        )
        feats.path = "" if video is None else source_name(video)
        return feats

    def _load(self, key: str, fname: str, size: int, digest: str) -> VisualFeatures | None:
        try:
            data = (self.blobs / fname).read_bytes()
        except OSError:
            self._forget(key, fname)
            return None
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            log.warning("feature cache entry %s is corrupt or truncated; recomputing", key[:12])
            self._forget(key, fname)
            return None
        try:
            return _decode(data)
        except Exception as e:  # a blob that verifies but does not parse: treat as corrupt
            log.warning("feature cache entry %s is unreadable (%s); recomputing", key[:12], type(e).__name__)
            self._forget(key, fname)
            return None

    def put(self, key: str, feats: VisualFeatures, video: str = "") -> None:
        """Store ``feats`` under ``key``; a failure (disk full, ...) is a warning, never an error."""
        fname = f"{key}.safetensors"
        tmp = self.blobs / f".{key}.{owner_tag()}-{uuid.uuid4().hex}.tmp"  # whose it is: see _TMP_BLOB
        try:
            data = _encode(feats)
            _write_private(tmp, data)
            os.replace(tmp, self.blobs / fname)
            row = (key, fname, len(data), hashlib.sha256(data).hexdigest(), _path_hash(video) if video else None)
            now = time.time()
            self._run(
                lambda db: db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", (*row, now, now))
            )
            self.evict()
        except (OSError, sqlite3.Error) as e:
            tmp.unlink(missing_ok=True)
            log.warning("feature cache: could not store this video's features (%s); not cached", _reason(e))

    def evict(self) -> None:
        """Delete least-recently-used entries until the total size fits ``max_bytes``."""

        def pick(db: sqlite3.Connection) -> list[tuple[str, str]]:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT key, file, size FROM entries ORDER BY last_access DESC").fetchall()
            total, doomed = 0, []
            for key, fname, size in rows:
                total += size
                if total > self.max_bytes:
                    doomed.append((key, fname))
            for key, _ in doomed:
                db.execute("DELETE FROM entries WHERE key=?", (key,))
            db.execute("COMMIT")
            return doomed

        for _, fname in self._run(pick):
            (self.blobs / fname).unlink(missing_ok=True)

    def _forget(self, key: str, fname: str) -> None:
        self._quietly(
            lambda db: db.execute("DELETE FROM entries WHERE key=? AND file=?", (key, fname)), None, "update the index"
        )
        (self.blobs / fname).unlink(missing_ok=True)

    # ----------------------------------------------------------------- admin
    def _admin(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return self._run(fn)
        except (OSError, sqlite3.Error) as e:
            raise LongVUError(f"the feature cache in {self.root} is not usable ({_reason(e)})") from None

    def info(self) -> dict:
        def count(db: sqlite3.Connection) -> tuple[int, int, int]:
            n, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
            return n, total, db.execute("SELECT COUNT(DISTINCT video) FROM entries").fetchone()[0]

        n, total, videos = self._admin(count)
        left = [p for p in self.blobs.glob(".*.tmp") if not _live_tmp(p)]  # what killed writers left
        return {"root": str(self.root), "entries": n, "videos": videos, "bytes": total, "max_bytes": self.max_bytes,
                "on_disk": disk_usage(self.root), "orphans": len(left), "orphan_bytes": sum(map(disk_usage, left))}  # fmt: skip

    def clear(self) -> int:
        """Remove every entry, blob and remembered hash (and indexes moved aside); the number of entries."""

        def empty(db: sqlite3.Connection) -> int:
            n = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            db.execute("DELETE FROM entries")
            db.execute("DELETE FROM file_digests")
            return n

        n = self._admin(empty)
        for stray in [
            *self.blobs.glob("*.safetensors"),
            *(p for p in self.blobs.glob(".*.tmp") if not _live_tmp(p)),  # a live writer's blob is its own
            *self.root.glob("index.sqlite*.corrupt-*"),
        ]:
            if stray.is_dir() and not stray.is_symlink():
                shutil.rmtree(stray, ignore_errors=True)
            else:
                stray.unlink(missing_ok=True)
        return n


# A blob being written: ``.<key>.<owner>-<hex>.tmp`` (``longvu.files.owner_tag``); a killed writer's is an orphan.
_TMP_BLOB = re.compile(rf"\.[^/]+\.{OWNER}-[0-9a-f]{{32}}\.tmp")


def _live_tmp(path: Path) -> bool:
    """Whether a ``.tmp`` blob is being written by a live process (an untagged one, from an older longvu: no)."""
    m = _TMP_BLOB.fullmatch(path.name)
    return bool(m) and owner_alive(m.group("owner"))


def _create_schema(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, file TEXT NOT NULL, size INTEGER NOT NULL,"
        " sha256 TEXT NOT NULL, video TEXT, created REAL NOT NULL, last_access REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS file_digests (path_hash TEXT PRIMARY KEY, stat TEXT NOT NULL,"
        " sha256 TEXT NOT NULL, seen REAL NOT NULL)"
    )
    if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        _migrate(db)


def _migrate(db: sqlite3.Connection) -> None:
    """From schema 1: drop the hash memo keyed by clear-text paths and hash ``entries.video``."""
    db.execute("BEGIN IMMEDIATE")
    if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # not done by another process meanwhile
        db.execute("DROP TABLE IF EXISTS video_hashes")
        for (video,) in db.execute("SELECT DISTINCT video FROM entries WHERE video != ''").fetchall():
            db.execute("UPDATE entries SET video=? WHERE video=?", (_path_hash(video), video))
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    db.execute("COMMIT")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _encode(f: VisualFeatures) -> bytes:
    # lazy: torch is imported only when this runs (keeps the import light and quiet)
    import torch

    # lazy: safetensors is imported only when this runs (keeps the import light and quiet)
    from safetensors.torch import save

    tensors = {
        "sampled": f.sampled.detach().cpu().contiguous(),
        "similarity": f.similarity.detach().cpu().float().contiguous(),
        "stored": torch.tensor(f.stored, dtype=torch.long),
        "source_indices": torch.tensor(f.source_indices, dtype=torch.long),
        "timestamps": torch.tensor(f.timestamps, dtype=torch.float64),
        "window_sizes": torch.tensor(f.window_sizes, dtype=torch.long),
    }
    meta = {
        "avg_fps": f.avg_fps,
        "step": f.step,
        "num_frames_total": f.num_frames_total,
        "frame_hw": list(f.frame_hw),
        "all_frames": f.all_frames,
    }
    return save(tensors, metadata={"longvu": json.dumps(meta)})


def _decode(data: bytes) -> VisualFeatures:
    # lazy: safetensors is imported only when this runs (keeps the import light and quiet)
    from safetensors.torch import load

    from ..model.encode import VisualFeatures  # lazy: torch comes with it (see the TYPE_CHECKING note above)

    tensors = load(data)
    # safetensors.torch.load drops metadata; read the header for it.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["longvu"])
    return VisualFeatures(
        path="",
        source_indices=tensors["source_indices"].tolist(),
        timestamps=tensors["timestamps"].tolist(),
        avg_fps=float(meta["avg_fps"]),
        step=int(meta["step"]),
        num_frames_total=int(meta["num_frames_total"]),
        frame_hw=tuple(meta["frame_hw"]),
        similarity=tensors["similarity"],
        window_sizes=tensors["window_sizes"].tolist(),
        stored=tensors["stored"].tolist(),
        sampled=tensors["sampled"],
        all_frames=bool(meta["all_frames"]),
    )
