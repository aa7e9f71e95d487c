"""Do our PyAV frames equal decord's?  The original evaluation scripts decode with decord.

Builds a small corpus of awkward files with PyAV (B-frames, open GOPs, variable frame
rate, VP9 .webm like Something-Something v2, streams where fewer frames decode than
there are packets, sizes that are not multiples of 16, BT.709 and full-range colour,
10-bit), then, for each file, compares what the eval runner feeds the model with what
decord gives the original scripts: the frame count and fps each reads, the indices each
benchmark's rule picks from them, and the pixels of those frames (sampled the way each
script reads them: ``get_batch`` for VideoMME/MLVU/EgoSchema, ``vr[i]`` for MVBench), and
of every frame read in order.

    python scripts/decoder_compare.py [--out FOLDER]   # needs `pip install decord`

prints a Markdown table (the README's "Decoding: PyAV against decord" table).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av  # before decord: its wheel bundles FFmpeg 4.1 and libvpx, and loaded first they break PyAV's VP9
import numpy as np


@dataclass(frozen=True)
class Case:
    name: str  # the file name
    what: str  # one line for the table
    make: Callable[[Path], None]


# ------------------------------------------------------------------ corpus
def frames_for(n: int, w: int, h: int) -> list[np.ndarray]:
    """Frames that differ from each other everywhere (a moving gradient and a block at a per-frame spot)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        img = np.stack([(xx * 3 + i * 7) % 256, (yy * 2 + i * 5) % 256, ((xx + yy) + i * 11) % 256], -1)
        x, y = (i * 13) % max(1, w - 24), (i * 7) % max(1, h - 24)
        img[y : y + 24, x : x + 24] = (255 - i % 256, i % 256, 128)
        out.append(img.astype(np.uint8))
    return out


def encode(path: Path, codec: str, frames: list[np.ndarray], *, pts: list[int] | None = None, rate: int = 25,
           time_base: Fraction | None = None, pix_fmt: str = "yuv420p", options: dict | None = None,
           color: dict | None = None) -> None:  # fmt: skip
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, options=options or {})
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        if time_base is not None:
            s.codec_context.time_base = time_base
        for k, v in (color or {}).items():
            setattr(s.codec_context, k, v)
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def remux(src: Path, dst: Path, keep: Callable[[int, object], bool]) -> None:
    """Copy ``src``'s video packets to ``dst``, only those ``keep(index, packet)`` accepts."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        s_in = i.streams.video[0]
        s_out = o.add_stream_from_template(s_in)
        for k, p in enumerate(x for x in i.demux(s_in) if x.size):
            if keep(k, p):
                p.stream = s_out
                o.mux(p)


X264 = {"preset": "veryfast", "crf": "23"}


def _bframes(p: Path) -> None:
    encode(p, "libx264", frames_for(150, 320, 240), options={**X264, "x264-params": "keyint=50:bframes=3:scenecut=0"})


def _open_gop(p: Path) -> None:
    params = "keyint=30:min-keyint=30:bframes=3:open-gop=1:scenecut=0"
    encode(p, "libx264", frames_for(150, 320, 240), options={**X264, "x264-params": params})


def _vfr(p: Path) -> None:
    steps = [40, 40, 120, 40, 200, 33, 33, 33, 500, 40] * 12  # milliseconds between frames
    pts = np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(int).tolist()
    encode(p, "libx264", frames_for(len(pts), 320, 240), pts=pts, time_base=Fraction(1, 1000), options=X264)


def _vp9(p: Path) -> None:
    encode(p, "libvpx-vp9", frames_for(48, 427, 240), rate=12, options={"deadline": "realtime", "cpu-used": "8"})


def _cut_mid_gop(p: Path) -> None:
    src = p.with_suffix(".src.mp4")
    encode(src, "libx264", frames_for(120, 320, 240), options={**X264, "x264-params": "keyint=40:bframes=0:scenecut=0"})
    remux(src, p, lambda k, pkt: k >= 25)  # starts 15 packets before a keyframe, as a copy-cut does
    src.unlink()


def _odd_size(p: Path) -> None:
    encode(p, "libx264", frames_for(60, 322, 182), options=X264)


def _bt709(p: Path) -> None:
    color = {"colorspace": 1, "color_primaries": 1, "color_trc": 1}  # BT.709, as HD YouTube videos are tagged
    encode(p, "libx264", frames_for(60, 320, 240), options=X264, color=color)


def _full_range(p: Path) -> None:
    encode(p, "libx264", frames_for(60, 320, 240), pix_fmt="yuvj420p", options=X264)


def _ten_bit(p: Path) -> None:
    encode(p, "libx264", frames_for(60, 320, 240), pix_fmt="yuv420p10le", options=X264)


CASES = [
    Case("bframes.mp4", "H.264, 3 B-frames, closed GOP of 50, 25 fps", _bframes),
    Case("open_gop.mp4", "H.264, open GOP of 30 (leading B-frames)", _open_gop),
    Case("vfr.mp4", "H.264, variable frame rate (33-500 ms steps)", _vfr),
    Case("ssv2_like.webm", "VP9 .webm, 12 fps, 427x240", _vp9),
    Case("cut_mid_gop.mp4", "H.264 copied from mid-GOP: 15 packets before the first keyframe", _cut_mid_gop),
    Case("odd_size.mp4", "H.264, 322x182 (not a multiple of 16)", _odd_size),
    Case("bt709.mp4", "H.264 tagged BT.709", _bt709),
    Case("full_range.mp4", "H.264, full-range yuvj420p", _full_range),
    Case("ten_bit.mp4", "H.264 High 10, yuv420p10le", _ten_bit),
]


def build_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in CASES:
        path = folder / case.name
        if not path.exists():
            case.make(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------ the two readers
def ours(path: Path, preset, bound=None) -> tuple[int, float, list[int], np.ndarray]:
    """What the eval runner feeds the model: (frames counted, fps, indices, frames[N, H, W, 3])."""
    from longvu.eval.benchmarks import Item
    from longvu.eval.runner import load_item_video
    from longvu.model.video import count_frames

    n, fps = count_frames(path)
    extra = {"bound": list(bound)} if bound else {}
    clip = load_item_video(Item("q", preset.name, str(path), "", ["A"], "A", "", extra), preset)
    return n, fps, list(clip.source_indices), clip.frames


def theirs(path: Path, preset, bound=None) -> tuple[int, float, list[int], np.ndarray]:
    """What decord gives the original script for the same rule."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n, fps = len(vr), float(vr.get_avg_fps())
    idx = preset.frame_indices(n, fps, bound)
    if preset.name == "mvbench":  # eval_mvbench.py reads one frame at a time
        frames = np.stack([vr[i].asnumpy() for i in idx])
    else:
        frames = vr.get_batch(idx).asnumpy()
    return n, fps, idx, frames


