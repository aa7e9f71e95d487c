"""The Python API end to end on the tiny checkpoints, covering branches the golden cases do not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import FIXTURES, LLAMA, QWEN, scene_frames, write_video
from decode_util import TEXT_PROMPT, greedy_decode

from longvu import GenerationOptions, LongVU, Sampling
from longvu.config import check_set_options
from longvu.errors import ConfigError, ContextOverflowError
from longvu.model.compose import compose

GREEDY = GenerationOptions(max_new_tokens=4, greedy=True)
VIDEO1 = FIXTURES / "videos" / "video1.mp4"


@pytest.fixture()
def qwen(qwen_model):
    before = dataclasses.replace(qwen_model.config)
    yield qwen_model
    assert qwen_model.config == before  # views (LongVU.with_overrides) leave the shared model as it was


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
    lv = qwen.with_overrides({"tokenizer_model_max_length": 1500})
    t = lv.ask(square_video, "Describe this video in detail.", generation=GREEDY).trace.data
    assert t["tokens_per_frame"]["low"] == 72 and t["tokens_per_frame"]["high"] == 156
    assert t["selection"]["input_mix_res"] and not t["selection"]["mix_token"]
    assert t["stc"]["applied"]
    assert t["counts"]["visual_tokens_after_selection"] == 21 * 72
    assert t["counts"]["visual_tokens_final"] <= t["budget"]["max_visual_len"]
    check_counts(t)


def test_frame_pos_changes_embeddings_only(qwen):
    base = qwen.ask(VIDEO1, "What is shown?", generation=GREEDY, arrays=True)
    fp = qwen.with_overrides({"frame_pos": True}).ask(VIDEO1, "What is shown?", generation=GREEDY, arrays=True)
    assert fp.trace.data["counts"] == base.trace.data["counts"]
    a, b = base.arrays["inputs_embeds"], fp.arrays["inputs_embeds"]
    pos = base.trace.data["prompt"]["image_token_pos"]
    assert np.allclose(a[:pos], b[:pos])  # text before the video is untouched
    assert not np.allclose(a[pos + 84 : pos + 168], b[pos + 84 : pos + 168])  # frame 1 shifted


def test_window_emptied_by_force_remove(qwen):
    # A tiny budget: force_remove exceeds the short last window's length.
    lv = qwen.with_overrides({"tokenizer_model_max_length": 200})
    t = lv.ask(VIDEO1, "Describe this video in detail.", generation=GREEDY).trace.data
    st = t["stc"]
    assert st["applied"] and st["force_remove"] > 0
    kept = [c["tokens_kept"] for c in st["chunks"]]
    assert min(kept) <= st["force_remove"]  # the short last window is emptied
    assert st["after_force_remove"] == sum(max(0, k - st["force_remove"]) for k in kept)
    assert t["counts"]["visual_tokens_final"] <= t["budget"]["max_visual_len"]
    check_counts(t)


def test_fixes_run_and_change_geometry(qwen):
    lv = qwen.with_overrides({"fix_unpad_orientation": True, "fix_frame_pos": True, "fix_dino_middle_frame": True})
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
    lv = llama_model.with_overrides({"tokenizer_model_max_length": 669})
    t = lv.ask(VIDEO1, "Describe this video in detail.", generation=GREEDY).trace.data
    assert t["stc"]["applied"] and t["budget"]["text_len_for_budget"] == len(t["prompt"]["input_ids"])
    check_counts(t)


def test_dino_single_window_and_cap(qwen, square_video):
    # 21 frames < window 32: the single-window path; with a cap of 3 on the windowed path.
    lv = qwen.with_overrides({"dino_window": 32, "tokenizer_model_max_length": 400, "dino_threshold": 1.0})
    t = lv.ask(square_video, "What?", generation=GREEDY).trace.data
    assert t["dino"]["path"] == "single_window" and t["dino"]["num_kept"] == 21
    lv = qwen.with_overrides(
        {"dino_window": 4, "max_frames_cap": 3, "tokenizer_model_max_length": 400, "dino_threshold": 1.0}
    )
    t = lv.ask(square_video, "What?", generation=GREEDY).trace.data
    assert t["dino"]["path"] == "windows" and t["dino"]["cap400_applied"]
    assert t["dino"]["num_kept_before_cap"] == 21 and t["dino"]["kept_indices"] == [0, 7, 14]


# ---------------------------------------------------------------- text-only questions
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
    lv = qwen.with_overrides({"tokenizer_model_max_length": 1000})
    ids, dropped = lv.prompt_ids(conv)
    assert dropped == 0 and len(ids) == 695  # no video to protect: the history may take the whole room
    assert lv.prompt_ids(lv.conversation(turns=turns))[1] == 2  # about a video, it would crowd out the video
    lv = qwen.with_overrides({"tokenizer_model_max_length": 200})  # 184 tokens for text beside the answer's 16
    ids, dropped = lv.prompt_ids(conv)
    assert dropped == 2 and ids == lv.prompt_ids(conv.newest())[0] and len(ids) < 184
    ans = lv.generate(None, conv, generation=GREEDY)
    assert ans.dropped == 2 and ans.embeds.shape[1] == len(ids)
    with pytest.raises(ContextOverflowError, match="of which 16 are reserved for the answer, which leaves 184"):
        lv.ask(None, "why " * 200)


# ---------------------------------------------------------------- views (LongVU.with_overrides)
VIEW_SETTINGS = [
    {"fix_unpad_orientation": True},  # the sampler's key masks (encoding) and the unpadded grid
    {"fix_dino_middle_frame": True, "dino_threshold": 0.9, "tokenizer_model_max_length": 600},  # stage 1, STC
    {"frame_pos": True, "fix_frame_pos": True, "drop_threshold": 0.5},  # the question's stages only
]
QUESTION_ONLY = VIEW_SETTINGS[2]  # leaves the encoded features as they are: the cache may share them
QUESTION = "What is shown?"


def load(overrides: dict | None = None, cache=False) -> LongVU:
    return LongVU.from_pretrained(QWEN, device="cpu", dtype="float32", overrides=overrides, cache=cache)


def outcome(lv: LongVU) -> tuple[dict, bool]:
    """What a view must share with a fresh load (visual tokens, grid, prompt, answer, the embeddings'
    log-probabilities of a given answer), and whether the features came from the cache."""
    feats = lv.features(VIDEO1)
    ans = lv.ask(feats, QUESTION, generation=GREEDY)
    conv = lv.conversation()
    conv.add_user(QUESTION)
    t, forced = ans.trace.data, lv.teacher_forced(feats, conv, "A red ball.")
    seen = {
        "visual_tokens": t["counts"]["visual_tokens_final"], "grid": t["tokens_per_frame"]["high_grid"],
        "prompt_ids": t["prompt"]["input_ids"], "token_ids": ans.token_ids, "frames": t["frames"], "stc": t["stc"],
        "config": t["run"]["config"], "logprobs": forced.logprobs,
    }  # fmt: skip
    return seen, feats.from_cache


@pytest.fixture(scope="module")
def plain() -> LongVU:
    return load()


@pytest.mark.parametrize("overrides", VIEW_SETTINGS, ids=["fix_unpad", "stage1_stc", "question_only"])
def test_view_answers_as_a_fresh_load(plain, overrides):
    view = plain.with_overrides(overrides)
    got, _ = outcome(view)
    assert got == outcome(load(overrides))[0]
    base, _ = outcome(plain)
    assert {k: v for k, v in got.items() if k != "config"} != {k: v for k, v in base.items() if k != "config"}
    assert view.model.llm is plain.model.llm and view.model.connector is plain.model.connector  # weights shared
    assert view.model.siglip_tower is plain.model.siglip_tower and view.model.dinov2_tower is plain.model.dinov2_tower
    assert plain.config.with_overrides(overrides) == view.config != plain.config


def test_fixed_orientation_in_a_view(plain):
    got, _ = outcome(plain.with_overrides({"fix_unpad_orientation": True}))
    assert got["grid"] == [6, 12] and got["config"]["fix_unpad_orientation"]  # landscape: padding rows cropped
    assert got["visual_tokens"] == 21 * 6 * 13


@pytest.mark.parametrize("overrides", VIEW_SETTINGS, ids=["fix_unpad", "stage1_stc", "question_only"])
def test_views_and_loads_never_read_each_others_features(tmp_path, overrides):
    base = load()
    expected, other = outcome(base)[0], outcome(load(overrides))[0]  # no cache
    shared = overrides is QUESTION_ONLY  # the same features: reading them is right
    undo = {k: getattr(base.config, k) for k in overrides}

    # a view writes features: a fresh load with other settings must not read them, one with the same may
    folder = tmp_path / "view_first"
    assert outcome(load(cache=folder).with_overrides(overrides)) == (other, False)
    assert outcome(load(cache=folder)) == (expected, shared)
    assert outcome(load(overrides, cache=folder)) == (other, True)

    # the reverse: a fresh load writes features, a view with other settings must not read them
    folder = tmp_path / "load_first"
    loaded = load(overrides, cache=folder)
    assert outcome(loaded) == (other, False)
    assert outcome(loaded.with_overrides(undo)) == (expected, shared)
    assert outcome(load(cache=folder).with_overrides(overrides)) == (other, True)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"vision_hidden_size": 7}, "with_overrides vision_hidden_size: the connector's width, fixed by its weights"),
        ({"image_token_len": 64}, "with_overrides image_token_len: the connector's 12x12 query grid"),
        ({"llm_config": {}}, "with_overrides llm_config: the decoder's own config"),
        ({"dino_treshold": 0.5}, "unknown config key 'dino_treshold' (did you mean dino_threshold?)"),
        ({"dino_threshold": 5}, "with_overrides dino_threshold=5: must be in [0, 1.01]"),
        ({"frame_pos": "maybe"}, "frame_pos expects true/false, got 'maybe'"),
    ],
)
def test_with_overrides_refuses_what_set_refuses(qwen, overrides, message):
    with pytest.raises(ConfigError) as api:
        qwen.with_overrides(overrides)
    assert message in str(api.value) and "\n" not in str(api.value)
    ((key, value),) = overrides.items()
    with pytest.raises(ConfigError) as cli:
        check_set_options([f"{key}={value}"])
    assert str(cli.value).replace("--set", "with_overrides") == str(api.value)
