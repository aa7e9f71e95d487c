"""Live video: a file still being written (by a writer process), a pipe, the horizon, falling behind,
bad input; what a question sees is the offline encoder's result on the same frames."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from live_util import start_writer, write

from longvu import Sampling, VideoError
from longvu.errors import MediaLimitError
from longvu.model.encode import encode_video
from longvu.model.intake import MediaLimits
from longvu.model.live import FollowOptions, LiveSource
from longvu.model.live_encode import LiveEncoder

HALF = Sampling(fps=0.5)  # a 16-frame window is 32 s of stream: few frames to encode on a CPU
STEADY = FollowOptions(idle_end_s=None, max_backlog=None)  # never drop frames: results are deterministic


def finished(path, seconds: float, fmt: str = "mpegts"):
    with open(path, "wb") as f:
        write(f, seconds, fmt=fmt)
    return path


def same_features(a, b) -> None:
    assert a.source_indices == b.source_indices and a.timestamps == b.timestamps
    assert a.window_sizes == b.window_sizes and a.stored == b.stored and a.all_frames == b.all_frames
    assert torch.equal(a.similarity, b.similarity)
    assert torch.equal(a.sampled, b.sampled)


def test_growing_file_mid_stream_then_whole(qwen_model, tmp_path):
    path, go = tmp_path / "rec.ts", tmp_path / "go"
    path.touch()
    writer = start_writer(path, 48, "--speed", "6", "--pause-at", "36", "--go", str(go))
    try:
        with qwen_model.watch(path, sampling=HALF, follow=STEADY) as live:
            assert live.wait(32, timeout=120), live.status()
            mid = live.status()
            assert writer.poll() is None  # the writer is not done: the file is still being written
            assert mid["seen_s"] == 32.0, mid
            assert mid["seen_s"] == 32.0 and not mid["ended"] and mid["frames_kept"] == 16
            answer = live.ask("What happens?", generation=_short())
            assert answer.trace.data["video"]["covered_s"] == [0.0, 32.0]
            assert answer.trace.data["counts"]["sampled_frames"] == 16
            go.touch()
            assert writer.wait(timeout=60) == 0
            live.end()
            assert live.wait(timeout=120), live.status()
            end = live.status()
            assert end["ended"] and end["seen_s"] == 48.0 and end["error"] is None and end["lag_s"] == 0.0
            whole = live.features()
            assert whole.covered == (0.0, 48.0)
            chat = live.chat()
            assert chat.ask("And then?", _short()).trace.data["video"]["covered_s"] == [0.0, 48.0]
        # what the questions saw is exactly what the offline encoder makes of the finished file
        same_features(
            whole, encode_video(qwen_model.model, path, HALF, keep_all_below=qwen_model.config.frame_budget())
        )
    finally:
        writer.kill()


@pytest.mark.parametrize("fmt", ["mpegts", "matroska", "mp4"])
def test_survivors_and_cap_as_offline(qwen_model, tmp_path, fmt):
    """With fewer frames kept than seen (keep_all_below small), stage 1's survivors and cap are the offline ones."""
    path = finished(tmp_path / f"v.{fmt}", 40, fmt)
    source = LiveSource.open_file(path, STEADY)
    source.end()  # the file is complete: read it to its end
    enc = LiveEncoder(qwen_model.model, source, HALF, keep_all_below=5)
    try:
        assert enc.wait(timeout=120)
        live = enc.snapshot()
    finally:
        enc.close()
    offline = encode_video(qwen_model.model, path, HALF, keep_all_below=5)
    assert not live.all_frames and len(live.stored) < len(live)
    same_features(live, offline)
    assert live.covered == (0.0, 40.0)


def test_horizon_bounds_what_is_kept(qwen_model, tmp_path):
    path = finished(tmp_path / "v.ts", 80)
    with qwen_model.watch(path, sampling=HALF, horizon_s=40, follow=STEADY) as live:
        live.end()
        assert live.wait(timeout=120)
        st = live.status()
        feats = live.features()
    # windows of 32 s: [0, 32) ends before 80 - 40 and is deleted; [32, 64) reaches into the horizon
    assert st["windows"] == 2 and feats.covered == (32.0, 80.0)
    assert feats.timestamps[0] == 32.0 and len(feats) == 24 and st["frames_kept"] == 24
    assert st["disk_bytes"] == 24 * feats.sampled[0].numel() * feats.sampled.element_size()
    answer = qwen_model.ask(feats, "What happens?", generation=_short())
    assert answer.trace.data["video"]["covered_s"] == [32.0, 80.0]


def test_pipe_as_source(qwen_model, tmp_path):
    writer = start_writer("-", 36, "--speed", "20", stdout=subprocess.PIPE)
    try:
        with qwen_model.watch(writer.stdout, sampling=HALF) as live:
            assert live.wait(timeout=120)
            st = live.status()
            assert st["ended"] and st["seen_s"] == 36.0 and st["error"] is None
            assert live.features().covered == (0.0, 36.0)
    finally:
        writer.kill()
        writer.stdout.close()


def test_behind_drops_older_frames_keeps_newest(qwen_model, tmp_path):
    path = finished(tmp_path / "v.ts", 48)
    with qwen_model.watch(path, sampling=Sampling(fps=1), follow=FollowOptions(idle_end_s=1.0, max_backlog=4)) as live:
        assert live.wait(timeout=120)  # the file stopped growing: taken as finished (idle_end_s)
        st, feats = live.status(), live.features()
    assert st["dropped_frames"] > 0 and len(feats) + st["dropped_frames"] == 48
    assert feats.timestamps[-1] == 47.0 and feats.covered[1] == 48.0  # the newest frame is never dropped
    assert feats.timestamps == sorted(feats.timestamps)


def test_not_a_video_and_limits(qwen_model, tmp_path):
    text = tmp_path / "notes.ts"
    text.write_text("just some text, not a video\n" * 50)
    with qwen_model.watch(text, follow=STEADY) as live:
        assert live.wait(timeout=30)
        assert "it is text" in live.status()["error"]
        with pytest.raises(VideoError, match="it is text"):
            live.ask("What happens?")
    # over a limit: following stops, what was encoded before stays answerable
    path = finished(tmp_path / "v.ts", 80)
    with qwen_model.watch(path, sampling=HALF, follow=STEADY, limits=MediaLimits(max_seconds=50)) as live:
        live.end()
        assert live.wait(timeout=120)
        st = live.status()
        assert "lasts more than 50s" in st["error"] and st["ended"]
        feats = live.features()  # every frame decoded before the limit (to 50 s, the last window short)
        assert feats.timestamps[-1] == 50.0 and feats.window_sizes == [16, 10]
    with pytest.raises(VideoError, match="no such file"):
        qwen_model.watch(tmp_path / "missing.ts")
    with pytest.raises(VideoError, match="a live stream has no end"):
        qwen_model.watch(path, sampling=Sampling(max_frames=4))
    assert issubclass(MediaLimitError, VideoError)


def test_no_window_yet(qwen_model, tmp_path):
    path = tmp_path / "empty.ts"
    path.touch()
    with qwen_model.watch(path, follow=FollowOptions(idle_end_s=30)) as live:
        st = live.status()
        assert st["seen_s"] == 0.0 and st["covered_s"] is None and not st["ended"]
        with pytest.raises(VideoError, match="nothing of the stream is encoded yet"):
            live.features()
    assert not os.path.exists(live.encoder._tmp)  # close() deleted what was on disk


def _short():
    from longvu import GenerationOptions

    return GenerationOptions(max_new_tokens=4, greedy=True)
