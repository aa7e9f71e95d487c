"""scripts/make_random_checkpoint.py: real shapes (checked on the meta device), the padded tokenizer, the shard writer."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import LLAMA, QWEN

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from make_random_checkpoint import connector_specs, llm_specs, pad_tokenizer, tower_specs, write_shards  # noqa: E402

from longvu.config import LongVUConfig  # noqa: E402
from longvu.loading.load import load_tokenizer  # noqa: E402
from longvu.loading.presets import TOWERS, preset  # noqa: E402


def _bytes(specs, size: int) -> int:
    return sum(math.prod(s) for _, s in specs) * size


@pytest.mark.parametrize(
    "like,decoder_bytes",
    # the bf16 bytes of Qwen2-7B-Instruct's and Llama-3.2-3B-Instruct's safetensors (index total_size)
    [("qwen2-7b", 15_231_233_024), ("llama3.2-3b", 6_425_499_648)],
)
def test_full_depth_has_the_real_size(like, decoder_bytes):
    cfg = LongVUConfig.from_dict(preset(like)["config"])
    specs = llm_specs(cfg)
    assert _bytes(specs, 2) == decoder_bytes
    names = {n for n, _ in specs}
    assert ("lm_head.weight" in names) == (like == "qwen2-7b")  # Llama ties its head: not saved
    conn = connector_specs(cfg, [1152, 1536])
    assert all(n.startswith("model.") for n, _ in conn)
    assert ("model.mm_projector.0.weight", (cfg.hidden_size, 1024)) in conn


def test_towers_have_the_real_widths():
    dino = dict(tower_specs("dinov2", TOWERS["dinov2"]))
    assert dino["embeddings.position_embeddings"] == (1, 1370, 1536)  # 518 px / 14 = 37x37 + CLS
    assert dino["encoder.layer.39.mlp.gate_proj.weight"] == (4096, 1536)
    sig = dict(tower_specs("siglip", TOWERS["siglip"]))
    assert sig["vision_model.embeddings.position_embedding.weight"] == (729, 1152)  # 384 / 14 = 27x27
    assert sig["vision_model.encoder.layers.26.mlp.fc1.weight"] == (4304, 1152)


@pytest.mark.parametrize(
    "like,src,size,specials",
    [
        ("qwen2-7b", QWEN, 151646, {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}),
        ("llama3.2-3b", LLAMA, 128256, {"<|begin_of_text|>": 128000, "<|eot_id|>": 128009}),
    ],
)
def test_padded_tokenizer(tmp_path, like, src, size, specials):
    pad_tokenizer(src, tmp_path, like, size)
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    tok = load_tokenizer(tmp_path)
    small = load_tokenizer(src)
    assert len(tok) == size
    for text, i in specials.items():
        assert tok.convert_tokens_to_ids(text) == i
    # ordinary text tokenizes exactly as with the tiny tokenizer
    text = "Describe the video, please: what happens?"
    assert tok(text, add_special_tokens=False).input_ids == small(text, add_special_tokens=False).input_ids


def test_shard_writer_round_trips(tmp_path):
    from safetensors import safe_open

    specs = [("a.weight", (8, 4)), ("a.bias", (8,)), ("norm.weight", (4,)), ("b.weight", (16, 4))]
    total = write_shards(tmp_path, specs, torch.bfloat16, max_shard=100, seed=0, index=True)
    assert total == (32 + 8 + 4 + 64) * 2
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == total
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == 2 and files[0] == "model-00001-of-00002.safetensors"
    seen = {}
    for f in files:
        with safe_open(str(tmp_path / f), "pt") as fh:
            seen.update({k: fh.get_tensor(k) for k in fh.keys()})
    assert seen["a.bias"].eq(0).all() and seen["norm.weight"].eq(1).all()
    assert seen["b.weight"].float().std() == pytest.approx(0.5, rel=0.35)  # N(0, 1/fan_in), fan_in 4
