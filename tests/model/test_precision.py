"""Half precision: the stage-2 and stage-3 decisions follow float32, and a bf16 run on CPU keeps
the golden decisions (kept and high-res frames exact, STC token counts within 2%)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, case_video, load_cases

from longvu import GenerationOptions, LongVU
from longvu.model.compress import select_high_res, spatial_token_compression

ONE_TOKEN = GenerationOptions(max_new_tokens=1, greedy=True)
CASES = load_cases()


def test_text_guided_selection_follows_float32_where_bf16_ties():
    # Frame scores 1.0 and 1 + 2**-9: equal once rounded to bf16 (spacing 2**-7 near 1), not in float32.
    close = [1.0 + 2**-7, 1.0, 1.0, 1.0]  # mean 1 + 2**-9; every value exact in bf16
    text = torch.ones(1, 1, dtype=torch.bfloat16)
    for winner in (0, 1):  # either tie order of a bf16 top-k would get one of the two wrong
        tokens = [[1.0] * 4, [1.0] * 4]
        tokens[winner] = close
        low = torch.tensor(tokens, dtype=torch.bfloat16).unsqueeze(-1)  # [2, 4, 1]
        high = torch.zeros(2, 8, 1, dtype=torch.bfloat16)
        bf16_scores = torch.matmul(low.reshape(8, 1), text.T).mean(-1).reshape(2, -1).mean(-1)
        assert bf16_scores[0] == bf16_scores[1]  # the premise: a tie in bf16
        res = select_high_res(low, high, text, max_visual_len=12)  # room for one frame at 8 tokens
        assert res.high_frames == [winner]
        assert res.frame_similarity.dtype == torch.float32
        assert res.tokens.dtype == torch.bfloat16  # the tokens keep the model's dtype


def test_stc_threshold_follows_float32():
    # cos((1, 0), (0.8125, 0.61328125)) = 0.79815 in float32 (kept at 0.8), 0.80078 rounded to bf16 (dropped).
    frames = torch.tensor([[[1.0, 0.0]], [[0.8125, 0.61328125]]], dtype=torch.bfloat16)  # [2, 1, 2]
    bf16_cos = torch.nn.functional.cosine_similarity(frames[0], frames[1], dim=-1)
    assert bf16_cos.item() >= 0.8  # the premise
    res = spatial_token_compression(frames, max_visual_len=10, drop_threshold=0.8, window=8)
    assert res.reduced_len == 2 and res.keep_mask.tolist() == [1, 1]
    assert res.similarity.dtype == torch.float32 and res.tokens.dtype == torch.bfloat16


def test_float32_stage2_and_3_unchanged_in_float32():
    g = torch.Generator().manual_seed(0)
    low, high, text = torch.randn(6, 5, 16, generator=g), torch.randn(6, 9, 16, generator=g), torch.randn(3, 16)
    res = select_high_res(low, high, text, max_visual_len=6 * 5 + 8)
    ref = torch.matmul(low.reshape(30, 16), text.T).mean(-1).reshape(6, -1).mean(-1)
    assert torch.equal(res.frame_similarity, ref)
    stc = spatial_token_compression(high, max_visual_len=1000, drop_threshold=0.1, window=3)
    ref = torch.nn.functional.cosine_similarity(high[0].unsqueeze(0).repeat(2, 1, 1), high[1:3], dim=-1)
    assert torch.equal(stc.similarity[: ref.numel()], ref.flatten())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bfloat16_golden_case_on_cpu(case):
    lv = LongVU.from_pretrained(FIXTURES / case["checkpoint"], device="cpu", dtype="bfloat16",
                                overrides=case["config_overrides"], cache=False)  # fmt: skip
    t = lv.ask(case_video(case), case["question"], generation=ONE_TOKEN).trace.data
    gold = json.loads((FIXTURES / "golden" / case["name"] / "trace.json").read_text())
    assert t["dino"]["kept_indices"] == gold["dino"]["kept_indices"]
    assert t["selection"]["high_res_frames"] == gold["selection"]["high_res_frames"]
    assert t["stc"]["applied"] == gold["stc"]["applied"]
    for key in ("visual_tokens_after_stc_drop", "visual_tokens_final"):
        assert abs(t["counts"][key] - gold["counts"][key]) <= 0.02 * gold["counts"][key]
