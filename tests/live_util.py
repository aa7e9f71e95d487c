"""A writer that grows a video file (or a pipe) at a chosen speed, as a recorder would, for the live tests.

Run as a process: ``python live_util.py OUT SECONDS [--speed 6] [--pause-at S --go FILE] [--format mpegts]``.
With ``--pause-at`` the writer stops after S seconds of stream and waits for FILE to exist before
writing the rest: a test can look at the session while the file is unfinished.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 10  # source frames per second


def frames(seconds: float, h: int = 64, w: int = 96):
    """A new flat colour every 4 s with a moving square, so stage 1 keeps some frames and drops others."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 255, size=(int(seconds) // 4 + 2, 3))
    for i in range(round(seconds * FPS)):
        f = np.empty((h, w, 3), dtype=np.uint8)
        f[:] = colours[i // (4 * FPS)]
        x = (i * 3) % (w - 8)
        f[10:18, x : x + 8] = 255
        yield f


def write(out, seconds: float, *, speed: float | None = None, fmt: str = "mpegts", pause_at: float | None = None,
          go: str | None = None) -> None:  # fmt: skip
    """Encode ``seconds`` of video to the binary file ``out``, flushing after each frame."""
    import av

    t0 = time.monotonic()
    with av.open(out, "w", format=fmt, options={"movflags": "frag_keyframe+empty_moov"} if fmt == "mp4" else {}) as c:
        s = c.add_stream("mpeg4", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.options = {"qscale": "4", "g": str(FPS)}
        for i, f in enumerate(frames(seconds)):
            if pause_at is not None and i == round(pause_at * FPS):
                out.flush()
                while not os.path.exists(go):
                    time.sleep(0.05)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
            out.flush()
            if speed is not None:
                time.sleep(max(0.0, t0 + (i + 1) / FPS / speed - time.monotonic()))
        for p in s.encode():
            c.mux(p)


def writer_command(out: str | Path, seconds: float, *extra: str) -> list[str]:
    """The command line of the writer process (``out`` "-": standard output)."""
    return [sys.executable, __file__, str(out), str(seconds), *extra]


def start_writer(path: str | Path, seconds: float, *extra: str, **popen) -> subprocess.Popen:
    """The writer as its own process (the test's and the writer's work do not share a GIL)."""
    return subprocess.Popen(writer_command(path, seconds, *extra), **popen)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("seconds", type=float)
    p.add_argument("--speed", type=float)
    p.add_argument("--format", default="mpegts")
    p.add_argument("--pause-at", type=float)
    p.add_argument("--go")
    a = p.parse_args()
    with os.fdopen(sys.stdout.fileno(), "wb", closefd=False) if a.out == "-" else open(a.out, "wb") as out:
        write(out, a.seconds, speed=a.speed, fmt=a.format, pause_at=a.pause_at, go=a.go)


if __name__ == "__main__":
    main()
