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
import re
import shutil
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
        # O_NOFOLLOW on a link: ELOOP (Linux), EMLINK (FreeBSD), and nothing else can give them here (every
        # step is one name, opened with O_NOFOLLOW): a link, even if it is swapped back by the time we look.
        # O_DIRECTORY on a link or on a file: ENOTDIR, so look which it was.
        if e.errno in (errno.ELOOP, errno.EMLINK) or (e.errno == errno.ENOTDIR and _is_link(dir_fd, name)):
            raise UnsafePathError("the path goes through a symbolic link", relative) from None
        raise
    finally:
        os.close(dir_fd)


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


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


# ---------------------------------------------------------------------- files a crash leaves behind
# Temporary files (partial uploads, encoder spills, cache blobs being written) carry their
# writer's tag in their name: its pid and start time.  A later process removes those whose
# writer is gone, and never those of a live one (a pid reused by another process has
# another start time).  Names, not lock files: nothing to clean up after the clean-up.
OWNER = r"(?P<owner>\d+x\d+)"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_tag() -> str:
    """This process as a file-name tag, ``<pid>x<start time>`` (see :func:`owner_alive`)."""
    return f"{os.getpid()}x{_start_time(os.getpid()) or 0}"


def owner_alive(tag: str) -> bool:
    """Whether the process ``tag`` names still runs: the same pid, started at the same time."""
    pid_text, _, start = tag.partition("x")
    pid = int(pid_text)
    if pid == os.getpid():
        return tag == owner_tag()
    known = _start_time(pid)
    if known is not None:
        return str(known) == start
    try:
        os.kill(pid, 0)  # no /proc: the pid alone
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphans(folder: str | os.PathLike, pattern: re.Pattern) -> list[Path]:
    """Entries of ``folder`` whose name ``pattern`` (with an ``owner`` group) matches and whose owner is gone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out = []
    for name in names:
        m = pattern.fullmatch(name)
        if m and not owner_alive(m.group("owner")):
            out.append(Path(folder) / name)
    return out


def remove_orphans(folder: str | os.PathLike, pattern: re.Pattern) -> tuple[int, int]:
    """Remove :func:`orphans` (files, or folders with what they hold); ``(entries, bytes)`` removed."""
    count = size = 0
    for path in orphans(folder, pattern):
        size += disk_usage(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        count += 1
    return count, size


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes ``path`` takes on disk (``st_blocks``), a folder's content included; 0 if it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    total = st.st_blocks * 512
    if stat.S_ISDIR(st.st_mode):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    pass
    return total
