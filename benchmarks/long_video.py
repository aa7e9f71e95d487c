"""Long-video benchmark: peak memory and wall time of ``longvu ask`` on 10/30/60-minute videos.

    python -m benchmarks.long_video                       # 10, 30, 60 minutes, 640x360 at 30 fps
    python -m benchmarks.long_video --minutes 1 2 --fps 10 # a quick run

For each length it generates a synthetic video (scene changes every 20 s, a moving
square; cached under ``--videos``), then measures, each in a fresh process so that
the peak RSS comes from the OS (``wait4``'s ``ru_maxrss``):

* ``decode``: PyAV decoding the same frames (every frame decoded, the sampled ones
  converted to RGB), the floor any pipeline pays; and ``ffmpeg -f null`` if installed;
* ``in_memory``: the original code's approach, as a baseline in the same run: every
  sampled frame decoded into memory first, then encoded (``--no-baseline`` skips it);
* ``first``: ``longvu ask`` with an empty feature cache (streaming encode);
* ``second``: another question on the same video (the feature cache is warm).

Results go to ``<out>/long_video.json`` and ``<out>/long_video.png``, and a Markdown
table is printed.  The default checkpoint is the tiny one in the test fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from benchmarks.peak_rss import run_measured

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "parity" / "checkpoints" / "tiny-longvu-qwen2"
Q1 = "What happens in this video?"
Q2 = "What colour is the moving square at the end?"


def make_video(path: Path, minutes: float, fps: int = 30, w: int = 640, h: int = 360, scale: int = 1) -> Path:
    """A synthetic video: a new background every 20 s, a square moving across it.

    ``scale`` > 1 enlarges every ``w`` x ``h`` frame that many times (nearest neighbour): the same
    content at a larger frame size.
    """
    import av
    import numpy as np

    n = int(minutes * 60 * fps)
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w * scale, h * scale, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "28", "g": str(2 * fps)}
        scene = fps * 20
        base = colour = None
        for i in range(n):
            if i % scene == 0:
                colour = rng.integers(0, 255, 3)
                base = np.empty((h, w, 3), np.uint8)
                base[:] = colour
                base[:, :, 0] = (np.arange(w)[None, :] * rng.integers(1, 4)) % 256
            f = base.copy()
            x, y = (i * 7) % (w - 60), (i * 3) % (h - 60)
            f[y : y + 60, x : x + 60] = 255 - colour
            if scale > 1:
                f = f.repeat(scale, axis=0).repeat(scale, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    tmp.rename(path)
    return path


def run_rss(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` and report wall time and its own peak RSS (MiB), from the OS (see ``benchmarks.peak_rss``)."""
    m = run_measured(cmd, timeout=24 * 3600, env=env)
    if m.rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({m.rc}): {m.stderr[-800:]}")
    return {"wall_s": round(m.wall_s, 3), "peak_rss_mib": round(m.max_rss_mb, 1), "stdout": m.stdout}


# ----------------------------------------------------------------- child modes
def decode_only(video: str) -> None:
    """PyAV decode of every frame, sampled ones converted to RGB, at 1 fps."""
    from longvu.model.video import Sampling, StreamInfo, iter_frames

    info = StreamInfo()
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_frames(video, Sampling(), info))
    print(json.dumps({"decode_s": time.perf_counter() - t0, "sampled": n, "decoded": info.total}))


def in_memory(video: str, model: str) -> None:
    """The original's approach: all sampled frames in memory, then the same encoder."""
    import torch

    from longvu import GenerationOptions, LongVU, load_video

    torch.set_num_threads(os.cpu_count() or 1)
    lv = LongVU.from_pretrained(model, device="cpu", dtype="float32", cache=False)
    t0 = time.perf_counter()
    clip = load_video(video)
    t1 = time.perf_counter()
    ans = lv.ask(clip, Q1, generation=GenerationOptions(max_new_tokens=16, greedy=True))
    t2 = time.perf_counter()
    print(json.dumps({"decode_s": t1 - t0, "rest_s": t2 - t1, "timings": ans.trace.data.get("timings", {})}))


# ----------------------------------------------------------------------- driver
def measure(video: Path, model: str, baseline: bool, workdir: Path) -> dict:
    py = sys.executable
    longvu = [py, "-m", "longvu.cli"]
    res: dict = {}
    d = run_rss([py, "-m", "benchmarks.long_video", "--child-decode", str(video)])
    res["decode"] = {**json.loads(d["stdout"]), "wall_s": d["wall_s"], "peak_rss_mib": d["peak_rss_mib"]}
    if shutil.which("ffmpeg"):
        f = run_rss(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(video), "-f", "null", "-"])
        res["ffmpeg_null"] = {"wall_s": f["wall_s"], "peak_rss_mib": f["peak_rss_mib"]}
    if baseline:
        b = run_rss([py, "-m", "benchmarks.long_video", "--child-in-memory", str(video), "--model", model])
        res["in_memory"] = {**json.loads(b["stdout"]), "wall_s": b["wall_s"], "peak_rss_mib": b["peak_rss_mib"]}
    cache = workdir / f"cache-{video.stem}"
    shutil.rmtree(cache, ignore_errors=True)
    for name, q in (("first", Q1), ("second", Q2)):
        trace = workdir / f"{video.stem}-{name}.json"
        r = run_rss(longvu + ["ask", str(video), q, "--model", model, "--device", "cpu", "--dtype", "float32",
                              "--greedy", "--max-new-tokens", "16", "--cache-dir", str(cache), "--trace", str(trace),
                              "--quiet", "--no-stream"])  # fmt: skip
        t = json.loads(trace.read_text())
        timings = t.get("timings", {})
        video_s = timings.get("encode_total", timings.get("encode_cache_read", 0.0))
        question = video_s + timings.get("compose", 0) + timings.get("generate", 0)
        res[name] = {"wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"], "timings": timings,
                     "question_s": round(question, 3), "frames_sampled": t["counts"]["sampled_frames"],
                     "frames_kept": t["counts"]["frames_after_dino"]}  # fmt: skip
    return res


