"""GPU checks (opt-in: ``pytest -m gpu``; ``-m "gpu and not slow"`` leaves out the 60-minute run).

The golden cases on CUDA make the same decisions as on CPU in float32 (TF32 off) and keep
them in bfloat16 (STC within 2%), with the parity observer's host copies on the way; the
GPU-only paths (large ``encode_chunk``, features kept on the device, one GPU per eval
worker) run; a 60-minute video goes end to end in bf16 and reports its per-stage times.
``LONGVU_GPU_MODEL`` names a checkpoint for the long run (default: the tiny one).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import pytest
import torch
from conftest import FIXTURES, QWEN, case_video, load_cases, scene_frames, write_video

from longvu import GenerationOptions, LongVU

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CASES = load_cases()
GREEDY16 = GenerationOptions(max_new_tokens=16, greedy=True)
VIDEO1 = FIXTURES / "videos" / "video1.mp4"


def golden(case: dict) -> dict:
    return json.loads((FIXTURES / "golden" / case["name"] / "trace.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_decisions_on_cuda(case):
    lv = LongVU.from_pretrained(FIXTURES / case["checkpoint"], device="cuda", dtype="float32",
                                overrides=case["config_overrides"], cache=False)  # fmt: skip
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    ans = lv.ask(case_video(case), case["question"], generation=GREEDY16, arrays=True)
    gold, t = golden(case), ans.trace.data
    assert t["dino"]["kept_indices"] == gold["dino"]["kept_indices"]
    assert t["selection"]["high_res_frames"] == gold["selection"]["high_res_frames"]
    assert t["counts"] == gold["counts"]
    assert t["logits_step0"]["argmax"] == gold["logits_step0"]["argmax"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_decisions_on_cuda_in_half_precision(case, dtype):
    lv = LongVU.from_pretrained(FIXTURES / case["checkpoint"], device="cuda", dtype=dtype,
                                overrides=case["config_overrides"], cache=False)  # fmt: skip
    t = lv.ask(case_video(case), case["question"], generation=GREEDY16, arrays=True).trace.data
    gold = golden(case)
    assert t["dino"]["kept_indices"] == gold["dino"]["kept_indices"]
    assert t["selection"]["high_res_frames"] == gold["selection"]["high_res_frames"]
    for key in ("visual_tokens_after_stc_drop", "visual_tokens_final"):
        assert abs(t["counts"][key] - gold["counts"][key]) <= 0.02 * gold["counts"][key]


def test_large_encode_chunk_splits_the_sampler_batch(tmp_path):
    video = write_video(tmp_path / "v.mp4", scene_frames(1040, scene_len=40), fps=2)  # 520 frames at 1 fps
    every = {"tokenizer_model_max_length": 40_000}  # keep_all_below 624: every frame is encoded
    base = LongVU.from_pretrained(QWEN, device="cuda", dtype="bfloat16", cache=False, overrides=every)
    big = LongVU.from_pretrained(QWEN, device="cuda", dtype="bfloat16", cache=False,
                                 overrides={**every, "encode_chunk": 512})  # fmt: skip
    a, b = base.features(video), big.features(video)  # 512 frames x 144 cells > 65,535 attention batches
    assert len(b.stored) == 520 and a.stored == b.stored
    assert torch.allclose(a.sampled.float(), b.sampled.float(), atol=0.05, rtol=0.05)


def test_chat_keeps_cached_features_on_the_device(tmp_path):
    lv = LongVU.from_pretrained(QWEN, device="cuda", dtype="bfloat16", cache=tmp_path)
    lv.features(VIDEO1)
    feats = lv.features(VIDEO1)  # from the cache: on the host
    assert feats.from_cache and feats.sampled.device.type == "cpu"
    session = lv.chat(feats)
    session.ask("What is shown?", GenerationOptions(max_new_tokens=2, greedy=True))
    assert feats.sampled.device.type == "cuda"
    kept = feats.sampled
    session.ask("And then?", GenerationOptions(max_new_tokens=2, greedy=True))
    assert feats.sampled is kept  # not uploaded again


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_eval_workers_load_onto_their_own_gpus():
    import multiprocessing as mp

    from longvu.eval import runner

    ranks = mp.get_context("spawn").Value("i", 0)
    kw = {"model": str(QWEN), "device": "cuda", "dtype": "bfloat16", "overrides": {}, "max_new_tokens": 5}
    devices = []
    for _ in range(2):
        runner._init_worker(kw, ranks, 2)
        devices.append(str(runner._WORKER.lv.device))
    assert devices == ["cuda:0", "cuda:1"]


@pytest.mark.slow
def test_sixty_minute_video_end_to_end_in_bf16():
    sys.path.insert(0, str(FIXTURES.parent.parent.parent))
    from benchmarks.device_throughput import child_e2e

    model = os.environ.get("LONGVU_GPU_MODEL", str(QWEN))
    videos = os.path.join(tempfile.gettempdir(), "longvu-bench-videos")
    res = child_e2e(60, model, "cuda", "bfloat16", videos)
    print(json.dumps(res, indent=1))  # the per-stage times (pytest -s shows them)
    assert res["counts"]["sampled_frames"] == 3600
    for stage in ("encode_decode_wait", "encode_dino", "encode_siglip", "encode_connector", "compose", "generate"):
        assert res["timings"][stage] >= 0
