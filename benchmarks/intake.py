"""What the hardened intake costs: ``iter_frames`` against a bare PyAV decode of the same frames.

    python -m benchmarks.intake                      # a 2-minute 640x360 30 fps video, 3 runs each
    python -m benchmarks.intake --minutes 0.5 --runs 2

``bare``: ``av.open(path)``, every frame decoded, every ``round(fps)``-th converted to RGB
(the old ``iter_frames`` without the checks; it imports longvu too, so that wall time and
peak RSS differ by decoding only).  ``intake``: ``longvu.model.video.iter_frames``:
the file opened by us and read by FFmpeg through a Python file object, the format
allow-list, the checks per frame (limits, rotation, PTS).  Each run is a fresh process;
the decode time (wall, and CPU over all threads) is measured inside it, imports
excluded; the peak RSS comes from ``wait4``.  The two modes alternate so that a busy machine weighs on both alike; the
ratio of medians is printed and written to ``<out>/intake.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .long_video import make_video, run_rss


def bare(video: str) -> None:
    import av

    import longvu.model.video  # noqa: F401 (the same imports as `intake`, so wall and RSS compare decoding only)

    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with av.open(video) as c:
        s = c.streams.video[0]
        s.thread_type = "SLICE"
        step = max(1, round(float(s.average_rate)))
        for i, frame in enumerate(c.decode(s)):
            if i % step == 0:
                frame.to_ndarray(format="rgb24")
                n += 1
    report(t0, c0, n)


def intake(video: str) -> None:
    import av  # noqa: F401 (imported before the clock starts, as in `bare`)

    from longvu.model.intake import MediaLimits
    from longvu.model.video import Sampling, iter_frames

    t0, c0 = time.perf_counter(), time.process_time()
    limits = MediaLimits(max_seconds=24 * 3600, max_frames=10**8, max_pixels=8192 * 8192)  # checked, never hit
    n = sum(1 for _ in iter_frames(video, Sampling(), limits=limits))
    report(t0, c0, n)


def report(t0: float, c0: float, sampled: int) -> None:
    """Decode wall time, and its CPU time over all threads (steadier on a busy machine)."""
    print(
        json.dumps({"decode_s": time.perf_counter() - t0, "decode_cpu_s": time.process_time() - c0, "sampled": sampled})
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--videos", type=Path, default=Path(tempfile.gettempdir()) / "longvu-bench-videos")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    args.videos.mkdir(parents=True, exist_ok=True)
    video = args.videos / f"synthetic_{args.minutes:g}min.mp4"
    if not video.exists():
        make_video(video, args.minutes)
    runs: dict[str, list[dict]] = {"bare": [], "intake": []}
    for _ in range(args.runs):
        for mode in runs:
            r = run_rss([sys.executable, "-m", "benchmarks.intake", "--child", mode, str(video)])
            runs[mode].append({**json.loads(r.pop("stdout")), **r})
    summary = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("decode_s", "decode_cpu_s", "wall_s", "peak_rss_mib")}
        for m, rs in runs.items()
    }
    assert runs["bare"][0]["sampled"] == runs["intake"][0]["sampled"], "both must sample the same frames"
    summary["intake_over_bare"] = {k: round(summary["intake"][k] / summary["bare"][k], 3) for k in summary["bare"]}
    summary["video"] = {"path": str(video), "minutes": args.minutes, "sampled": runs["bare"][0]["sampled"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "intake.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        {"bare": bare, "intake": intake}[sys.argv[2]](sys.argv[3])
    else:
        sys.exit(main())
