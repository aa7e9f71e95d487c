"""Stage 3: spatial token compression (longvu.model.compress.spatial)."""

from __future__ import annotations

import torch

from longvu.model.compress.spatial import spatial_token_compression


def frames_from(rows: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_drop_tokens_similar_to_anchor():
    a, b = [1.0, 0.0], [0.0, 1.0]
    # 3 frames, 2 tokens. Frame 1: token 0 unchanged (cos 1), token 1 changed (cos 0).
    # Frame 2: token 0 changed, token 1 unchanged.
    f = frames_from([[a, a], [a, b], [b, a]])
    res = spatial_token_compression(f, max_visual_len=100, drop_threshold=0.8, window=8)
    assert res.tokens.tolist() == [a, a, b, b]  # anchor, then frame 1 token 1, frame 2 token 0
    assert res.keep_mask.tolist() == [1, 1, 0, 1, 1, 0]
    assert res.similarity.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert res.chunks == [{"first_frame": 0, "num_frames": 3, "tokens_in": 6, "tokens_kept": 4}]
    assert res.force_remove == 0 and res.reduced_len == res.after_force_remove == 4


def test_windows_restart_anchor_and_single_frame_window_kept():
    a, b = [1.0, 0.0], [0.0, 1.0]
    f = frames_from([[a], [a], [b], [b], [a]])  # window 2: [a,a] [b,b] [a]
    res = spatial_token_compression(f, max_visual_len=100, drop_threshold=0.8, window=2)
    assert res.tokens.tolist() == [a, b, a]
    assert [c["tokens_kept"] for c in res.chunks] == [1, 1, 1]


def test_force_remove_trims_every_window_and_can_empty_it():
    a, b = [1.0, 0.0], [0.0, 1.0]
    # window 2; window 0 keeps 4 tokens (all changed), window 1 (single frame) keeps 2.
    f = frames_from([[a, b], [b, a], [a, a]])
    res = spatial_token_compression(f, max_visual_len=3, drop_threshold=0.8, window=2)
    assert res.reduced_len == 6
    assert res.force_remove == 2  # ceil((6 - 3) / 2 windows)
    # window 0 loses its last 2 tokens, window 1 (2 tokens) is emptied
    assert res.after_force_remove == 2
    assert res.tokens.tolist() == [a, b]


def test_final_cut_to_budget():
    a, b = [1.0, 0.0], [0.0, 1.0]
    f = frames_from([[a, b, a]])  # one frame, nothing to drop, 3 tokens
    res = spatial_token_compression(f, max_visual_len=2, drop_threshold=0.8, window=8)
    assert res.force_remove == 1 and res.tokens.shape[0] == 2
