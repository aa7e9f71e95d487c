"""The results folder of a run (``--out``): answers that survive crashes, one writer, one set of settings.

* ``results.jsonl``: one JSON line per answered question, appended and fsynced as soon as
  it exists.  A torn or corrupt line is set aside (``results.jsonl.corrupt-<stamp>``) on reading.  Whole-file
  rewrites (re-sorting at the end of a run) go through :func:`atomic_write_text`: a
  failed rewrite (disk full) leaves the previous file as it was.
* ``settings.json``: the settings fingerprint.  A run that finds answers made with other
  settings refuses to add to them unless forced (then the old fingerprints are kept
  under ``previous``).
* ``.lock``: held with ``flock`` while a run writes here.  The kernel releases it when
  the holder dies, so a lock left by a killed run never blocks the next one; the file
  only names the holder for the error message.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LongVUError
from ..files import NotRegularFile, atomic_write_bytes, atomic_write_text, open_regular_nofollow

log = logging.getLogger("longvu")

RESULTS = "results.jsonl"
SETTINGS = "settings.json"
LOCK = ".lock"
SETTINGS_FORMAT = "longvu-eval-settings/1"


def read_results(path: Path, required: tuple[str, ...] = ("qid",)) -> dict[str, dict]:
    """Finished lines of a results file, by ``qid`` (a later line replaces an earlier one).

    A line that is not a whole result (torn by a crash, bad UTF-8, not a JSON object, a
    ``qid`` that is not a string, a ``required`` field missing) is set aside in
    ``results.jsonl.corrupt-<stamp>`` with a warning, and the file rewritten without it,
    so that resuming goes on and new lines are not appended to a broken one.  The file is
    never read or written through a symbolic link.
    """
    done: dict[str, dict] = {}
    raw = _read_own(path)
    if raw is None:
        return done
    good: list[bytes] = []
    bad: list[bytes] = []
    for line in raw.splitlines():
        rec = _record(line, required)
        if rec is None:
            bad.append(line)
            continue
        done[rec["qid"]] = rec
        good.append(line)
    if bad:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        atomic_write_bytes(aside, b"".join(x + b"\n" for x in bad))
        log.warning(f"{path}: {len(bad)} unreadable line(s) set aside in {aside.name}; their questions are asked again")
    if bad or (raw and not raw.endswith(b"\n")):
        atomic_write_bytes(path, b"".join(x + b"\n" for x in good))
    return done


def _record(line: bytes, required: tuple[str, ...]) -> dict | None:
    """The result a line holds, or None if it is not a whole one."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("qid"), str) or any(k not in rec for k in required):
        return None
    return rec


def _read_own(path: Path) -> bytes | None:
    """The file's bytes (None if there is none), refusing a symbolic link or a non-regular file."""
    try:
        fd = open_regular_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except NotRegularFile as e:
        raise _not_regular(path, e) from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _not_regular(path: Path, e: NotRegularFile) -> LongVUError:
    return LongVUError(f"{path}: {e.strerror}; remove it (results are never written through one), "
                       "or use another --out")  # fmt: skip


def write_results(path: Path, records: list[dict]) -> None:
    """Rewrite the results file with ``records`` (atomically)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


class ResultWriter:
    """Appends result lines, each flushed and fsynced before the next (never through a symbolic link)."""

    def __init__(self, path: Path) -> None:
        try:
            fd = open_regular_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except NotRegularFile as e:
            raise _not_regular(path, e) from None
        self.f = os.fdopen(fd, "a")

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ------------------------------------------------------------------ one run at a time
@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the duration; a second holder gets a one-line error.

    The lock file is opened without following a symbolic link (a planted link would have
    its target truncated).
    """

    try:
        fd = open_regular_nofollow(folder / LOCK, os.O_RDWR | os.O_CREAT)
    except NotRegularFile as e:
        raise _not_regular(folder / LOCK, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live process
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise LongVUError(
            f"{folder}: another run is writing here ({holder}); wait for it, or use another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------ settings fingerprint
def check_settings(folder: Path, settings: dict[str, Any], *, force: bool = False) -> bool:
    """Record ``settings`` in ``folder/settings.json``, refusing to mix answers made with others.

    Returns True when the folder now holds answers from more than one set of settings
    (only possible with ``force``).
    """
    path = folder / SETTINGS
    settings = json.loads(json.dumps(settings))  # the JSON view: tuples become lists
    has_answers = (folder / RESULTS).exists() and (folder / RESULTS).stat().st_size > 0
    old = _read_settings(path)
    if old is None:
        if has_answers and not force:
            raise LongVUError(f"{folder}: {RESULTS} has answers but no {SETTINGS} (from an older longvu?); "
                              "use another --out, or --force to add to them")  # fmt: skip
        previous = [{"settings": "unknown"}] if has_answers else []
    elif old["settings"] == settings:
        return bool(old.get("previous"))
    elif not has_answers:
        previous = []
    elif not force:
        raise LongVUError(f"{folder} holds answers made with other settings ({describe_change(old['settings'], settings)}); "
                          "use another --out, or --force to add to them")  # fmt: skip
    else:
        previous = [*old.get("previous", []), old["settings"]]
    atomic_write_text(
        path, json.dumps({"format": SETTINGS_FORMAT, "settings": settings, "previous": previous}, indent=1)
    )
    return bool(previous)


def _read_settings(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise LongVUError(f"{path}: not a settings file (corrupt JSON); remove it, or use another --out") from None
    if not isinstance(data, dict) or data.get("format") != SETTINGS_FORMAT or "settings" not in data:
        raise LongVUError(f"{path}: not a {SETTINGS_FORMAT} file; remove it, or use another --out")
    return data


def describe_change(old: dict, new: dict) -> str:
    """``"dtype: float16 -> bfloat16; overrides.drop_threshold: 0.8 -> 0.7"``"""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in keys if a.get(k) != b.get(k))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
