"""Hostile variants of real videos, for fuzz tests of anything that takes a video file.

    seeds = seed_videos(tmp_dir)                 # short real clips: mp4, mkv, ts, raw h264
    for name, data in media_variants(seeds, count=300, seed=0):
        ...                                      # write `data` to a file and feed it in

Each variant is one damage applied to one seed: truncation, bit flips (anywhere or in
the header), runs of random or zero bytes, a duplicated or removed chunk, or an MP4 box
field patched to an extreme value (durations, time scales, sample tables, sizes, the
codec's parameter sets).  The seeds are cut from the example videos in
``tests/fixtures/parity/videos`` (stream copy, so the bitstreams are the real ones), short
enough that a few hundred variants decode in seconds.  Deterministic for a given seed.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path

from benchmarks.peak_rss import Measured, run_measured  # noqa: F401 (re-exported for the fuzz tests)

FIXTURE_VIDEOS = Path(__file__).parent / "fixtures" / "parity" / "videos"

# MP4 boxes that hold other boxes (walked), and leaf boxes worth patching.
_MP4_PARENTS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"udta", b"dinf", b"mvex"}
_MP4_TARGETS = {
    b"mvhd",
    b"tkhd",
    b"mdhd",
    b"hdlr",
    b"elst",
    b"stsd",
    b"stts",
    b"ctts",
    b"stss",
    b"stsc",
    b"stsz",
    b"stco",
    b"co64",
}
_EXTREMES = (0, 1, 2, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def seed_videos(out_dir: Path, seconds: float = 1.0) -> list[Path]:
    """Short clips (the first ``seconds``) of each example video in four containers."""
    import av

    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = []
    for src in sorted(FIXTURE_VIDEOS.glob("*.mp4")):
        for ext, fmt in ((".mp4", "mp4"), (".mkv", "matroska"), (".ts", "mpegts"), (".h264", "h264")):
            dst = out_dir / f"{src.stem}{ext}"
            if not dst.exists():
                _remux_head(src, dst, fmt, seconds, av)
            seeds.append(dst)
    return seeds


def _remux_head(src: Path, dst: Path, fmt: str, seconds: float, av) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        bsf = av.BitStreamFilterContext("h264_mp4toannexb", s_in) if fmt in ("h264", "mpegts") else None
        for packet in inp.demux(s_in):
            if packet.dts is None:
                continue
            if packet.pts is not None and packet.pts * s_in.time_base > seconds:
                break
            for p in bsf.filter(packet) if bsf else [packet]:
                p.stream = s_out
                out.mux(p)


def media_variants(seeds: list[Path], count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` damaged copies of the seed files, as ``(name, bytes)``; the name says what was done."""
    rng = random.Random(seed)
    originals = [(p.name, p.read_bytes()) for p in seeds]
    damages = (_truncate, _flip_bits, _flip_header_bits, _random_run, _zero_run, _splice, _patch_mp4)
    for i in range(count):
        name, data = originals[i % len(originals)]
        damage = damages[(i // len(originals)) % len(damages)]
        out, what = damage(bytearray(data), rng)
        yield f"{i:04d}-{name}-{what}", bytes(out)


def _truncate(data: bytearray, rng: random.Random) -> tuple[bytearray, str]:
    cut = rng.choice([rng.randrange(0, 64), rng.randrange(0, len(data)), len(data) - rng.randrange(1, 4096)])
    cut = max(0, min(len(data) - 1, cut))
    return data[:cut], f"truncate{cut}"


def _flip_bits(data: bytearray, rng: random.Random) -> tuple[bytearray, str]:
    n = rng.choice([1, 4, 32])
    for _ in range(n):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data, f"flip{n}"


def _flip_header_bits(data: bytearray, rng: random.Random) -> tuple[bytearray, str]:
    """Flips where containers keep their headers: the first and the last 4 KiB."""
    n = rng.choice([1, 3, 8])
    for _ in range(n):
        at = rng.randrange(min(4096, len(data)))
        data[at if rng.random() < 0.5 else len(data) - 1 - at] ^= 1 << rng.randrange(8)
    return data, f"hflip{n}"


def _random_run(data: bytearray, rng: random.Random) -> tuple[bytearray, str]:
    at, n = rng.randrange(len(data)), rng.choice([8, 256, 4096])
    data[at : at + n] = rng.randbytes(len(data[at : at + n]))
    return data, f"random{at}+{n}"


def _zero_run(data: bytearray, rng: random.Random) -> tuple[bytearray, str]:
    at, n = rng.randrange(len(data)), rng.choice([16, 1024, 65536])
    data[at : at + n] = bytes(len(data[at : at + n]))
    return data, f"zero{at}+{n}"


def _splice(data: bytearray, rng: random.Random) -> tuple[bytearray, str]:
    a, b = sorted(rng.randrange(len(data)) for _ in range(2))
    if rng.random() < 0.5:
        return data[:a] + data[b:], f"cut{a}-{b}"
    return data[:b] + data[a:b] + data[b:], f"dup{a}-{b}"


def _patch_mp4(data: bytearray, rng: random.Random) -> tuple[bytearray, str]:
    """An extreme value in a field of an MP4 header box (or its size); other containers get header flips."""
    boxes = [b for b in _mp4_boxes(data, 0, len(data)) if b[0] in _MP4_TARGETS]
    if not boxes:
        return _flip_header_bits(data, rng)
    kind, start, size = rng.choice(boxes)
    value = rng.choice(_EXTREMES) if rng.random() < 0.8 else rng.getrandbits(32)
    at = start if rng.random() < 0.15 else start + 8 + 4 * rng.randrange(max(1, (size - 8) // 4))
    if at + 4 <= len(data):
        data[at : at + 4] = struct.pack(">I", value)
    return data, f"{kind.decode()}@{at - start}={value:#x}"


def _mp4_boxes(data: bytearray, start: int, end: int) -> list[tuple[bytes, int, int]]:
    out, at = [], start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        if size < 8 or at + size > end:
            break
        out.append((kind, at, size))
        if kind in _MP4_PARENTS:
            out += _mp4_boxes(data, at + 8, at + size)
        at += size
    return out
