"""Files written so that a crash never leaves a torn one: the one durable atomic write of the package.

Every result, trace, adapter manifest and training output that replaces a file goes through
:func:`atomic_write_bytes`: the data goes to a new temporary file beside the target (created with
``O_EXCL``, so never through a planted link), is flushed and fsynced, renamed over the target, and
the folder is fsynced so that the rename itself survives a power cut.  A reader sees the old file
or the new one, never a mix; a crash leaves at most a ``.NAME.*.tmp`` file, which the next write
ignores.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


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


class NotRegularFile(OSError):
    """The path is a symbolic link, or not a regular file (a FIFO, a device, a folder)."""


def open_regular_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symbolic link in the last component and only opens regular files.

    A link planted where a lock, log or results file is expected would otherwise have its
    target truncated or appended to.  ``O_NONBLOCK`` keeps a FIFO from blocking the open;
    the descriptor is checked with ``fstat`` (what was opened, not what the name now is).
    Raises :class:`NotRegularFile` for a link or a non-regular file, ``OSError`` otherwise.
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | nofollow | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "is a symbolic link", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, "is not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd
