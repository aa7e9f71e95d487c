"""Small synthetic videos for the intake and decoding tests (built with PyAV, no downloads)."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import numpy as np


def pattern(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """``[n, h, w, 3]`` frames that look different under every flip and rotation."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        out[i, ..., 0] = (x * 255 // (w - 1)).astype(np.uint8)
        out[i, ..., 1] = (y * 255 // (h - 1)).astype(np.uint8)
        out[i, ..., 2] = (i * 37) % 256
        out[i, : h // 4, : w // 4] = 255  # a white block in the top-left corner
    return out


def write_clip(
    path: Path,
    frames: np.ndarray,
    *,
    fps: int = 10,
    codec: str = "mpeg4",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    times: list[float] | None = None,
) -> Path:
    """Encode ``[N, H, W, 3]`` RGB frames; ``times`` (seconds) gives each frame's PTS (variable rate)."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "mpeg4":
            s.options = {"qscale": "2"}
        if rotation is not None and hasattr(s.codec_context, "set_display_rotation"):  # PyAV >= 16
            s.set_display_rotation(rotation, hflip=hflip)
            rotation = None
        if times is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    if rotation is not None:  # older PyAV cannot set it: write the track header's matrix ourselves
        _patch_tkhd_matrix(path, rotation, hflip)
    return path


def _patch_tkhd_matrix(path: Path, rotation: int, hflip: bool) -> None:
    """Put a display matrix (FFmpeg's ``av_display_rotation_set`` then a horizontal flip) in an MP4's ``tkhd``.

    The matrix is nine big-endian int32 (a b u c d v x y w; 16.16 fixed point but for u v w,
    2.30), which FFmpeg's demuxer reads as the stream's display matrix.
    """
    import math
    import struct

    rad = math.radians(rotation)
    c, s_ = round(math.cos(rad) * 65536), round(math.sin(rad) * 65536)
    m = [c, -s_, 0, s_, c, 0, 0, 0, 1 << 30]
    if hflip:
        m[0], m[3], m[6] = -m[0], -m[3], -m[6]
    data = bytearray(Path(path).read_bytes())
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    at = data.index(identity, data.index(b"tkhd"))
    data[at : at + 36] = struct.pack(">9i", *m)
    Path(path).write_bytes(bytes(data))


def write_with_cover(path: Path, frames: np.ndarray | None, *, cover_first: bool = True) -> Path:
    """An MP4 with a JPEG cover picture (``attached_pic``) and the video (or a silent audio track).

    FFmpeg's muxer puts the cover after the tracks; with ``cover_first`` the ``udta`` box
    that holds it is moved ahead of them, so a reader that takes the first video stream
    gets the cover.
    """
    import av

    with av.open(str(path), "w", format="mp4") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic.value  # an int: PyAV < 16 takes nothing else
        if frames is not None:
            main = out.add_stream("mpeg4", rate=10)
            main.width, main.height, main.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            todo = [main.encode(av.VideoFrame.from_ndarray(f, format="rgb24")) for f in frames] + [main.encode()]
        else:
            main = out.add_stream("aac", rate=16000)
            silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            silence.sample_rate = 16000
            todo = [main.encode(silence), main.encode()]
        picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
        for pkt in [*cover.encode(picture.reformat(format="yuvj420p")), *cover.encode()]:
            out.mux(pkt)
        for pkts in todo:
            for pkt in pkts:
                out.mux(pkt)
    if cover_first:
        _move_udta_first(path)
    return path


def mp4_boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """Top-level boxes between ``start`` and ``end``: type -> (offset, size) (the last of each type)."""
    out, at = {}, start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        out[kind] = (at, size)
        at += max(size, 8)
    return out


def _move_udta_first(path: Path) -> None:
    data = path.read_bytes()
    m_at, m_size = mp4_boxes(data, 0, len(data))[b"moov"]
    kids, at, parts = [], m_at + 8, {}
    while at < m_at + m_size:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        kids.append(kind)
        parts.setdefault(kind, []).append(data[at : at + size])
        at += size
    order = [b"mvhd", b"udta"] + [k for k in dict.fromkeys(kids) if k not in (b"mvhd", b"udta")]
    body = b"".join(b for k in order for b in parts.get(k, []))
    path.write_bytes(data[: m_at + 8] + body + data[m_at + m_size :])


def patch_mp4_u32(path: Path, box_path: list[bytes], offset: int, value: int) -> None:
    """Overwrite a big-endian u32 at ``offset`` inside the box found by following ``box_path``."""
    data = bytearray(path.read_bytes())
    start, end = 0, len(data)
    for kind in box_path:
        at, size = mp4_boxes(data, start, end)[kind]
        start, end = at + 8, at + size
    data[start - 8 + offset : start - 8 + offset + 4] = struct.pack(">I", value)
    path.write_bytes(bytes(data))


def write_shaped(path: Path, width: int, height: int, frames: int = 1) -> Path:
    """A Matroska file of ``frames`` grey FFV1 frames of any shape (odd and 1-pixel sides included): a few KB."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        s = out.add_stream("ffv1", rate=1)
        s.width, s.height, s.pix_fmt = width, height, "gray"
        grey = []
        for i in range(frames):
            f = av.VideoFrame(width, height, "gray")
            f.planes[0].update(bytes([i * 40 % 256]) * f.planes[0].buffer_size)
            grey.append(f)
        _encode_all(out, s, grey)
    return path


def _encode_all(out, stream, frames) -> None:
    """Encode ``frames`` (PTS 0, 1, ...) into ``stream`` of ``out``, then flush the encoder."""
    for i, f in enumerate(frames):
        f.pts = i
        for pkt in stream.encode(f):
            out.mux(pkt)
    for pkt in stream.encode():
        out.mux(pkt)


def _big_frame_packets(cache: Path, side: int) -> Path:
    """One x264 keyframe of ``side x side`` (flat grey: a few hundred KB), encoded once and kept in ``cache``."""
    import av

    tpl = cache / f"big{side}.mkv"
    if not tpl.exists():
        with av.open(str(tpl), "w", format="matroska") as out:
            s = out.add_stream("libx264", rate=1)
            s.width, s.height, s.pix_fmt = side, side, "yuv420p"
            s.options = {"preset": "ultrafast", "crf": "51"}
            f = av.VideoFrame(side, side, "yuv420p")
            for p in f.planes:
                p.update(bytes(p.buffer_size))
            _encode_all(out, s, [f])
    return tpl


def write_stream_bomb(path: Path, fmt: str, n_big: int, side: int = 8192, small_first: bool = True,
                      cache: Path | None = None) -> Path:  # fmt: skip
    """A small video (a 64x64 x264 stream, 20 frames) beside ``n_big`` streams of one ``side x side`` frame.

    Each big stream's frame is the same packet (encoded once): the file stays under a MB while
    decoding a frame of every stream would take ``1.5 * side**2`` bytes each, and more for the decoder.
    """
    import av

    with av.open(str(_big_frame_packets(cache or path.parent, side))) as src:
        ins = src.streams.video[0]
        packets = [bytes(p) for p in src.demux(ins) if p.size]
        with av.open(str(path), "w", format=fmt) as out:

            def add_small():
                s = out.add_stream("libx264", rate=10)
                s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
                return s

            small = add_small() if small_first else None
            bigs = [out.add_stream_from_template(ins) for _ in range(n_big)]
            small = small or add_small()
            for s in bigs:
                for data in packets:
                    pkt = av.Packet(data)
                    pkt.stream, pkt.pts, pkt.dts, pkt.time_base, pkt.is_keyframe = s, 0, 0, ins.time_base, True
                    out.mux(pkt)
            frames = [np.full((64, 64, 3), i * 10, np.uint8) for i in range(20)]
            _encode_all(out, small, [av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames])
    return path