def all_frames_ours(path: Path) -> np.ndarray:
    from longvu.model.video import Sampling, count_frames, iter_frames

    _, fps = count_frames(path)
    return np.stack([f for _, _, f in iter_frames(path, Sampling(fps=fps))])


def all_frames_theirs(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return np.stack([vr.next().asnumpy() for _ in range(len(vr))])


# ------------------------------------------------------------------ comparison
def same_frames(a: np.ndarray, b: np.ndarray) -> str:
    """``"equal"``, ``"3 of 13 frames differ (mean 4.10, max 255)"`` (levels of 0-255) or the count/shape mismatch."""
    if a.shape != b.shape:
        return f"{a.shape[0]} vs {b.shape[0]} frames" if a.shape[1:] == b.shape[1:] else f"{a.shape} vs {b.shape}"
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
    worst = diff.max(axis=1) if a.size else np.zeros(0)
    bad = int((worst > 0).sum())
    return "equal" if bad == 0 else f"{bad} of {len(a)} frames differ (mean {diff.mean():.2f}, max {int(worst.max())})"


def same_indices(ours: list[int], theirs: list[int]) -> str:
    if ours == theirs:
        return "equal"
    return f"ours lack {sorted(set(theirs) - set(ours))}" if set(ours) < set(theirs) else f"{ours} vs {theirs}"


def compare(path: Path) -> dict:
    """One row of the table: counts, fps, and per benchmark rule whether indices and pixels agree."""
    from longvu.eval.benchmarks import PRESETS

    row: dict = {"file": path.name}
    for key, preset, bound in (("videomme", PRESETS["videomme"], None), ("mvbench", PRESETS["mvbench"], None),
                               ("mvbench_bound", PRESETS["mvbench"], (0.5, 3.5))):  # fmt: skip
        n1, f1, i1, a = ours(path, preset, bound)
        n2, f2, i2, b = theirs(path, preset, bound)
        row.update(count=(n1, n2), fps=(round(f1, 3), round(f2, 3)))
        row[key] = {"indices": same_indices(i1, i2), "pixels": same_frames(a, b)}
    row["sequential"] = same_frames(all_frames_ours(path), all_frames_theirs(path))
    return row


def table(rows: list[dict]) -> str:
    whats = {c.name: c.what for c in CASES}
    lines = ["| file | frames (ours / decord) | fps (ours / decord) | VideoMME rule | MVBench rule | MVBench, bound 0.5-3.5 s | every frame in order |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        cells = [
            f"`{r['file']}`: {whats.get(r['file'], '')}",
            "{} / {}".format(*r["count"]),
            "{} / {}".format(*r["fps"]),
        ]
        for key in ("videomme", "mvbench", "mvbench_bound"):
            c = r[key]
            cells.append(c["pixels"] if c["indices"] == "equal" else f"{c['indices']}: {c['pixels']}")
        cells.append(r["sequential"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="corpus folder (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out or tmp)
        rows = [compare(p) for p in build_corpus(folder)]
    import decord

    print(f"decord {decord.__version__} against PyAV {av.__version__}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
