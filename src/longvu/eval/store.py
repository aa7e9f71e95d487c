"""The results folder of a run (``--out``): answers that survive crashes, one writer, one set of settings.

* ``results.jsonl``: one JSON line per answered question, appended and fsynced as soon as
  it exists.  A torn last line (a crash mid-write) is dropped on reading.  Whole-file
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
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LongVUError
from ..files import atomic_write_text

RESULTS = "results.jsonl"
SETTINGS = "settings.json"
LOCK = ".lock"
SETTINGS_FORMAT = "longvu-eval-settings/1"


def read_results(path: Path) -> dict[str, dict]:
    """Finished lines of a results file, by ``qid`` (a later line replaces an earlier one).

    A torn line (a crash mid-write) is dropped, and the file rewritten without it so
    that new lines are not appended to a broken one.
    """
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    good: list[str] = []
    text = path.read_text()
    lines = text.splitlines()
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "qid" not in rec:
            continue
        done[rec["qid"]] = rec
        good.append(line)
    if len(good) != len(lines) or (lines and not text.endswith("\n")):
        atomic_write_text(path, "".join(x + "\n" for x in good))
    return done


def write_results(path: Path, records: list[dict]) -> None:
    """Rewrite the results file with ``records`` (atomically)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


class ResultWriter:
    """Appends result lines, each flushed and fsynced before the next."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "a")  # noqa: SIM115 (closed in close())

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ------------------------------------------------------------------ one run at a time
@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the duration; a second holder gets a one-line error."""

    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
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
