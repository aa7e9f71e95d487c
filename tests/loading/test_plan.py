"""The memory planner's arithmetic, checked against models built here, and `longvu plan` on the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import LLAMA, QWEN

from longvu.cli.main import main
from longvu.loading.plan import (
    GiB,
    Settings,
    connector_params,
    dinov2_params,
    feature_cache_bytes,
    fit,
    kv_cache_bytes,
    llm_param_counts,
    llm_weight_bytes,
    load_shapes,
    parse_size,
    plan,
    siglip_params,
)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_llm(folder):
    from longvu.config import LongVUConfig
    from longvu.loading.load import build_llm_config

    cfg = LongVUConfig.from_checkpoint(folder)
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cls = Qwen2ForCausalLM if cfg.model_type == "cambrian_qwen" else LlamaForCausalLM
    with torch.device("meta"):
        return cls(build_llm_config(cfg))


@pytest.mark.parametrize("folder", [QWEN, LLAMA], ids=["qwen", "llama"])
def test_llm_param_count_matches_the_model(folder):
    model = _meta_llm(folder)
    counts = llm_param_counts(load_shapes(str(folder)))
    assert sum(counts.values()) == _numel(model)  # a tied head counted once
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers" in n)
    assert counts["linear"] == linear


def test_released_models_parameter_counts():
    # The public parameter counts of Qwen2-7B (7.62B) and Llama-3.2-3B (3.21B), and the towers'.
    qwen, llama = load_shapes("qwen2-7b"), load_shapes("Vision-CAIR/LongVU_Llama3_2_3B")
    assert sum(llm_param_counts(qwen).values()) == 7_615_616_512
    assert sum(llm_param_counts(llama).values()) == 3_212_749_824
    assert siglip_params(qwen.siglip) == 428_225_600
    assert dinov2_params(qwen.dinov2) == 1_136_480_768


@pytest.mark.parametrize("swiglu", [True, False])
def test_tower_param_counts_match_transformers(swiglu):
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    sig = {"hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3, "num_attention_heads": 4,
           "image_size": 56, "patch_size": 14}  # fmt: skip
    dino = {"hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_ratio": 4, "image_size": 70,
            "patch_size": 14, "use_swiglu_ffn": swiglu}  # fmt: skip
    with torch.device("meta"):
        assert siglip_params(sig) == _numel(SiglipVisionModel(SiglipVisionConfig(**sig)))
        assert dinov2_params(dino) == _numel(Dinov2Model(Dinov2Config(**dino)))


@pytest.mark.parametrize("folder", [QWEN, LLAMA], ids=["qwen", "llama"])
def test_connector_param_count_matches_the_module(folder):
    from longvu.config import LongVUConfig
    from longvu.model.connector import SVAConnector

    shapes = load_shapes(str(folder))
    conn = SVAConnector(
        LongVUConfig.from_checkpoint(folder), [shapes.siglip["hidden_size"], shapes.dinov2["hidden_size"]]
    )
    assert connector_params(shapes) == _numel(conn)


def test_weight_bytes_match_a_loaded_model():
    from longvu.loading.load import load_model
    from longvu.loading.quantize import weight_bytes

    m = load_model(QWEN, device="cpu", dtype="float32")
    predicted = sum(llm_weight_bytes(load_shapes(str(QWEN)), Settings(device="cpu", dtype="float32")).values())
    assert weight_bytes(m.llm) == predicted


def test_kv_cache_bytes_match_a_forward_pass():
    from longvu.loading.load import load_model

    m = load_model(QWEN, device="cpu", dtype="float32")
    n = 37
    with torch.inference_mode():
        out = m.llm(inputs_embeds=torch.randn(1, n, m.cfg.hidden_size), use_cache=True)
    cache = out.past_key_values
    measured = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    shapes = dataclasses.replace(load_shapes(str(QWEN)), context=n)
    assert kv_cache_bytes(shapes, Settings(device="cpu", dtype="float32", max_new_tokens=0)) == measured


def test_feature_cache_bytes_match_an_encoded_video():
    from conftest import FIXTURES

    from longvu import LongVU

    lv = LongVU.from_pretrained(QWEN, device="cpu", dtype="float32", cache=False)
    feats = lv.features(FIXTURES / "videos" / "video3.mp4")
    shapes = load_shapes(str(QWEN))
    st = Settings(device="cpu", dtype="float32", minutes=len(feats) / 60)
    per_frame_extra = len(feats) * (4 + 8 + 8 + 8)
    assert feature_cache_bytes(shapes, st) - per_frame_extra == feats.sampled.nbytes


def test_stages_and_peaks_are_sums_of_their_parts():
    p = plan(load_shapes("qwen2-7b"), Settings(device="cuda", dtype="bfloat16", minutes=60))
    peak = p.peak_bytes
    assert peak["cuda"] == max(sum(s["cuda"].values()) for s in p.stages.values())
    assert p.stages["generate"]["cuda"]["KV cache (full context)"] == 2 * 28 * (8192 + 512) * 4 * 128 * 2
    # bf16 decoder weights are 2 bytes per parameter
    assert p.stages["generate"]["cuda"]["decoder weights"] == 2 * 7_615_616_512
    q = plan(load_shapes("qwen2-7b"), Settings(device="cuda", dtype="bfloat16", quantize="nf4", minutes=60))
    assert q.stages["generate"]["cuda"]["decoder weights"] < 0.4 * p.stages["generate"]["cuda"]["decoder weights"]


def test_feature_cache_does_not_grow_past_the_cap():
    s = load_shapes("qwen2-7b")
    hour = feature_cache_bytes(s, Settings(minutes=60))
    two_hours = feature_cache_bytes(s, Settings(minutes=120))
    assert two_hours - hour == 3600 * 28  # only the per-frame timestamps and similarities grow


def test_fit_7b_at_24_and_12_gb():
    s = load_shapes("Vision-CAIR/LongVU_Qwen2_7B")
    st = Settings(device="cuda", dtype="bfloat16", minutes=60)
    assert fit(s, st, 24 * GiB)["settings"] == "--device cuda --dtype bfloat16"
    r12 = fit(s, st, 12 * GiB)
    assert r12["fits"] and "--quantize nf4" in r12["settings"]
    assert not fit(s, st, 1 * GiB)["fits"]


@pytest.mark.parametrize(
    "text,value", [("24GB", 24 * GiB), ("24", 24 * GiB), ("512MB", 512 * 1024**2), ("1.5GiB", int(1.5 * GiB))]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_plan_cli_json(capsys):
    rc = main(["plan", "--device-memory", "24GB", "--minutes", "60", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(out["peak_bytes"]) == {"cuda", "cpu"}
    assert out["fit"]["fits"] and out["fit"]["settings"] == "--device cuda --dtype bfloat16"
    assert set(out["stages"]) == {"load", "encode", "compose", "generate"}
    assert out["feature_cache_bytes"] > 0


def test_plan_cli_text_names_the_quantization_for_12gb(capsys):
    rc = main(["plan", "--device-memory", "12GB", "--minutes", "60"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "use: --device cuda --dtype bfloat16 --quantize nf4" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--device-memory", "1GB"], "nothing fits in 1.0 GiB"),
        (["--device", "cpu", "--quantize", "nf4"], "needs a CUDA GPU"),
        (["--device-memory", "lots"], "cannot read the size"),
        (["--frame-size", "big"], "--frame-size expects WxH"),
        (["--model", "/no/such/folder"], "not a checkpoint folder"),
        (["--device", "cpu", "--llm-gpu-memory", "4GB"], "needs --device cuda"),
        (["--video", "/no/such.mp4"], "no such file"),
        (["--device", "mps", "--quantize", "int8"], "--quantize is not supported on mps"),
        (["--device", "cuda", "--vision-device", "mps"], "cuda and mps cannot be combined"),
    ],
)
def test_plan_cli_errors(capsys, argv, needle):
    rc = main(["plan", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("longvu plan: error: ") and needle in lines[0], err


def test_plan_cli_reads_the_video(capsys):
    from conftest import FIXTURES

    rc = main(["plan", "--model", str(QWEN), "--device", "cpu", "--video", str(FIXTURES / "videos" / "video3.mp4"),
               "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert 0 < out["settings"]["minutes"] < 5 and out["frames"] >= 1
    assert out["peak_bytes"]["cuda"] == 0 and out["peak_bytes"]["cpu"] > 0


def test_plan_device_auto_is_the_device_ask_would_pick(monkeypatch, capsys):
    from longvu.cli import plan as plan_cli

    monkeypatch.setattr(plan_cli, "_may_have_gpu", lambda: True)
    for cuda, expected in ((True, ("cuda", "bfloat16")), (False, ("cpu", "float32"))):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        assert main(["plan", "--model", "qwen2-7b", "--device", "auto", "--json"]) == 0
        st = json.loads(capsys.readouterr().out)["settings"]
        assert (st["device"], st["dtype"]) == expected


def test_plan_device_auto_without_a_gpu_imports_no_torch():
    import subprocess
    import sys

    from longvu.cli.plan import _may_have_gpu

    code = ("import json, sys\nfrom longvu.cli.main import main\n"
            "main(['plan', '--model', 'qwen2-7b', '--device', 'auto', '--json'])\n"
            "print('torch' in sys.modules)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    *out, torch_imported = res.stdout.strip().splitlines()
    device = json.loads("\n".join(out))["settings"]["device"]
    if not _may_have_gpu():  # this machine: decided from /proc and /dev alone
        assert device == "cpu" and torch_imported == "False", res.stderr
    else:
        from longvu.loading.load import pick_device

        assert device == pick_device("auto").type, res.stderr


def test_plan_mps_is_cuda_arithmetic_in_unified_memory(capsys):
    shapes = load_shapes("qwen2-7b")
    mps = plan(shapes, Settings(device="mps", dtype="float16", minutes=60))
    cuda = plan(shapes, Settings(device="cuda", dtype="float16", minutes=60))
    assert set(mps.peak_bytes) == {"mps", "cpu"}
    assert {k: v["mps"] for k, v in mps.stages.items()} == {k: v["cuda"] for k, v in cuda.stages.items()}
    assert fit(shapes, Settings(device="mps", dtype="float16", minutes=60), 24 * GiB)["fits"]  # no CUDA context
    assert not fit(shapes, Settings(device="mps", dtype="float16", minutes=60), 16 * GiB)["fits"]  # nothing to quantize
    assert main(["plan", "--device", "mps", "--minutes", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["dtype"] == "float16" and set(out["peak_bytes"]) == {"mps", "cpu"}
    assert out["unified_memory_peak_bytes"] >= out["peak_bytes"]["mps"] + 300 * 1024**2  # the process's RAM too
    assert main(["plan", "--device", "mps", "--minutes", "60"]) == 0
    text = capsys.readouterr().out
    assert "peak: mps " in text and "unified memory: the GPU's memory is the host's RAM" in text
