"""Stage 2: budgets, resolution choice and text-guided selection."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES

from longvu.model.compress.selection import Budget, compute_budget, evenly_spaced, select_high_res, use_mixed_resolution


@pytest.mark.parametrize("case", ["a_video3_fits", "b_synth_dino", "c_video1_mixed", "d_video1_stc_force"])
def test_budget_matches_golden(case):
    g = json.loads((FIXTURES / "golden" / case / "trace.json").read_text())
    b = g["budget"]
    res = compute_budget(
        g["prompt"]["input_ids"], max_length=b["tokenizer_model_max_length"], inference_max_length=16,
        image_token_len=144, lowres_token=8, highres=True, pad_id=151643,
    )  # fmt: skip
    assert res == Budget(
        b["text_len_for_budget"], b["max_frames_dino"], b["max_visual_len_for_resolution_choice"],
        b["max_num_frames_high"], b["max_num_frames_low"], b["max_visual_len"],
    )  # fmt: skip


def test_budget_by_hand():
    ids = [1, 2, -200, 3, 4]  # 5 ids, placeholder counted by the frame budgets only
    b = compute_budget(ids, max_length=100, inference_max_length=16, image_token_len=16, lowres_token=2,
                       highres=True, pad_id=999)  # fmt: skip
    assert b.text_len == 5
    assert b.mvl_resolution == 100 - 5 - 16 == 79
    assert b.max_frames_dino == 79 // 4 == 19
    assert b.max_frames_high == 79 // 16 == 4
    assert b.max_frames_low == 19
    assert b.max_visual_len == 100 - 16 - 4 == 80
    # A pad id in the prompt cuts the text length at its first position.
    assert compute_budget([7, 999, -200, 999], max_length=100, inference_max_length=16, image_token_len=16,
                          lowres_token=2, highres=True, pad_id=999).text_len == 1  # fmt: skip
    # Without highres, the frame budget uses the full token count per frame.
    assert compute_budget(ids, max_length=100, inference_max_length=16, image_token_len=16, lowres_token=2,
                          highres=False, pad_id=999).max_frames_dino == 4  # fmt: skip


def test_mixed_resolution_window():
    b = Budget(0, 0, 0, max_frames_high=4, max_frames_low=10, max_visual_len=0)
    assert [use_mixed_resolution(n, b) for n in (3, 4, 10, 11)] == [False, True, True, False]


def test_select_high_res_by_hand():
    # 3 frames, 2 low tokens and 4 high tokens each, H = 2. Text embedding is e0.
    low = torch.tensor([[[1.0, 0], [1, 0]], [[3, 0], [3, 0]], [[2, 0], [2, 0]]])
    high = torch.full((3, 4, 2), 9.0)
    text = torch.tensor([[1.0, 0]])
    # budget: 6 low tokens + room for 2 upgrades of (4 - 2) tokens = 10
    res = select_high_res(low, high, text, max_visual_len=10)
    assert res.highres_num == 2 and res.high_frames == [1, 2]
    assert torch.allclose(res.frame_similarity, torch.tensor([1.0, 3.0, 2.0]))
    assert res.tokens.shape == (2 + 4 + 4, 2)
    assert torch.equal(res.tokens[:2], low[0])
    # No room (budget == visual length): nothing computed, low-res kept.
    res = select_high_res(low, high, text, max_visual_len=6)
    assert not res.mixed and res.high_frames == [] and res.tokens.shape == (6, 2)
    # Room for less than one upgrade.
    res = select_high_res(low, high, text, max_visual_len=7)
    assert not res.mixed and res.highres_num == 0
    # highres_num larger than the frame count is capped by it.
    res = select_high_res(low, high, text, max_visual_len=100)
    assert res.highres_num == 47 and res.high_frames == [0, 1, 2]


def test_unguided_selection_spreads_the_same_number_of_frames():
    # 5 frames; frame 3 is the one closest to the question, but the ablation baseline ignores it.
    low = torch.tensor([[[1.0, 0]], [[2, 0]], [[0, 0]], [[5, 0]], [[1, 0]]])
    high = torch.full((5, 3, 2), 9.0)
    text = torch.tensor([[1.0, 0]])
    guided = select_high_res(low, high, text, max_visual_len=5 + 2 * 2)
    spread = select_high_res(low, high, text, max_visual_len=5 + 2 * 2, guided=False)
    assert guided.high_frames == [1, 3] and spread.high_frames == [0, 4]
    assert spread.tokens.shape == guided.tokens.shape == (3 + 3 + 1 + 1 + 1, 2)
    assert evenly_spaced(5, 3) == [0, 2, 4] and evenly_spaced(7, 1) == [3] and evenly_spaced(4, 4) == [0, 1, 2, 3]
