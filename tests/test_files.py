"""longvu.files.open_beneath: a name inside a folder, opened without following any link."""

from __future__ import annotations

import os
import threading

import pytest

from longvu.errors import UnsafePathError
from longvu.files import open_beneath


def read(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"inside")
    (root / "sub" / "deeper" / "b.txt").write_bytes(b"deep")
    (tmp_path / "outside.txt").write_bytes(b"SECRET")
    (tmp_path / "outdir" / "deeper").mkdir(parents=True)
    (tmp_path / "outdir" / "deeper" / "b.txt").write_bytes(b"SECRET")
    return root


@pytest.mark.parametrize(
    "name,data", [("a.txt", b"inside"), ("./sub//deeper/b.txt", b"deep"), ("sub/deeper/./b.txt", b"deep")]
)
def test_opens_names_inside(tree, name, data):
    assert read(open_beneath(tree, name)) == data


@pytest.mark.parametrize(
    "name,why",
    [
        ("../outside.txt", "'..'"),
        ("sub/../../outside.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\0b", "NUL"),
        ("", "folder itself"),
        (".", "folder itself"),
        ("link_file", "symbolic link"),
        ("link_dir/deeper/b.txt", "symbolic link"),
        ("sub/link_up/outside.txt", "symbolic link"),
        ("inner_link", "symbolic link"),  # even a link that stays inside is refused
    ],
)
def test_refuses_every_way_out(tree, name, why):
    (tree / "link_file").symlink_to(tree.parent / "outside.txt")
    (tree / "link_dir").symlink_to(tree.parent / "outdir")
    (tree / "sub" / "link_up").symlink_to(tree.parent)
    (tree / "inner_link").symlink_to(tree / "a.txt")
    with pytest.raises(UnsafePathError, match=why):
        open_beneath(tree, name)


def test_missing_is_an_ordinary_oserror(tree):
    with pytest.raises(FileNotFoundError):
        open_beneath(tree, "nope.txt")
    with pytest.raises(NotADirectoryError):
        open_beneath(tree, "a.txt/x")


def test_no_fd_leaks(tree):
    before = len(os.listdir("/proc/self/fd"))
    for name in ("a.txt", "sub/deeper/b.txt", "nope", "sub/nope/x", "../x"):
        try:
            os.close(open_beneath(tree, name))
        except (OSError, UnsafePathError):
            pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_racing_swap_never_reaches_outside(tree):
    """A thread swaps a file and a folder for links to outside, over and over, while we open them."""
    stop = threading.Event()

    def swap() -> None:
        f, d = tree / "a.txt", tree / "sub"
        while not stop.is_set():
            f.unlink()
            f.symlink_to(tree.parent / "outside.txt")
            f.unlink()
            f.write_bytes(b"inside")
            os.rename(d, tree / "sub.real")
            d.symlink_to(tree.parent / "outdir")
            d.unlink()
            os.rename(tree / "sub.real", d)

    t = threading.Thread(target=swap)
    t.start()
    seen = set()
    try:
        for _ in range(3000):
            for name in ("a.txt", "sub/deeper/b.txt"):
                try:
                    seen.add(read(open_beneath(tree, name)))
                except (OSError, UnsafePathError):
                    seen.add("refused")
    finally:
        stop.set()
        t.join()
    assert b"SECRET" not in seen
    assert "refused" in seen and (b"inside" in seen or b"deep" in seen)
