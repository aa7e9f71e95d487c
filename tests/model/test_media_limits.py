"""The media-limits layer (issue 21): shapes, extra streams, preprocessing cost and cancellation in the decoder.

Each test takes a class of inputs (several shapes, several stream layouts), and the memory
tests measure the peak RSS of a fresh process from the OS (``benchmarks/peak_rss.py``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media_fuzz import run_measured
from media_util import pattern, write_clip, write_shaped, write_stream_bomb

from longvu.errors import Cancelled, MediaLimitError, VideoError
from longvu.model.intake import MediaLimits, probe_video
from longvu.model.preprocess import ImageSpec, pad_and_resize, preprocess_frame, preprocess_reference
from longvu.model.video import CANCEL_EVERY, Sampling, StreamInfo, count_frames, iter_frames

REAL_SHAPES = [(3840, 2160), (2160, 3840), (4096, 2160), (7680, 4320), (2560, 1080), (1080, 2520), (5120, 1440),
               (1440, 5120), (3840, 1920), (640, 480), (176, 144), (16, 2), (2, 16), (2, 2)]  # fmt: skip
ABSURD_SHAPES = [(1_000_000, 1), (8_847_360, 1), (1, 60_000), (1, 600_000), (17, 2), (2, 17), (100, 801),
                 (20_000, 4_000), (4_000, 20_000), (16_385, 16_385)]  # fmt: skip
DEGENERATE = [(1, 1), (1, 2), (2, 1), (0, 0), (0, 5), (1, 8)]


@pytest.mark.parametrize("w,h", REAL_SHAPES)
def test_every_real_shape_passes_the_default_limits(w, h):
    MediaLimits().check_size(w, h, "v")


@pytest.mark.parametrize("w,h", ABSURD_SHAPES)
def test_absurd_shapes_are_refused_by_the_default_limits(w, h):
    with pytest.raises(MediaLimitError) as e:
        MediaLimits().check_size(w, h, "v")
    assert e.value.limit in ("max_side", "max_aspect")


@pytest.mark.parametrize("w,h", DEGENERATE)
def test_degenerate_frames_are_refused_whatever_the_limits(w, h):
    with pytest.raises(VideoError, match="too small"):
        MediaLimits(max_side=None, max_aspect=None).check_size(w, h, "v")
    with pytest.raises(VideoError, match=f"{w}x{h}"):  # too small, or too long for its width
        MediaLimits().check_size(w, h, "v")
    if 0 in (w, h):
        MediaLimits().check_size(w, h, "v", header=True)  # a header's 0 is "not said": decoding checks


def test_limits_validate_every_bound():
    for kw in ({"max_side": 0}, {"max_aspect": 0.5}, {"max_aspect": float("nan")}, {"max_pixels": float("inf")}):
        with pytest.raises(VideoError, match="MediaLimits"):
            MediaLimits(**kw)


@pytest.mark.parametrize("w,h", [(2, 60_000), (60_000, 2), (3, 40), (1, 1), (2, 1), (5, 3000)])
def test_files_of_absurd_or_degenerate_shape_are_refused_before_decoding(tmp_path, w, h):
    path = write_shaped(tmp_path / "v.mkv", w, h)
    for fn in (probe_video, count_frames, lambda p: list(iter_frames(p))):
        with pytest.raises(VideoError, match=f"{w}x{h}"):
            fn(path)


def test_a_shape_within_the_limits_decodes(tmp_path):
    for w, h in ((16, 2), (3, 24), (64, 8)):
        frames = list(iter_frames(write_shaped(tmp_path / f"{w}x{h}.mkv", w, h, frames=3)))
        assert len(frames) == 3 and frames[0][2].shape == (h, w, 3)


# ---------------------------------------------------------------------- extra streams
PROBE = """
import json, sys
from longvu.model.intake import MediaLimits, probe_video
from longvu.model.video import count_frames, load_video
path, limits = sys.argv[1], MediaLimits(**json.loads(sys.argv[2]))
for fn in (probe_video, count_frames, lambda p, limits: load_video(p, limits=limits).frames.shape):
    try:
        print(fn(path, limits=limits))
    except Exception as e:
        print(type(e).__name__, e)
