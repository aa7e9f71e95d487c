"""The streaming encoder equals the in-memory path; sampling and errors while streaming."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, scene_frames, write_video

from longvu import Sampling, load_video
from longvu.model.encode import encode_video

VIDEO = FIXTURES / "videos" / "video1.mp4"


def test_streaming_equals_in_memory(qwen_model):
    m = qwen_model.model
    streamed = encode_video(m, VIDEO, keep_all_below=5)
    in_memory = encode_video(m, load_video(VIDEO), keep_all_below=5)
    assert streamed.stored == in_memory.stored and streamed.source_indices == in_memory.source_indices
    assert torch.equal(streamed.similarity, in_memory.similarity)
    assert torch.equal(streamed.sampled, in_memory.sampled)


def test_keep_all_below_controls_what_is_stored(qwen_model):
    m = qwen_model.model
    short = encode_video(m, VIDEO, keep_all_below=100)
    assert short.all_frames and short.stored == list(range(21))
    long = encode_video(m, VIDEO, keep_all_below=5)
    assert not long.all_frames and len(long.stored) < 21
    # the stored frames are exactly stage 1's survivors
    assert torch.equal(long.sampled, short.sampled_for(long.stored))


def test_max_frames_while_streaming(qwen_model, tmp_path):
    path = write_video(tmp_path / "v.mp4", scene_frames(100), fps=10)
    s = Sampling(fps=10, max_frames=7)
    feats = encode_video(qwen_model.model, path, s, keep_all_below=1000)
    assert feats.source_indices == load_video(path, s).source_indices
    assert len(feats) == 7


def test_cap_applies_to_stored_frames(qwen_model, tmp_path):
    import dataclasses

    path = write_video(tmp_path / "v.mp4", scene_frames(40, scene_len=1), fps=1)  # every frame different
    cfg = qwen_model.model.cfg.with_overrides({"max_frames_cap": 5, "dino_threshold": 2.0})
    model = dataclasses.replace(qwen_model.model, cfg=cfg)
    feats = encode_video(model, path, keep_all_below=2)
    assert feats.stored == [int(i * 40 / 5) for i in range(5)]


def test_progress_bar_only_when_asked(qwen_model, capsys):
    encode_video(qwen_model.model, VIDEO, keep_all_below=5, progress=False)
    assert "encoding" not in capsys.readouterr().err
    encode_video(qwen_model.model, VIDEO, keep_all_below=5, progress=True)
    err = capsys.readouterr().err
    assert "encoding" in err and "/21 [" in err and "frame/s" in err  # total known up front, with a rate


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_length(tmp_path):
    """A 12-minute video costs about the memory of a 3-minute one (peak RSS from the OS, fresh processes)."""
    import sys

    from benchmarks.long_video import TINY, make_video, run_rss

    peaks = []
    for minutes in (3, 12):
        video = make_video(tmp_path / f"v{minutes}.mp4", minutes, fps=10, w=320, h=180)
        res = run_rss([sys.executable, "-m", "longvu.cli", "ask", str(video), "What happens?", "--model", str(TINY),
                       "--device", "cpu", "--no-cache", "--greedy", "--max-new-tokens", "4", "--quiet"])  # fmt: skip
        peaks.append(res["peak_rss_mib"])
    assert peaks[1] <= 1.25 * peaks[0], peaks
