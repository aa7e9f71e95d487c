"""The Python API end to end on the tiny checkpoints, covering branches the golden cases do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, LLAMA, scene_frames, write_video

from longvu import GenerationOptions, LongVU, Sampling
from longvu.compose import compose
from longvu.config import LongVUConfig
from longvu.errors import ContextOverflowError

GREEDY = GenerationOptions(max_new_tokens=4, greedy=True)
VIDEO1 = FIXTURES / "videos" / "video1.mp4"


def with_overrides(lv: LongVU, **kw) -> LongVU:
    """The same loaded weights with a different config (the connector reads its config)."""
    cfg: LongVUConfig = lv.model.cfg.with_overrides(kw)
    import dataclasses

    model = dataclasses.replace(lv.model, cfg=cfg)
    model.connector.cfg = cfg
    return LongVU(model)


@pytest.fixture()
def qwen(qwen_model):
    yield qwen_model
    qwen_model.model.connector.cfg = qwen_model.model.cfg  # undo with_overrides


@pytest.fixture(scope="module")
def square_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("sq") / "square.mp4"
    return write_video(path, scene_frames(210, h=96, w=96, scene_len=30), fps=10)


def check_counts(trace: dict) -> None:
    c = trace["counts"]
    assert c["visual_tokens_final"] <= trace["budget"]["max_visual_len"] or not trace["stc"]["applied"]
    assert c["sequence_length"] == trace["prompt"]["num_text_tokens"] + c["visual_tokens_final"]
    assert trace["inputs_embeds"]["shape"] == [1, c["sequence_length"], 64]


def test_ask_returns_answer_and_trace(qwen):
    ans = qwen.ask(VIDEO1, "What is shown?", generation=GREEDY)
    assert isinstance(ans.text, str) and len(ans.token_ids) == 4
    t = ans.trace.data
    assert t["video"]["timestamps"][:3] == [0.0, 1.0, 2.0]
    assert t["dino"]["kept_timestamps"] == [t["video"]["timestamps"][i] for i in t["dino"]["kept_indices"]]
    check_counts(t)


def test_stream_yields_the_answer_text(qwen):
    stream = qwen.ask_stream(VIDEO1, "What is shown?", generation=GenerationOptions(max_new_tokens=8, greedy=True))
    pieces = list(stream)
    assert "".join(pieces).strip() == stream.answer.text
    assert len(stream.answer.token_ids) == 8


def test_stc_on_low_res_tokens(qwen, square_video):
    # 21 square frames: low-res 8x9 = 72 tokens each (1512) exceed the budget, yet the
    # frame count is inside the mixed window, so STC runs on the low-res base.
    lv = with_overrides(qwen, tokenizer_model_max_length=1500)
    t = lv.ask(square_video, "Describe this video in detail.", generation=GREEDY).trace.data
    assert t["tokens_per_frame"]["low"] == 72 and t["tokens_per_frame"]["high"] == 156
    assert t["selection"]["input_mix_res"] and not t["selection"]["mix_token"]
    assert t["stc"]["applied"]
    assert t["counts"]["visual_tokens_after_selection"] == 21 * 72
    assert t["counts"]["visual_tokens_final"] <= t["budget"]["max_visual_len"]
    check_counts(t)


def test_frame_pos_changes_embeddings_only(qwen):
    base = qwen.ask(VIDEO1, "What is shown?", generation=GREEDY, arrays=True)
    fp = with_overrides(qwen, frame_pos=True).ask(VIDEO1, "What is shown?", generation=GREEDY, arrays=True)
    assert fp.trace.data["counts"] == base.trace.data["counts"]
    a, b = base.arrays["inputs_embeds"], fp.arrays["inputs_embeds"]
    pos = base.trace.data["prompt"]["image_token_pos"]
    assert np.allclose(a[:pos], b[:pos])  # text before the video is untouched
    assert not np.allclose(a[pos + 84 : pos + 168], b[pos + 84 : pos + 168])  # frame 1 shifted


def test_window_emptied_by_force_remove(qwen):
    # A tiny budget: force_remove exceeds the short last window's length.
    lv = with_overrides(qwen, tokenizer_model_max_length=200)
    t = lv.ask(VIDEO1, "Describe this video in detail.", generation=GREEDY).trace.data
    st = t["stc"]
    assert st["applied"] and st["force_remove"] > 0
    kept = [c["tokens_kept"] for c in st["chunks"]]
    assert min(kept) <= st["force_remove"]  # the short last window is emptied
    assert st["after_force_remove"] == sum(max(0, k - st["force_remove"]) for k in kept)
    assert t["counts"]["visual_tokens_final"] <= t["budget"]["max_visual_len"]
    check_counts(t)


def test_fixes_run_and_change_geometry(qwen):
    lv = with_overrides(qwen, fix_unpad_orientation=True, fix_frame_pos=True, fix_dino_middle_frame=True)
    t = lv.ask(VIDEO1, "What is shown?", generation=GREEDY).trace.data
    assert t["tokens_per_frame"]["high_grid"] == [6, 12]  # landscape: padding rows cropped, not columns
    check_counts(t)


def test_sampling_options_reach_the_model(qwen):
    t = qwen.ask(VIDEO1, "What?", sampling=Sampling(fps=0.5, start=2, end=12), generation=GREEDY).trace.data
    assert t["video"]["sampled_indices"] == [60, 120, 180, 240, 300]
    assert t["counts"]["sampled_frames"] == 5


@pytest.fixture(scope="module")
def llama_model():
    return LongVU.from_pretrained(LLAMA, device="cpu", dtype="float32")


def test_llama_with_stc(llama_model):
    lv = with_overrides(llama_model, tokenizer_model_max_length=669)
    t = lv.ask(VIDEO1, "Describe this video in detail.", generation=GREEDY).trace.data
    assert t["stc"]["applied"] and t["budget"]["text_len_for_budget"] == len(t["prompt"]["input_ids"])
    check_counts(t)


def test_dino_single_window_and_cap(qwen, square_video):
    # 21 frames < window 32: the single-window path; with a cap of 3 on the windowed path.
    lv = with_overrides(qwen, dino_window=32, tokenizer_model_max_length=400, dino_threshold=2.0)
    t = lv.ask(square_video, "What?", generation=GREEDY).trace.data
    assert t["dino"]["path"] == "single_window" and t["dino"]["num_kept"] == 21
    lv = with_overrides(qwen, dino_window=4, max_frames_cap=3, tokenizer_model_max_length=400, dino_threshold=2.0)
    t = lv.ask(square_video, "What?", generation=GREEDY).trace.data
    assert t["dino"]["path"] == "windows" and t["dino"]["cap400_applied"]
    assert t["dino"]["num_kept_before_cap"] == 21 and t["dino"]["kept_indices"] == [0, 7, 14]


# ---------------------------------------------------------------- text-only questions
TEXT_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is two plus two?"
               "<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip


@torch.inference_mode()
def greedy_decode(lv: LongVU, ids: list[int], n: int) -> list[int]:
    """A plain greedy loop on the LLM over token ids, the checkpoint's repetition penalty on the answer's tokens."""
    penalty, out = lv.model.generation_config.repetition_penalty, []
    for _ in range(n):
        logits = lv.model.llm(input_ids=torch.tensor([ids + out])).logits[0, -1]
        for t in set(out):
            logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
        out.append(int(logits.argmax()))
    return out


def test_text_only_question_is_the_llm_on_the_text(qwen):
    conv = qwen.conversation(video=False)
    conv.add_user("What is two plus two?")
    ids, dropped = qwen.prompt_ids(conv)
    assert ids == qwen.tokenizer(TEXT_PROMPT).input_ids and len(ids) == 48 and dropped == 0  # no placeholder
    with torch.inference_mode():
        comp = compose(qwen.model, None, ids)
    assert comp.decisions is None and comp.embeds.shape == (1, 48, 64)  # the text alone: no visual tokens
    torch.testing.assert_close(comp.embeds[0], qwen.model.embed(ids))
    gen = GenerationOptions(max_new_tokens=6, greedy=True)
    stream = qwen.generate(None, conv, generation=gen)
    pieces = list(stream)
    ans = stream.answer
    assert ans.token_ids == greedy_decode(qwen, ids, 6) and "".join(pieces).strip() == ans.text
    t = ans.trace.data
    assert t["video"] is None and t["prompt"]["input_ids"] == ids and t["generation"]["stopped_by"] == "max_new_tokens"
    assert t["counts"] == {"sampled_frames": 0, "frames_after_dino": 0, "visual_tokens_final": 0, "sequence_length": 48}
    assert ans.trace.summary() == "text only (no video): sequence 48 tokens"
    assert qwen.ask(None, "What is two plus two?", generation=gen).token_ids == ans.token_ids
    forced = qwen.teacher_forced(None, conv, " four")
    with torch.inference_mode():
        logp = torch.log_softmax(qwen.model.llm(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
    assert forced.decisions is None and forced.greedy_ids[0] == ans.token_ids[0]
    assert forced.logprobs[0] == pytest.approx(float(logp[forced.target_ids[0]]), abs=1e-4)


def test_text_only_and_video_conversations_do_not_mix(qwen):
    conv = qwen.conversation()  # about a video: its prompt holds the placeholder
    conv.add_user("What is shown?")
    with pytest.raises(ValueError, match="video=False"):
        qwen.generate(None, conv)
    with pytest.raises(ValueError, match="no video was given"):
        compose(qwen.model, None, qwen.prompt_ids(conv)[0])
    text = qwen.conversation(video=False)
    text.add_user("What is shown?")
    with pytest.raises(ValueError, match="features=None"):
        qwen.teacher_forced(qwen.features(VIDEO1), text, "x")


def test_text_only_context_policy(qwen):
    turns = [("user", "tell me a story " * 40), ("assistant", "once upon a time " * 40), ("user", "and then?")]
    conv = qwen.conversation(turns=turns, video=False)
    lv = with_overrides(qwen, tokenizer_model_max_length=1000)
    ids, dropped = lv.prompt_ids(conv)
    assert dropped == 0 and len(ids) == 695  # no video to protect: the history may take the whole room
    assert lv.prompt_ids(lv.conversation(turns=turns))[1] == 2  # about a video, it would crowd out the video
    lv = with_overrides(qwen, tokenizer_model_max_length=200)  # 184 tokens for text beside the answer's 16
    ids, dropped = lv.prompt_ids(conv)
    assert dropped == 2 and ids == lv.prompt_ids(conv.newest())[0] and len(ids) < 184
    ans = lv.generate(None, conv, generation=GREEDY)
    assert ans.dropped == 2 and ans.embeds.shape[1] == len(ids)
    with pytest.raises(ContextOverflowError, match="of which 16 are reserved for the answer, which leaves 184"):
        lv.ask(None, "why " * 200)
