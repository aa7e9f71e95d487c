"""benchmarks/ablation.py: the settings it builds, what its "off" values do, and its table (no model, no eval)."""

from __future__ import annotations

import torch

from benchmarks.ablation import (
    CONTEXT,
    KNOBS,
    OFF_THRESHOLD,
    SETTING_NAMES,
    aggressive,
    build_settings,
    parse_args,
    stage_counts,
    table,
)
from longvu.model.compress.spatial import spatial_token_compression
from longvu.model.compress.temporal import select_frames, window_similarity

ON = {"dino_threshold": 0.83, "drop_threshold": 0.8, "text_guided": True}  # the reference checkpoints' values


def test_each_setting_changes_exactly_its_own_knob():
    settings = build_settings(ON, 512)
    assert [s.name for s in settings] == SETTING_NAMES == [
        "all-on", "frames-off", "frames-aggressive", "stc-off", "stc-aggressive", "text-guided-off",
    ]  # fmt: skip
    base = settings[0]
    assert base.knob is None
    assert base.overrides == {**ON, CONTEXT: 512}
    expected = {
        "frames-off": ("dino_threshold", 1.01),
        "frames-aggressive": ("dino_threshold", 0.68),
        "stc-off": ("drop_threshold", 1.01),
        "stc-aggressive": ("drop_threshold", 0.5),
        "text-guided-off": ("text_guided", False),
    }
    for s in settings[1:]:
        knob, value = expected[s.name]
        assert s.knob == knob
        changed = {k for k in s.overrides if s.overrides[k] != base.overrides[k]}
        assert changed == {knob}, s.name
        assert s.overrides[knob] == value
        assert set(s.overrides) == set(KNOBS) | {CONTEXT}
        assert s.overrides[CONTEXT] == 512


def test_aggressive_follows_the_checkpoint_and_the_options():
    settings = {s.name: s for s in build_settings({**ON, "dino_threshold": 0.9}, 1024, dino_delta=0.2, stc_delta=0.1)}
    assert settings["frames-aggressive"].overrides["dino_threshold"] == 0.7
    assert settings["stc-aggressive"].overrides["drop_threshold"] == 0.7
    assert settings["all-on"].overrides == {**ON, "dino_threshold": 0.9, CONTEXT: 1024}
    assert aggressive(0.83, 0.15) == 0.68  # rounded, not 0.6799999999999999
    assert aggressive(0.1, 0.3) == 0.0


def test_off_threshold_keeps_identical_frames_and_tokens_that_1_0_may_drop():
    # 32 identical frames (two DINOv2 windows): their similarity is 1.0 up to float32 rounding.
    feats = torch.randn(1, 576, 1536, generator=torch.Generator().manual_seed(0)).repeat(32, 1, 1)
    sim = torch.cat([window_similarity(feats[:16]), window_similarity(feats[16:])])
    assert (sim - 1.0).abs().max() < 1e-4
    kept = select_frames(sim, [16, 16], max_frames=1, threshold=OFF_THRESHOLD, window=16, cap=400).kept
    assert kept == list(range(32))
    # STC on 16 identical frames of 10 tokens: every token is kept by the similarity rule.
    frames = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(1)).repeat(16, 1, 1)
    stc = spatial_token_compression(frames, max_visual_len=1000, drop_threshold=OFF_THRESHOLD, window=8)
    assert stc.reduced_len == 160 and stc.tokens.shape == (160, 64)
    assert spatial_token_compression(frames, max_visual_len=1000, drop_threshold=0.8, window=8).reduced_len == 20


def test_table_rows_and_cells():
    settings = build_settings(ON, 512)
    results = [
        {"setting": "all-on", "set": "short", "accuracy": 50.0, "n": 4, "mean_frames_kept": 7.0,
         "mean_visual_tokens": 318.33},
        {"setting": "all-on", "set": "long", "accuracy": 25.0, "n": 4, "mean_frames_kept": 75.67,
         "mean_visual_tokens": 349.0},
        {"setting": "stc-off", "set": "short", "accuracy": 33.33, "n": 3, "mean_frames_kept": 7.0,
         "mean_visual_tokens": None},
    ]  # fmt: skip
    lines = table(settings, results, ["short", "long"]).splitlines()
    assert lines[0] == (
        "| setting | changed | short accuracy % (n) | long accuracy % (n) | short frames kept / visual tokens "
        "| long frames kept / visual tokens |"
    )
    assert lines[1] == "| --- | --- | --- | --- | --- | --- |"
    assert len(lines) == 2 + 6
    assert lines[2] == "| all stages on (checkpoint) | - | 50.0 (4) | 25.0 (4) | 7.0 / 318 | 75.7 / 349 |"
    assert lines[3] == "| frame reduction off | dino_threshold=1.01 | - | - | - | - |"
    assert lines[4].startswith("| frame reduction aggressive | dino_threshold=0.68 |")
    assert lines[5] == "| STC off | drop_threshold=1.01 | 33.3 (3) | - | 7.0 / - | - |"
    assert lines[6].startswith("| STC aggressive | drop_threshold=0.5 |")
    assert lines[7].startswith("| text-guided selection off | text_guided=false |")


def test_stage_counts_from_a_trace():
    trace = {
        "counts": {"sampled_frames": 25, "frames_after_dino": 4, "visual_tokens_after_stc_drop": 288,
                   "visual_tokens_final": 288, "sequence_length": 413},
        "frames": {"high_res": [2]}, "stc": {"applied": False},
    }  # fmt: skip
    assert stage_counts(trace) == {
        "frames_sampled": 25, "frames_kept": 4, "high_res_frames": 1, "tokens_after_stc_drop": 288,
        "visual_tokens": 288, "sequence_length": 413, "stc_applied": False,
    }  # fmt: skip


def test_defaults():
    args = parse_args(["--model", "ckpt"])
    assert (args.context, args.n, args.short_seed, args.long_seed) == (512, 30, 101, 102)
    assert (args.short_minutes, args.long_minutes) == ([0.2, 0.4], [2.0, 4.0])
    assert args.families == ["colour", "shape", "word"] and args.settings == SETTING_NAMES
