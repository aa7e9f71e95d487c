"""Prompts and tokenisation around the video placeholder."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, LLAMA, QWEN

from longvu.loading.load import load_tokenizer
from longvu.model.prompt import Conversation, tokenize_with_image


@pytest.mark.parametrize(
    "case,ckpt,template", [("c_video1_mixed", QWEN, "qwen"), ("i_llama_video1_mixed", LLAMA, "llama3")]
)
def test_prompt_ids_match_golden(case, ckpt, template):
    golden = json.loads((FIXTURES / "golden" / case / "case.json").read_text())
    tok = load_tokenizer(ckpt)
    conv = Conversation(template)
    conv.add_user(golden["case"]["question"])
    text = conv.render(tok)
    assert text == golden["prompt"]
    assert tokenize_with_image(text, tok, drop_first=template == "llama3") == golden["input_ids"]


def test_multi_turn_qwen_prompt():
    conv = Conversation("qwen")
    conv.add_user("Q1")
    conv.add_assistant("A1")
    conv.add_user("Q2")
    assert conv.render() == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    )
