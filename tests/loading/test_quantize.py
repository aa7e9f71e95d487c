"""`--quantize int8` on CPU (torchao), per-component placement, and the errors for what cannot run."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, QWEN
from test_cli_errors import ask, assert_one_line_error

from longvu import GenerationOptions, LongVU
from longvu.loading.load import LoadOptions, load_model
from longvu.loading.plan import Settings, llm_weight_bytes, load_shapes
from longvu.loading.quantize import weight_bytes

pytest.importorskip("torchao")

VIDEO = FIXTURES / "videos" / "video3.mp4"
GREEDY = GenerationOptions(max_new_tokens=6, greedy=True)


@pytest.fixture(scope="module")
def features():
    lv = LongVU.from_pretrained(QWEN, device="cpu", dtype="float32", cache=False)
    feats = lv.features(VIDEO)
    return feats, lv.ask(feats, "What happens?", generation=GREEDY, arrays=True)


def test_int8_loads_answers_and_shrinks_the_weights(features):
    feats, ref = features
    fp32 = load_model(QWEN, device="cpu", dtype="float32")
    lv = LongVU.from_pretrained(QWEN, device="cpu", dtype="float32", cache=False, quantize="int8")
    llm = lv.model.llm
    kinds = {type(m.weight).__name__ for n, m in llm.named_modules() if isinstance(m, torch.nn.Linear)}
    assert kinds == {"Int8Tensor"}  # every linear layer, the head included
    measured, full = weight_bytes(llm), weight_bytes(fp32.llm)
    predicted = sum(llm_weight_bytes(load_shapes(str(QWEN)), Settings(device="cpu", dtype="float32",
                                                                        quantize="int8")).values())  # fmt: skip
    assert measured == predicted
    linear_fp32 = sum(m.weight.numel() * 4 for m in fp32.llm.modules() if isinstance(m, torch.nn.Linear))
    assert full - measured >= 0.7 * linear_fp32  # int8 + a float32 scale per row: ~3/4 of those bytes saved
    ans = lv.ask(feats, "What happens?", generation=GREEDY, arrays=True)
    assert len(ans.token_ids) > 0
    assert ans.arrays["logits_step0"].shape == ref.arrays["logits_step0"].shape == (1024,)
    cos = torch.nn.functional.cosine_similarity(
        torch.from_numpy(ans.arrays["logits_step0"]).double(), torch.from_numpy(ref.arrays["logits_step0"]).double(), 0
    )
    assert cos > 0.99


def test_vision_dtype_and_device_are_per_component(features):
    feats, ref = features
    lv = LongVU.from_pretrained(QWEN, device="cpu", dtype="float32", cache=False,
                                options=LoadOptions(vision_dtype="bfloat16", vision_device="cpu"))  # fmt: skip
    assert next(lv.model.siglip.model.parameters()).dtype == torch.bfloat16
    assert next(lv.model.dinov2.model.parameters()).dtype == torch.bfloat16
    assert next(lv.model.llm.parameters()).dtype == torch.float32
    ans = lv.ask(VIDEO, "What happens?", generation=GREEDY)
    assert ans.trace.data["counts"]["sampled_frames"] == len(feats)


def test_cli_int8_answers(capsys):
    rc, out, err = ask(capsys, VIDEO, "--quantize", "int8", "--no-cache", "--greedy")
    assert rc == 0, err
    assert out.strip()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--quantize", "nf4"], "--quantize nf4 needs a CUDA GPU"),
        (["--quantize", "int4"], "--quantize int4 needs a CUDA GPU"),
        (["--llm-gpu-memory", "4GB"], "needs --device cuda"),
        (["--llm-gpu-memory", "some"], "cannot read the size"),
    ],
)
def test_cli_bad_combinations(capsys, extra, needle):
    rc, _, err = ask(capsys, VIDEO, *extra)
    assert_one_line_error(rc, err, needle)