"""


def _peak_mb(path: Path, limits: dict) -> tuple[float, str]:
    m = run_measured([sys.executable, "-c", PROBE, str(path), json.dumps(limits)], timeout=120)
    assert m.rc == 0, m.stderr[-2000:]
    return m.max_rss_mb, m.stdout


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """A 64x64 stream beside 8192x8192 ones, in three containers, the small stream first or last."""
    d = tmp_path_factory.mktemp("bombs")
    out = {}
    for fmt, ext in (("matroska", "mkv"), ("mpegts", "ts"), ("mp4", "mp4")):
        out[f"{ext}-3"] = write_stream_bomb(d / f"b3.{ext}", fmt, 3, cache=d)
    out["mkv-6-last"] = write_stream_bomb(d / "b6.mkv", "matroska", 6, small_first=False, cache=d)
    return out


def test_extra_streams_are_never_decoded(bombs, tmp_path):
    """Unbounded, FFmpeg's probe decoded a frame of every stream: +600 MB for three 8192x8192 ones."""
    base, _ = _peak_mb(write_clip(tmp_path / "plain.mp4", pattern(20, 64, 64)), {})
    for name, path in bombs.items():
        limits = {"max_pixels": 4096 * 2160} if name.endswith("last") else {}
        peak, out = _peak_mb(path, limits)
        assert peak < base + 150, f"{name}: peak RSS {peak:.0f} MB (a plain video: {base:.0f} MB)\n{out}"
        if name.endswith("last"):  # the first stream is a big one: the limit refuses it, before decoding
            assert out.count("MediaLimitError") == 3, out
        else:  # the first stream is the small one: it is decoded, only it
            assert "(2, 64, 64, 3)" in out and "width=64, height=64" in out, out


# ---------------------------------------------------------------------- preprocessing
SPEC = ImageSpec(size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("w,h", [(1_000_000, 1), (1, 600_000), (1, 60_000), (300_000, 3), (40_000, 17)])
def test_preprocessing_an_absurd_shape_costs_its_pixels_not_its_side_squared(w, h):
    """A hand-built clip can bring any shape to the encoder: the content is resized before it is padded."""
    frame = np.full((h, w, 3), 200, np.uint8)
    t0 = time.process_time()
    out = pad_and_resize(frame, SPEC)
    assert time.process_time() - t0 < 2.0  # the padded-square path: 42 s for 1x60,000, ~45 GB for 8,847,360x1
    assert out.shape == (384, 384, 3)
    assert (out[0, 0] == SPEC.pad_color).all() and (out[191, 191] >= 190).all()  # padding round the content


@pytest.mark.parametrize("w,h", [(3072, 384), (384, 3072), (800, 100), (100, 800), (1920, 1080), (1080, 1920)])
def test_preprocessing_is_exact_for_every_shape_within_the_limits(w, h):
    frame = pattern(1, h, w)[0]
    assert np.array_equal(preprocess_frame(frame, SPEC), preprocess_reference(frame, SPEC))


# ---------------------------------------------------------------------- cancellation
class CountingCancel:
    """A cancel event set after its ``after``-th look; counts the looks."""

    def __init__(self, after: int) -> None:
        self.after, self.looks = after, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.after


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("long") / "long.mp4", pattern(600, 48, 64), fps=30)  # 20 s


@pytest.mark.parametrize(
    "sampling",
    [Sampling(start=19.0), Sampling(fps=0.05), Sampling(start=5, end=6), Sampling(), Sampling(fps=30, start=18)],
)
def test_cancel_stops_decoding_within_a_few_frames_whatever_the_sampling(long_clip, sampling):
    """The check runs in the decoder's loop, not per sampled frame: a late ``start`` skips nothing of it."""
    info = StreamInfo()
    cancel = CountingCancel(after=3)
    with pytest.raises(Cancelled):
        for _ in iter_frames(long_clip, sampling, info, cancel=cancel):
            pass
    assert info.total <= 3 * CANCEL_EVERY + 1, info.total  # decoded frames before it stopped (of 600)
    with pytest.raises(Cancelled):
        count_frames(long_clip, cancel=CountingCancel(after=2))


# ---------------------------------------------------------------------- held files
def test_a_held_file_is_closed_after_its_last_reader(tmp_path):
    """A request may end (and close its file) while its job still reads: the descriptor must outlive the reader."""
    import os

    from longvu.model.intake import HeldFile

    path = write_clip(tmp_path / "v.mp4", pattern(5))
    held = HeldFile(os.open(path, os.O_RDONLY), "v.mp4")
    fd, reader = held.fd, held.reader()
    held.close()
    assert reader.read(8) == path.read_bytes()[:8]  # still readable
    os.fstat(fd)
    reader.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # now closed, once
    with pytest.raises(VideoError, match="closed"):
        held.reader()
    held.close()
    with HeldFile(os.open(path, os.O_RDONLY), "v.mp4") as held:
        assert probe_video(held).width == 64 and len(list(iter_frames(held, Sampling(fps=10)))) == 5
        assert str(held) == "v.mp4"
