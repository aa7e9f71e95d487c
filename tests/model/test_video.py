"""Decoding and sampling (longvu.model.video)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import FIXTURES, scene_frames, write_video
from media_util import pattern, write_clip, write_with_cover

from longvu.errors import VideoError
from longvu.model.video import Sampling, iter_frames, load_video, resize_like


@pytest.mark.parametrize(
    "key,path",
    [
        ("video1", "videos/video1.mp4"),
        ("video3", "videos/video3.mp4"),
        ("synth_scene", "golden/videos/synth_scene.mp4"),
    ],
)
def test_pyav_frames_identical_to_reference(key, path):
    ref = json.loads((FIXTURES / "golden" / "frames" / key / "frames.json").read_text())
    clip = load_video(FIXTURES / path)
    assert clip.source_indices == ref["sampled_indices"]
    assert clip.num_frames_total == ref["num_frames_total"]
    assert clip.step == ref["step"] and clip.avg_fps == ref["avg_fps"]
    assert list(clip.frame_hw) == ref["frame_hw"]
    assert [hashlib.sha256(f.tobytes()).hexdigest() for f in clip.frames] == ref["rgb_sha256"]


def test_default_sampling_one_frame_per_second(synth_video):
    clip = load_video(synth_video)
    assert clip.num_frames_total == 60
    assert clip.step == 10
    assert clip.source_indices == [0, 10, 20, 30, 40, 50]
    assert clip.timestamps == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert clip.frames.shape == (6, 64, 96, 3)


def test_fps_option(synth_video):
    assert load_video(synth_video, Sampling(fps=2)).source_indices == list(range(0, 60, 5))
    assert load_video(synth_video, Sampling(fps=0.5)).source_indices == [0, 20, 40]


def test_start_end_and_max_frames(synth_video):
    clip = load_video(synth_video, Sampling(start=1.5, end=4.0))
    assert clip.source_indices == [15, 25, 35]
    assert clip.timestamps == [1.5, 2.5, 3.5]
    clip = load_video(synth_video, Sampling(fps=10, max_frames=4))
    assert clip.source_indices == [0, 15, 30, 45]


def test_bad_sampling_options():
    with pytest.raises(VideoError, match="fps must be positive"):
        Sampling(fps=0)
    with pytest.raises(VideoError, match="end"):
        Sampling(start=5, end=2)
    with pytest.raises(VideoError, match="max_frames"):
        Sampling(max_frames=0)


def test_time_range_outside_video(synth_video):
    with pytest.raises(VideoError, match="no frame in the requested time range"):
        load_video(synth_video, Sampling(start=100))


def test_decoded_pixels_close_to_source(tmp_path):
    frames = scene_frames(20)
    path = write_video(tmp_path / "v.mp4", frames, fps=10)
    clip = load_video(path, Sampling(fps=10))
    assert clip.frames.shape == frames.shape
    assert np.abs(clip.frames.astype(int) - frames.astype(int)).mean() < 6


# ---------------------------------------------------------------- beyond the reference
def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean()) if a.shape == b.shape else float("inf")


@pytest.mark.parametrize("rotation,hflip", [(90, False), (-90, False), (180, False), (90, True), (0, True)])
def test_rotation_metadata_is_applied(tmp_path, rotation, hflip):
    src = pattern(3, 48, 64)
    path = write_clip(tmp_path / "phone.mp4", src, rotation=rotation, hflip=hflip)
    # The display matrix says "rotate counter-clockwise by `rotation`, then mirror".
    want = np.rot90(src[0], rotation // 90)
    want = want[:, ::-1] if hflip else want
    got = load_video(path, Sampling(fps=10)).frames[0]
    assert got.shape == want.shape
    assert mean_diff(got, want) < 4
    if rotation in (90, -90):  # turning the other way would be wrong
        assert mean_diff(got, np.rot90(want, 2)) > 30


def test_timestamps_are_presentation_times_and_sampling_still_counts_frames(tmp_path):
    times = [0.0, 0.1, 0.15, 0.4, 0.45, 0.9, 1.0, 1.7, 1.75, 2.0]  # a variable frame rate
    path = write_clip(tmp_path / "vfr.mp4", pattern(10), times=times)
    clip = load_video(path, Sampling(fps=100))
    assert clip.timestamps == times  # not index / avg_fps
    one_fps = load_video(path)
    step = round(clip.avg_fps)  # the reference's rule: every round(avg_fps)-th decoded frame
    assert one_fps.source_indices == list(range(0, 10, step))
    assert one_fps.timestamps == [times[i] for i in one_fps.source_indices]


def test_cover_art_is_not_taken_for_the_video(tmp_path):
    import av

    src = pattern(12)
    path = write_with_cover(tmp_path / "with_cover.mp4", src)
    with av.open(str(path)) as c:  # the cover really is the first video stream
        assert c.streams.video[0].codec_context.name == "mjpeg" and len(c.streams.video) == 2
    clip = load_video(path, Sampling(fps=10))
    assert clip.frames.shape == (12, 48, 64, 3) and mean_diff(clip.frames, src) < 6
    audio = write_with_cover(tmp_path / "song.m4a", None)
    with pytest.raises(VideoError, match="no video stream \\(only a cover picture\\)"):
        load_video(audio)


@pytest.mark.parametrize("codec,fmt", [("libx264", "matroska"), ("ffv1", "matroska"), ("libx265", "mp4")])
def test_ten_bit_video_is_converted(tmp_path, codec, fmt):
    import av

    src = pattern(4, 64, 96)
    path = write_clip(tmp_path / "ten.bin", src, codec=codec, fmt=fmt, pix_fmt="yuv420p10le")
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.format.name == "yuv420p10le"
    clip = load_video(path, Sampling(fps=10))
    assert clip.frames.dtype == np.uint8 and mean_diff(clip.frames, src) < 4


def test_frames_resized_to_the_first_frame_size(tmp_path):
    """The reference stacks frames: a size change mid-stream is resized away, in iter_frames."""
    small = write_clip(tmp_path / "a.h264", pattern(10, 48, 64), codec="libx264", fmt="h264")
    large = write_clip(tmp_path / "b.h264", pattern(10, 96, 128), codec="libx264", fmt="h264")
    both = tmp_path / "both.h264"
    both.write_bytes(small.read_bytes() + large.read_bytes())
    frames = [f for _, _, f in iter_frames(both, Sampling(fps=100))]
    assert len(frames) == 20 and {f.shape for f in frames} == {(48, 64, 3)}
    assert mean_diff(frames[15], resize_like(pattern(10, 96, 128)[5], (48, 64, 3))) < 8
