"""Decoding and sampling (longvu.video)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import FIXTURES, scene_frames, write_video

from longvu.errors import VideoError
from longvu.video import Sampling, load_video


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
