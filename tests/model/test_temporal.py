"""Stage 1: DINOv2 temporal reduction (longvu.model.compress.temporal)."""

from __future__ import annotations

import torch

from longvu.model.compress.temporal import select_frames, window_similarity


def one_hot_frames(labels: list[int], dim: int = 8) -> torch.Tensor:
    """Frames whose features are one-hot on ``label``: identical labels have cosine 1, others 0."""
    x = torch.zeros(len(labels), 1, dim)
    for i, lab in enumerate(labels):
        x[i, 0, lab] = 1.0
    return x


def reduce(
    features: torch.Tensor,
    *,
    max_frames: int,
    threshold: float,
    window: int = 16,
    cap: int = 400,
    fix_middle_frame: bool = False,
):
    """Stage 1 as production runs it: per-window similarities, then the decisions."""
    sims = [window_similarity(features[s : s + window]) for s in range(0, features.shape[0], window)]
    return select_frames(torch.cat(sims), [len(x) for x in sims], max_frames=max_frames, threshold=threshold,
                         window=window, cap=cap, fix_middle_frame=fix_middle_frame)  # fmt: skip


def test_similarity_includes_self_term():
    # 4 frames: three identical (label 0) and one different (label 1).
    sim = window_similarity(one_hot_frames([0, 0, 0, 1]))
    # frame 0 sees cos 1,1,1,0 -> 3/4; frame 3 sees 0,0,0,1 -> 1/4
    assert torch.allclose(sim, torch.tensor([0.75, 0.75, 0.75, 0.25]))


def test_under_budget_keeps_everything():
    res = reduce(one_hot_frames([0] * 20), max_frames=21, threshold=0.5)
    assert res.path == "none" and res.kept == list(range(20)) and res.similarity is None


def test_single_window_keeps_middle_and_distinct_frames():
    # 5 frames < window 16: one window. Labels 0,0,0,0,1: sims 0.8 x4, 0.2.
    res = reduce(one_hot_frames([0, 0, 0, 0, 1]), max_frames=1, threshold=0.5)
    assert res.path == "single_window"
    assert res.kept == [2, 4]  # middle frame (5 // 2 = 2) forced in, frame 4 is distinct
    assert res.window_sizes == [5]


def test_windows_offset_and_short_last_window():
    labels = [0] * 16 + [1] * 3  # window 0: 16 identical frames, window 1: 3 identical frames
    res = reduce(one_hot_frames(labels), max_frames=1, threshold=0.9)
    assert res.path == "windows"
    assert res.window_sizes == [16, 3]
    assert res.kept == [8, 17]  # each window keeps only its middle frame: 16//2 = 8, 16 + 3//2 = 17
    assert res.similarity.shape == (19,)
    assert torch.allclose(res.similarity, torch.ones(19))  # before the middle-frame override


def test_threshold_is_strict():
    # Two labels alternating in a window of 4: every frame has mean similarity exactly 0.5.
    res = reduce(one_hot_frames([0, 1, 0, 1]), max_frames=1, threshold=0.5, window=4)
    assert res.kept == [2]  # 0.5 < 0.5 is false, only the forced middle frame stays
    res = reduce(one_hot_frames([0, 1, 0, 1]), max_frames=1, threshold=0.5001, window=4)
    assert res.kept == [0, 1, 2, 3]


def test_cap_subsamples_survivors_evenly():
    labels = list(range(8)) * 4  # 32 frames, all distinct inside each window of 8
    res = reduce(one_hot_frames(labels), max_frames=1, threshold=0.5, window=8, cap=10)
    assert res.num_kept_before_cap == 32 and res.capped
    assert res.kept == [int(3.2 * i) for i in range(10)]


def test_cap_not_applied_on_single_window_path():
    res = reduce(one_hot_frames(list(range(8))), max_frames=1, threshold=0.5, window=16, cap=3)
    assert res.path == "single_window" and len(res.kept) == 8 and not res.capped


def test_fix_middle_frame_keeps_least_redundant():
    # Frames 0..3 identical, frame 4 distinct: the fix drops the redundant middle frame.
    res = reduce(one_hot_frames([0, 0, 0, 0, 1]), max_frames=1, threshold=0.5, fix_middle_frame=True)
    assert res.kept == [4]
    # All identical: the fix still keeps one frame (the argmin, here the first).
    res = reduce(one_hot_frames([0, 0, 0]), max_frames=1, threshold=0.5, fix_middle_frame=True)
    assert res.kept == [0]
