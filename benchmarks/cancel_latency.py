"""How soon a cancelled decode stops, whatever the sampling skips (issue 21, finding 10).

    python -m benchmarks.cancel_latency                   # 3 min 640x360 at 30 fps, 10 runs per sampling

The video is made here (``benchmarks.long_video.make_video``).  Each run decodes it with
:func:`longvu.model.video.iter_frames` on a thread, under a sampling that keeps few or no frames
for a long stretch (a late ``start``, a low ``fps``) or the default one, sets the cancel event
after 0.1 s, and measures the time from the set to :class:`~longvu.errors.Cancelled` and the
frames decoded after it.  Prints the median and the largest of each; writes them to
``<out>/cancel_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from .long_video import make_video

SAMPLINGS = {"start=170s": {"start": 170.0}, "fps=0.01": {"fps": 0.01}, "default": {}}


def one_run(path: Path, sampling: dict, after_s: float = 0.1) -> tuple[float, int]:
    from longvu.errors import Cancelled
    from longvu.model.video import Sampling, StreamInfo, iter_frames

    cancel, info, out = threading.Event(), StreamInfo(), {}

    def work() -> None:
        try:
            for _ in iter_frames(path, Sampling(**sampling), info, cancel=cancel):
                pass
        except Cancelled:
            out["t"], out["frames"] = time.monotonic(), info.total
        except Exception as e:  # reported below
            out["error"] = e

    t = threading.Thread(target=work)
    t.start()
    time.sleep(after_s)
    at, frames_at = time.monotonic(), info.total
    cancel.set()
    t.join()
    if "t" not in out:
        raise SystemExit(f"the decode ended before the cancel ({out.get('error', 'no error')}): use a longer video")
    return out["t"] - at, out["frames"] - frames_at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_video(Path(tmp) / "v.mp4", args.minutes)
        results = {}
        for name, sampling in SAMPLINGS.items():
            runs = [one_run(path, sampling) for _ in range(args.runs)]
            lat = [r[0] for r in runs]
            frames = [r[1] for r in runs]
            results[name] = {"latency_s_median": statistics.median(lat), "latency_s_max": max(lat),
                             "frames_after_cancel_max": max(frames), "runs": args.runs}  # fmt: skip
            print(f"{name}: {statistics.median(lat) * 1000:.1f} ms median, {max(lat) * 1000:.1f} ms max, "
                  f"at most {max(frames)} frames decoded after the cancel (n={args.runs})")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cancel_latency.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
