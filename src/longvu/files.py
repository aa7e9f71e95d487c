"""Files written so that a crash never leaves a torn one: the one durable atomic write of the package.

Every result, trace, adapter manifest and training output that replaces a file goes through
:func:`atomic_write_bytes`: the data goes to a new temporary file beside the target (created with
``O_EXCL``, so never through a planted link), is flushed and fsynced, renamed over the target, and
the folder is fsynced so that the rename itself survives a power cut.  A reader sees the old file
or the new one, never a mix; a crash leaves at most a ``.NAME.*.tmp`` file, which the next write
ignores.

:func:`open_beneath` is THE way to open a name inside a folder that others can write to.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from .errors import UnsafePathError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module's docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_beneath(root: str | os.PathLike, relative: str, flags: int = os.O_RDONLY) -> int:
    """Open ``relative`` inside the folder ``root`` without following any link; returns the fd.

    Each folder on the way is opened from the previous one's fd with ``O_NOFOLLOW | O_DIRECTORY``
    and the last name with ``O_NOFOLLOW``, so what is opened is what the walk checked, even if
    someone swaps a name for a symbolic link meanwhile (a check of the path, then an open by name,
    would race with that).  ``root`` itself is trusted and may be reached through links.
    (Written here rather than taken from a library: ``openat2(RESOLVE_BENEATH)`` is Linux-only
    and not exposed by Python; this walk is its portable equivalent for our use.)

    Raises :class:`~longvu.errors.UnsafePathError` for an absolute path, a ``..`` step, a NUL
    byte or a link on the way; other ``OSError`` (``FileNotFoundError`` ...) as the system
    gives them.  ``flags`` are for the last open (``O_NOFOLLOW`` and ``O_CLOEXEC`` are added); pass
    ``O_NONBLOCK`` where the name could be a fifo, and check the kind of file with ``os.fstat``.
    """
    parts = _beneath_parts(relative)
    nofollow, cloexec = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_CLOEXEC", 0)
    dir_flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow | cloexec
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | cloexec)
    for name in parts[:-1]:
        fd = _step(fd, name, dir_flags, relative)  # closes the folder's fd, whatever happens
    return _step(fd, parts[-1], flags | nofollow | cloexec, relative)


def _beneath_parts(relative: str) -> list[str]:
    if "\0" in relative:
        raise UnsafePathError("the path contains a NUL byte", relative)
    if os.path.isabs(relative):
        raise UnsafePathError("an absolute path where one inside the folder was expected", relative)
    parts = [p for p in relative.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError("the path goes up with '..'", relative)
    if not parts:
        raise UnsafePathError("the path names the folder itself, not a file in it", relative)
    return parts


def _step(dir_fd: int, name: str, flags: int, relative: str) -> int:
    """Open ``name`` in ``dir_fd``; ``dir_fd`` is closed whatever happens."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        # O_NOFOLLOW on a link: ELOOP (Linux), EMLINK (FreeBSD); O_DIRECTORY on one: ENOTDIR
        if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR) and _is_link(dir_fd, name):
            raise UnsafePathError("the path goes through a symbolic link", relative) from None
        raise
    finally:
        os.close(dir_fd)


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
