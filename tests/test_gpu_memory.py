"""GPU memory checks (opt-in: ``pytest -m gpu``; CI has no GPU).

Real-width random checkpoints (``scripts/make_random_checkpoint.py``) run on CUDA;
``torch.cuda.max_memory_allocated`` is compared with ``longvu plan``'s prediction, and
``torch.cuda.set_per_process_memory_fraction`` emulates 24 GB and 16 GB cards.  The
full-depth 7B case writes a 23 GB checkpoint (disk and a few minutes) and is also ``slow``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from longvu import GenerationOptions, LongVU
from longvu.loading.load import LoadOptions
from longvu.loading.plan import GiB, Settings, fit, load_shapes, plan

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GREEDY = GenerationOptions(max_new_tokens=16, greedy=True)


def _checkpoint(tmp_path_factory, name: str, **kw) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_random_checkpoint import make_checkpoint

    out = tmp_path_factory.mktemp(name)
    make_checkpoint("qwen2-7b", out, **kw)
    return out


def _video(tmp_path_factory, minutes: float) -> Path:
    from benchmarks.long_video import make_video

    return make_video(tmp_path_factory.mktemp("video") / f"v{minutes:g}.mp4", minutes)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _checkpoint(tmp_path_factory, "qwen-2x2", llm_layers=2, vision_layers=2)


def _run(ckpt: Path, video: Path, st: Settings, fraction: float | None = None) -> int:
    torch.cuda.empty_cache()
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction)
    torch.cuda.reset_peak_memory_stats()
    opts = LoadOptions(quantize=st.quantize, vision_device=st.vision_device, vision_dtype=st.vision_dtype,
                       llm_gpu_memory=st.llm_gpu_memory)  # fmt: skip
    lv = LongVU.from_pretrained(ckpt, device="cuda", dtype=st.dtype, cache=False, options=opts)
    ans = lv.ask(video, "What happens?", generation=GREEDY)
    assert ans.token_ids
    peak = torch.cuda.max_memory_allocated()
    del lv
    torch.cuda.set_per_process_memory_fraction(1.0)
    return peak


@pytest.mark.parametrize("quantize", [None, "int8", "nf4"])
def test_plan_predicts_the_cuda_peak(small, tmp_path_factory, quantize):
    if quantize:
        pytest.importorskip("bitsandbytes")
    video = _video(tmp_path_factory, 2)
    st = Settings(device="cuda", dtype="bfloat16", quantize=quantize, minutes=2, max_new_tokens=16)
    predicted = plan(load_shapes(str(small)), st).peak_bytes["cuda"]
    measured = _run(small, video, st)
    assert abs(predicted / measured - 1) <= 0.2, (predicted, measured)


@pytest.mark.slow
@pytest.mark.parametrize("card_gb", [24, 16])
def test_full_7b_hour_video_fits_emulated_card(tmp_path_factory, card_gb):
    ckpt = _checkpoint(tmp_path_factory, "qwen-full")
    video = _video(tmp_path_factory, 60)
    total = torch.cuda.get_device_properties(0).total_memory
    if total < card_gb * GiB:
        pytest.skip(f"the GPU has less than {card_gb} GB")
    result = fit(load_shapes(str(ckpt)), Settings(device="cuda", dtype="bfloat16", minutes=60), card_gb * GiB)
    assert result["fits"]
    peak = _run(ckpt, video, result["plan"].settings, fraction=card_gb * GiB / total)
    assert peak <= card_gb * GiB
