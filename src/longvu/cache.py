"""On-disk feature cache: a second question about the same video skips decode and encode.

Entries are safetensors files (the :class:`~longvu.encode.VisualFeatures` of one
video: SVA sampler outputs of the frames that can be kept, stage-1 similarities,
frame timestamps) with an SQLite index.  The key covers everything the features
depend on: the video's content hash, the sampling settings, the stage-1 and
connector settings, the identity of the tower and connector weights, the dtype.

* Bounded: least-recently-used entries are evicted past ``max_bytes``.
* Safe under several processes: SQLite (WAL, busy timeout) serialises the index;
  blobs are written to a temporary name and renamed into place.
* Verified: each blob's sha256 is in the index; a corrupt or truncated blob is
  deleted and reported as a miss, so the caller recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from .encode import VisualFeatures

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("LONGVU_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "longvu"


def default_cache_bytes() -> int:
    return int(float(os.environ.get("LONGVU_CACHE_MAX_GB", "20")) * 1024**3)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(files: list[Path]) -> str:
    """Cheap identity of weight files: name, size and the sha256 of their first and last MiB."""
    h = hashlib.sha256()
    for p in sorted(files):
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()


class FeatureCache:
    """A bounded, process-safe LRU cache of :class:`VisualFeatures` under ``root``."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = default_cache_bytes() if max_bytes is None else int(max_bytes)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.notes: list[str] = []
        # Two processes may create the index at the same moment; switching to WAL takes a
        # lock that SQLite does not always wait for, so retry that briefly.  WAL then stays on.
        for attempt in range(100):
            try:
                with self._db() as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, file TEXT NOT NULL,"
                        " size INTEGER NOT NULL, sha256 TEXT NOT NULL, video TEXT, created REAL NOT NULL,"
                        " last_access REAL NOT NULL)"
                    )
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS video_hashes (path TEXT, size INTEGER, mtime_ns INTEGER,"
                        " sha256 TEXT, PRIMARY KEY (path, size, mtime_ns))"
                    )
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.1)

    @contextmanager
    def _db(self):
        db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    # ----------------------------------------------------------------- keys
    def video_digest(self, path: str | os.PathLike) -> str:
        """sha256 of the file's bytes, remembered by (path, size, mtime) so it is hashed once."""
        real = os.path.realpath(path)
        st = os.stat(real)
        with self._db() as db:
            row = db.execute(
                "SELECT sha256 FROM video_hashes WHERE path=? AND size=? AND mtime_ns=?",
                (real, st.st_size, st.st_mtime_ns),
            ).fetchone()
            if row:
                return row[0]
        digest = file_digest(real)
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO video_hashes VALUES (?, ?, ?, ?)", (real, st.st_size, st.st_mtime_ns, digest)
            )
        return digest

    @staticmethod
    def make_key(**parts) -> str:
        parts["format"] = CACHE_FORMAT
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    # ----------------------------------------------------------------- get/put
    def get(self, key: str) -> VisualFeatures | None:
        with self._db() as db:
            row = db.execute("SELECT file, size, sha256 FROM entries WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        fname, size, digest = row
        path = self.blobs / fname
        try:
            data = path.read_bytes()
        except OSError:
            self._forget(key, fname)
            return None
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            self._note(f"cache entry {key[:12]} is corrupt or truncated; recomputing")
            self._forget(key, fname)
            return None
        try:
            feats = _decode(data)
        except Exception as e:  # a blob that verifies but does not parse: treat as corrupt
            self._note(f"cache entry {key[:12]} is unreadable ({type(e).__name__}); recomputing")
            self._forget(key, fname)
            return None
        with self._db() as db:
            db.execute("UPDATE entries SET last_access=? WHERE key=?", (time.time(), key))
        return feats

    def put(self, key: str, feats: VisualFeatures, video: str = "") -> None:
        data = _encode(feats)
        fname = f"{key}.safetensors"
        tmp = self.blobs / f".{key}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.blobs / fname)
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, fname, len(data), hashlib.sha256(data).hexdigest(), video, now, now),
            )
        self.evict()

    def evict(self) -> None:
        """Delete least-recently-used entries until the total size fits ``max_bytes``."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT key, file, size FROM entries ORDER BY last_access DESC").fetchall()
            total = 0
            doomed = []
            for key, fname, size in rows:
                total += size
                if total > self.max_bytes:
                    doomed.append((key, fname))
            for key, _ in doomed:
                db.execute("DELETE FROM entries WHERE key=?", (key,))
            db.execute("COMMIT")
        for _, fname in doomed:
            (self.blobs / fname).unlink(missing_ok=True)

    def _note(self, message: str) -> None:
        self.notes.append(message)
        logging.getLogger("longvu").warning(message)

    def _forget(self, key: str, fname: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM entries WHERE key=? AND file=?", (key, fname))
        (self.blobs / fname).unlink(missing_ok=True)

    # ----------------------------------------------------------------- admin
    def info(self) -> dict:
        with self._db() as db:
            n, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
            videos = db.execute("SELECT COUNT(DISTINCT video) FROM entries").fetchone()[0]
        return {"root": str(self.root), "entries": n, "videos": videos, "bytes": total, "max_bytes": self.max_bytes}

    def clear(self) -> int:
        with self._db() as db:
            rows = db.execute("SELECT file FROM entries").fetchall()
            db.execute("DELETE FROM entries")
            db.execute("DELETE FROM video_hashes")
        for (fname,) in rows:
            (self.blobs / fname).unlink(missing_ok=True)
        for stray in self.blobs.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        return len(rows)


def _encode(f: VisualFeatures) -> bytes:
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
        "path": f.path,
        "avg_fps": f.avg_fps,
        "step": f.step,
        "num_frames_total": f.num_frames_total,
        "frame_hw": list(f.frame_hw),
        "all_frames": f.all_frames,
    }
    return save(tensors, metadata={"longvu": json.dumps(meta)})


def _decode(data: bytes) -> VisualFeatures:
    from safetensors.torch import load

    tensors = load(data)
    # safetensors.torch.load drops metadata; read the header for it.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["longvu"])
    return VisualFeatures(
        path=meta["path"],
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
