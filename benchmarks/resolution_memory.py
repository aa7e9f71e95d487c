"""Peak memory against frame size: a 4K video and a 640x360 video of the same length and content.

    python -m benchmarks.resolution_memory                 # 20 s at 30 fps, 3 runs of each
    python -m benchmarks.resolution_memory --seconds 60 --runs 5

Both videos are made here (libx264, ``benchmarks.long_video.make_video``): the 4K one is the
640x360 one's frames scaled up 6x (nearest neighbour), so the two differ by frame size only.  Each run is a fresh
``longvu ask --no-cache`` process with the tiny test checkpoint on the CPU (decode,
DINOv2, stage 1, SigLIP, the connector, 4 answer tokens), its peak RSS from the OS
(``wait4`` through :mod:`benchmarks.peak_rss`).  The sizes alternate so that a busy
machine weighs on both alike.  Prints the medians and their ratio (4K over 640x360) and
writes them, with every run, to ``<out>/resolution_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from .long_video import make_video
from .peak_rss import run_measured

MODEL = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "parity" / "checkpoints" / "tiny-longvu-qwen2"
SIZES = {"640x360": 1, "3840x2160": 6}  # name -> scale of the 640x360 content


def ask_cmd(video: Path, model: Path = MODEL) -> list[str]:
    return [sys.executable, "-m", "longvu.cli", "ask", str(video), "What is shown?", "--model", str(model),
            "--device", "cpu", "--dtype", "float32", "--no-cache", "--greedy", "--max-new-tokens", "4",
            "--quiet", "--no-stream"]  # fmt: skip


def measure(videos: dict[str, Path], runs: int, model: Path = MODEL) -> dict:
    """Peak RSS (MiB) of ``runs`` fresh ``longvu ask`` processes per video, alternating; medians and ratio."""
    peaks: dict[str, list[float]] = {name: [] for name in videos}
    for _ in range(runs):
        for name, video in videos.items():
            m = run_measured(ask_cmd(video, model), timeout=3600)
            if m.rc != 0:
                raise RuntimeError(f"longvu ask {name} failed ({m.rc}): {m.stderr[-800:]}")
            peaks[name].append(round(m.max_rss_mb, 1))
    medians = {name: statistics.median(p) for name, p in peaks.items()}
    small, large = medians["640x360"], medians["3840x2160"]
    return {"peak_rss_mib": medians, "ratio_4k_over_360p": round(large / small, 3), "runs": peaks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of both videos (default 20)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per video (default 3)")
    ap.add_argument("--videos", type=Path, default=Path(tempfile.gettempdir()) / "longvu-bench-videos")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    args.videos.mkdir(parents=True, exist_ok=True)
    videos = {}
    for name, scale in SIZES.items():
        path = args.videos / f"resolution_{name}_{args.seconds:g}s.mp4"
        videos[name] = path if path.exists() else make_video(path, args.seconds / 60, scale=scale)
    result = {"seconds": args.seconds, "fps": 30, **measure(videos, args.runs)}
    result["video_bytes"] = {name: p.stat().st_size for name, p in videos.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resolution_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