def table(results: list[dict]) -> str:
    rows = [
        "| video | sampled frames | decode floor (PyAV) | in-memory baseline: wall / peak RSS | longvu first question: wall / peak RSS | s per video minute | second question: wall (question only) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        m = r["minutes"]
        base = r.get("in_memory")
        base_s = f"{base['wall_s']:.1f} s / {base['peak_rss_mib']:.0f} MiB" if base else "-"
        f, s = r["first"], r["second"]
        rows.append(
            f"| {m:g} min | {f['frames_sampled']} | {r['decode']['decode_s']:.1f} s | {base_s} | "
            f"{f['wall_s']:.1f} s / {f['peak_rss_mib']:.0f} MiB | {f['wall_s'] / m:.2f} | "
            f"{s['wall_s']:.1f} s ({s['question_s']:.2f} s) |"
        )
    return "\n".join(rows)


def targets(results: list[dict]) -> dict:
    by = {r["minutes"]: r for r in results}
    out = {}
    if 60 in by:
        f60 = by[60]["first"]
        out["rss_60_le_1536mib"] = f60["peak_rss_mib"] <= 1536
        out["s_per_min_60_le_0.85"] = f60["wall_s"] / 60 <= 0.85
        if 10 in by:
            f10 = by[10]["first"]
            out["rss_60_over_10"] = round(f60["peak_rss_mib"] / f10["peak_rss_mib"], 3)
            out["rss_60_within_1.25x_of_10"] = out["rss_60_over_10"] <= 1.25
            out["wall_60_over_10"] = round(f60["wall_s"] / f10["wall_s"], 3)
            out["wall_60_le_6.5x_10"] = out["wall_60_over_10"] <= 6.5
    out["second_over_first_wall"] = {
        r["minutes"]: round(r["second"]["wall_s"] / r["first"]["wall_s"], 3) for r in results
    }
    out["second_over_first_question"] = {
        r["minutes"]: round(r["second"]["question_s"] / r["first"]["question_s"], 4) for r in results
    }
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mins = [r["minutes"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(mins, [r["first"]["wall_s"] for r in results], "o-", label="longvu, first question")
    a.plot(mins, [r["second"]["wall_s"] for r in results], "o-", label="longvu, second question (cache)")
    a.plot(mins, [r["decode"]["decode_s"] for r in results], "o--", label="PyAV decode floor")
    if all("in_memory" in r for r in results):
        a.plot(mins, [r["in_memory"]["wall_s"] for r in results], "o:", label="in-memory baseline")
    a.set_xlabel("video length (min)")
    a.set_ylabel("wall time (s)")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(mins, [r["first"]["peak_rss_mib"] for r in results], "o-", label="longvu (streaming)")
    if all("in_memory" in r for r in results):
        b.plot(mins, [r["in_memory"]["peak_rss_mib"] for r in results], "o:", label="in-memory baseline")
    b.axhline(1536, color="grey", lw=0.8, ls="--", label="1.5 GiB target")
    b.set_xlabel("video length (min)")
    b.set_ylabel("peak RSS (MiB)")
    b.legend()
    b.grid(alpha=0.3)
    fig.suptitle("longvu ask on synthetic 640x360 videos (tiny checkpoint, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 30, 60])
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--model", default=str(TINY))
    ap.add_argument("--videos", default=os.path.join(tempfile.gettempdir(), "longvu-bench-videos"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--no-baseline", action="store_true", help="skip the in-memory baseline")
    ap.add_argument("--child-decode", help=argparse.SUPPRESS)
    ap.add_argument("--child-in-memory", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_decode:
        decode_only(args.child_decode)
        return 0
    if args.child_in_memory:
        in_memory(args.child_in_memory, args.model)
        return 0
    videos, out = Path(args.videos), Path(args.out)
    videos.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="longvu-bench-") as work:
        for m in args.minutes:
            v = videos / f"synth_{m:g}min_{args.fps}fps.mp4"
            if not v.exists():
                print(f"generating {v.name} ...", file=sys.stderr, flush=True)
                make_video(v, m, args.fps)
            print(f"measuring {v.name} ...", file=sys.stderr, flush=True)
            r = {
                "minutes": m,
                "fps": args.fps,
                "video": v.name,
                **measure(v, args.model, not args.no_baseline, Path(work)),
            }
            results.append(r)
            print(
                json.dumps({k: v for k, v in r.items() if k in ("minutes", "first", "second")})[:400], file=sys.stderr
            )
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "command": "python -m benchmarks.long_video " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": results,
        "targets": targets(results),
    }
    (out / "long_video.json").write_text(json.dumps(summary, indent=1))
    try:
        plot(results, out / "long_video.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    print(table(results))
    print(json.dumps(summary["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
