"""Live video benchmark: peak RSS following a long stream vs a short one, and the lag while following.

    python -m benchmarks.live memory --minutes 10 60 --fps 0.1   # peak RSS per stream length (OS, wait4)
    python -m benchmarks.live lag --seconds 240 --speed 6 --fps 0.5   # seen/lag while a file grows at 6x

Both use the tiny test checkpoint on the CPU (``--model`` for another) and a synthetic 96x64,
10 fps MPEG-4 stream in MPEG-TS, written by a separate process:

* ``memory``: for each length, a fresh process follows the stream through a pipe, read as fast
  as the writer produces it (``max_backlog=None``: every sampled frame is encoded, none skipped),
  answers one question at the end, and exits; its peak RSS is the OS's (``wait4``'s ``ru_maxrss``).
  The ratio long/short is the figure (flat memory: close to 1).
* ``lag``: a writer grows a file at ``--speed`` times real time while ``lv.watch`` follows it;
  every second the status is sampled; printed: the lag (``decoded_s - seen_s``, stream seconds)
  while the file grows, its median and maximum, and the time from the end of writing to
  ``ended``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "parity" / "checkpoints" / "tiny-longvu-qwen2"
SOURCE_FPS = 10


def write_stream(out, seconds: float, speed: float | None) -> None:
    """``seconds`` of a 96x64 stream (a colour per 5 s, a moving bar) as MPEG-TS to the binary file ``out``."""
    import av
    import numpy as np

    t0 = time.monotonic()
    with av.open(out, "w", format="mpegts") as c:
        s = c.add_stream("mpeg4", rate=Fraction(SOURCE_FPS))
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.options = {"qscale": "6", "g": str(SOURCE_FPS * 2)}
        frame = np.zeros((64, 96, 3), dtype=np.uint8)
        for i in range(round(seconds * SOURCE_FPS)):
            frame[:] = ((i // 50) * 53 % 256, (i // 50) * 97 % 256, 128)
            frame[20:30, (i * 2) % 88 : (i * 2) % 88 + 8] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
            out.flush()
            if speed:
                time.sleep(max(0.0, t0 + (i + 1) / SOURCE_FPS / speed - time.monotonic()))
        for p in s.encode():
            c.mux(p)


def _writer(target: str, seconds: float, speed: float | None, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.live", "_write", target, str(seconds)]
    return subprocess.Popen([*cmd, *(["--speed", str(speed)] if speed else [])], cwd=ROOT, **popen)


def _load(model: str):
    from longvu import LongVU

    return LongVU.from_pretrained(model, device="cpu", dtype="float32", cache=False)


def follow_pipe(model: str, minutes: float, fps: float, ask: bool = True) -> dict:
    """(In the measured child) follow ``minutes`` of stream from a writer's pipe to its end; one question."""
    from longvu import GenerationOptions, Sampling
    from longvu.model.live import FollowOptions

    lv = _load(model)
    writer = _writer("-", minutes * 60, None, stdout=subprocess.PIPE)
    t0 = time.perf_counter()
    with lv.watch(writer.stdout, sampling=Sampling(fps=fps), follow=FollowOptions(max_backlog=None)) as live:
        live.wait()
        feats = live.features()
        if ask:
            live.ask("What happens?", generation=GenerationOptions(max_new_tokens=8, greedy=True))
        st = live.status()
    writer.wait()
    return {"minutes": minutes, "fps": fps, "seen_s": st["seen_s"], "windows": st["windows"],
            "frames_kept": st["frames_kept"], "dropped_frames": st["dropped_frames"], "disk_bytes": st["disk_bytes"],
            "covered_s": list(feats.covered), "asked": ask, "follow_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def memory(args) -> list[dict]:
    rows = []
    for minutes in args.minutes:
        cmd = [sys.executable, "-m", "benchmarks.live", "_follow", "--minutes", str(minutes), "--fps", str(args.fps),
               "--model", args.model, *([] if args.ask else ["--no-ask"])]  # fmt: skip
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out)
            _, status, usage = os.wait4(proc.pid, 0)
            out.seek(0)
            text = out.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"following {minutes} min failed")
        row = json.loads(text.strip().splitlines()[-1])
        row["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        print(f"{row['minutes']:>5g} min  {row['frames_kept']:>5} frames kept  peak RSS {row['peak_rss_mb']:8.1f} MB  "
              f"x{row['peak_rss_mb'] / base:.3f} of the {rows[0]['minutes']:g}-min stream  ({row['follow_s']} s)")  # fmt: skip
    return rows


def lag(args) -> dict:
    from longvu import Sampling
    from longvu.model.live import FollowOptions

    lv = _load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rec.ts"
        path.touch()
        writer = _writer(str(path), args.seconds, args.speed)
        samples = []
        with lv.watch(path, sampling=Sampling(fps=args.fps), follow=FollowOptions(idle_end_s=None)) as live:
            t0 = time.monotonic()
            while writer.poll() is None:
                time.sleep(1.0)
                st = live.status()
                samples.append((round(time.monotonic() - t0, 1), st["seen_s"], st["lag_s"], st["dropped_frames"]))
            written = time.monotonic()
            live.end()
            live.wait()
            st = live.status()
    lags = [s[2] for s in samples[len(samples) // 4 :]]  # after the first window
    result = {"seconds": args.seconds, "speed": args.speed, "fps": args.fps, "samples": samples,
              "lag_median_s": statistics.median(lags), "lag_max_s": max(lags), "seen_s": st["seen_s"],
              "dropped_frames": st["dropped_frames"], "end_to_ended_s": round(time.monotonic() - written, 1)}  # fmt: skip
    for t, seen, lag_s, dropped in samples:
        print(f"t={t:6.1f}s  seen {seen:7.1f}s  lag {lag_s:6.1f}s  skipped {dropped}")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    m.add_argument("--fps", type=float, default=0.1)
    m.add_argument("--no-ask", dest="ask", action="store_false", help="follow only: no question at the end")
    lg = sub.add_parser("lag")
    lg.add_argument("--seconds", type=float, default=240)
    lg.add_argument("--speed", type=float, default=6)
    lg.add_argument("--fps", type=float, default=0.5)
    f = sub.add_parser("_follow")
    f.add_argument("--minutes", type=float)
    f.add_argument("--fps", type=float)
    f.add_argument("--no-ask", dest="ask", action="store_false")
    w = sub.add_parser("_write")
    w.add_argument("target")
    w.add_argument("seconds", type=float)
    w.add_argument("--speed", type=float)
    for s in (m, lg, f):
        s.add_argument("--model", default=str(TINY))
    args = p.parse_args(argv)
    if args.cmd == "memory":
        memory(args)
    elif args.cmd == "lag":
        lag(args)
    elif args.cmd == "_follow":
        print(json.dumps(follow_pipe(args.model, args.minutes, args.fps, args.ask)))
    else:
        with (os.fdopen(sys.stdout.fileno(), "wb", closefd=False) if args.target == "-" else open(args.target, "wb")) as out:  # fmt: skip
            write_stream(out, args.seconds, args.speed)


if __name__ == "__main__":
    main()
