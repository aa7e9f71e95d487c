"""GPU checks (opt-in: ``pytest -m gpu``): the golden cases on CUDA make the same decisions as on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, case_video, load_cases

from longvu import GenerationOptions, LongVU

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("case", load_cases(), ids=[c["name"] for c in load_cases()])
def test_golden_decisions_on_cuda(case):
    lv = LongVU.from_pretrained(FIXTURES / case["checkpoint"], device="cuda", dtype="float32",
                                overrides=case["config_overrides"], cache=False)  # fmt: skip
    ans = lv.ask(case_video(case), case["question"], generation=GenerationOptions(max_new_tokens=16, greedy=True))
    gold = json.loads((FIXTURES / "golden" / case["name"] / "trace.json").read_text())
    t = ans.trace.data
    assert t["dino"]["kept_indices"] == gold["dino"]["kept_indices"]
    assert t["selection"]["high_res_frames"] == gold["selection"]["high_res_frames"]
    assert t["counts"] == gold["counts"]
    assert t["logits_step0"]["argmax"] == gold["logits_step0"]["argmax"]
