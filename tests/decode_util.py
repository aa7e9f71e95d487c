"""A reference greedy decode over the LLM alone, shared by the pipeline and lmms-eval tests."""

from __future__ import annotations

import torch

from longvu import LongVU

# the tiny Qwen2 checkpoint's chat template around a text-only question
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
