"""Write a LongVU checkpoint with random weights and every real width.

    python scripts/make_random_checkpoint.py --like qwen2-7b --llm-layers 2 --vision-layers 2 --out out/qwen-2x2
    python scripts/make_random_checkpoint.py --like llama3.2-3b --out out/llama-full      # full depth

The folder has the released checkpoints' layout and tensor names: ``config.json`` (every
LongVU field), ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``
(decoder and connector, bf16), ``generation_config.json``, a tokenizer, and
``vision_towers/{siglip,dinov2}`` (float32, as on the hub).  Widths, heads, KV heads,
vocabulary, patch and image sizes, the connector's dimensions and the context are the
real ones (``longvu.loading.presets``); only the depth (``--llm-layers``, ``--vision-layers``,
which also sets SigLIP's unused text tower) can be reduced.  At full depth the tensor
bytes equal the released model's.

The tokenizer is the tiny fixture's BPE with its vocabulary padded to the real size:
filler entries no merge can produce, and the special tokens moved to their real ids
(``<|im_end|>`` = 151645, ``<|eot_id|>`` = 128009), so prompts tokenize to few ids but
every id the real model can emit exists.

Weights are generated tensor by tensor (seeded, reproducible) and written one shard at
a time, so memory holds at most one shard (``--max-shard-gb``), never the whole model.
Matrices are N(0, 1/fan_in) (unit-scale activations, so quantization drift is measured
on logits of realistic spread), norm weights 1, biases 0.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "parity" / "checkpoints"
TINY = {"qwen2-7b": FIXTURES / "tiny-longvu-qwen2", "llama3.2-3b": FIXTURES / "tiny-longvu-llama3_2"}
TINY_BPE = 1021  # regular (non-special) tokens of the fixtures' tokenizers
FIRST_SPECIAL = {"qwen2-7b": 151643, "llama3.2-3b": 128000}  # the real tokenizers' first special id


# ------------------------------------------------------------------ tensor specs
def llm_specs(cfg) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every decoder tensor as saved (a tied lm_head is not saved)."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    from longvu.loading.load import build_llm_config

    llm_cfg = build_llm_config(cfg)
    cls = Qwen2ForCausalLM if cfg.model_type == "cambrian_qwen" else LlamaForCausalLM
    with torch.device("meta"):
        model = cls(llm_cfg)
    specs = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    if llm_cfg.tie_word_embeddings:
        specs = [s for s in specs if s[0] != "lm_head.weight"]
    return specs


def connector_specs(cfg, widths: list[int]) -> list[tuple[str, tuple[int, ...]]]:
    from longvu.model.connector import SVAConnector

    with torch.device("meta"):
        conn = SVAConnector(cfg, widths)
    return [(f"model.{k}", tuple(v.shape)) for k, v in conn.state_dict().items()]


def tower_specs(kind: str, raw: dict) -> list[tuple[str, tuple[int, ...]]]:
    if kind == "siglip":
        from transformers import SiglipConfig, SiglipModel

        cls, cfg = SiglipModel, SiglipConfig(**raw)
    else:
        from transformers import Dinov2Config, Dinov2Model

        cls, cfg = Dinov2Model, Dinov2Config(**raw)
    with torch.device("meta"):
        model = cls(cfg)
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Norm weights and layer scales 1, biases 0, matrices N(0, 1/fan_in), other vectors N(0, 0.02)."""
    leaf = name.rsplit(".", 1)[-1]
    low = name.lower()
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    if len(shape) == 1 and ("norm" in low or "lambda1" in low):
        return torch.ones(shape, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    std = 1.0 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 and "embed" not in leaf else 0.02
    if "embed_tokens" in name or "lm_head" in name:
        std = 1.0 / math.sqrt(shape[1])
    return (torch.randn(shape, generator=g) * std).to(dtype)


# ------------------------------------------------------------------- shard writer
def write_shards(
    folder: Path, specs: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, max_shard: int, seed: int,
    *, index: bool = False,
) -> int:  # fmt: skip
    """Write ``specs`` as ``model.safetensors``, or as numbered shards plus an index (always if
    ``index``, as the released decoders are); returns the tensor bytes.

    safetensors writes one dict per file, so each shard is built in memory and written
    before the next one is generated: memory holds one shard at most.
    """
    from safetensors.torch import save_file

    size = torch.tensor([], dtype=dtype).element_size()
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shape in specs:
        nbytes = math.prod(shape) * size
        if groups[-1] and used + nbytes > max_shard:
            groups.append([])
            used = 0
        groups[-1].append((name, shape))
        used += nbytes
    total = sum(math.prod(s) * size for _, s in specs)
    weight_map = {}
    for i, group in enumerate(groups):
        fname = (
            "model.safetensors"
            if len(groups) == 1 and not index
            else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        )
        shard = {}
        for name, shape in group:
            shard[name] = random_tensor(name, shape, dtype, seed + _stable_hash(name))
            weight_map[name] = fname
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        del shard
        print(f"  wrote {folder.name}/{fname}", file=sys.stderr, flush=True)
    if len(groups) > 1 or index:
        idx = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(idx, indent=2) + "\n")
    return total


def _stable_hash(name: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


# ----------------------------------------------------------------------- tokenizer
def pad_tokenizer(src: Path, dst: Path, like: str, target_len: int) -> None:
    """Copy the tiny tokenizer, padding its vocabulary to ``target_len`` with specials at their real ids."""
    shift = FIRST_SPECIAL[like] - TINY_BPE
    fillers = {f"<|longvu_filler_{i}|>": i for i in range(TINY_BPE, FIRST_SPECIAL[like])}
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["model"]["vocab"].update(fillers)
    for t in tok["added_tokens"]:
        t["id"] += shift
    tcfg = json.loads((src / "tokenizer_config.json").read_text())
    tcfg["added_tokens_decoder"] = {str(int(k) + shift): v for k, v in tcfg["added_tokens_decoder"].items()}
    # Llama-3 has 256 specials (the fixture 64): more reserved ones, numbered on.
    nxt = max(t["id"] for t in tok["added_tokens"]) + 1
    k = sum(t["content"].startswith("<|reserved_special_token_") for t in tok["added_tokens"])
    while nxt < target_len:
        entry = {"content": f"<|reserved_special_token_{k}|>", "lstrip": False, "normalized": False,
                 "rstrip": False, "single_word": False, "special": True}  # fmt: skip
        tok["added_tokens"].append({"id": nxt, **entry})
        tcfg["added_tokens_decoder"][str(nxt)] = entry
        nxt, k = nxt + 1, k + 1
    _shift_post_processor(tok.get("post_processor"), shift)
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False) + "\n")
    (dst / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")
    if (src / "vocab.json").is_file():
        vocab = json.loads((src / "vocab.json").read_text())
        vocab.update(fillers)
        (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    if (src / "added_tokens.json").is_file():
        added = {k: v + shift for k, v in json.loads((src / "added_tokens.json").read_text()).items()}
        (dst / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    for name in ("merges.txt", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def _shift_post_processor(node, shift: int) -> None:
    """Move special-token ids inside a TemplateProcessing (``special_tokens: {tok: {ids: [...]}}``)."""
    for child in _walk(node):
        for spec in (child.get("special_tokens") or {}).values():
            spec["ids"] = [i + shift if i >= TINY_BPE else i for i in spec.get("ids", [])]


def _walk(node) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# ---------------------------------------------------------------------------- main
def make_checkpoint(
    like: str, out: Path, *, llm_layers: int | None = None, vision_layers: int | None = None,
    max_shard_gb: float = 5.0, seed: int = 0,
) -> dict:  # fmt: skip
    """Write the checkpoint; returns what RANDOM_CHECKPOINT.json records."""
    from longvu.config import LongVUConfig
    from longvu.loading.checkpoint import quiet_transformers
    from longvu.loading.presets import PRESETS, TOWERS, preset

    quiet_transformers()

    p = preset(like)
    raw = p["config"]
    full_llm = raw["num_hidden_layers"]
    n_llm = full_llm if llm_layers is None else llm_layers
    if not 1 <= n_llm <= full_llm:
        raise SystemExit(f"--llm-layers must be in 1..{full_llm}")
    raw["num_hidden_layers"] = n_llm
    if "max_window_layers" in raw:
        raw["max_window_layers"] = n_llm
    out.mkdir(parents=True, exist_ok=True)
    cfg = LongVUConfig.from_dict(raw)
    max_shard = int(max_shard_gb * 1e9)
    towers = {}
    for kind, traw in TOWERS.items():
        traw = json.loads(json.dumps(traw))
        layer_cfgs = [traw["vision_config"], traw["text_config"]] if kind == "siglip" else [traw]
        for c in layer_cfgs:
            full = c["num_hidden_layers"]
            c["num_hidden_layers"] = full if vision_layers is None else min(vision_layers, full)
        tdir = out / "vision_towers" / kind
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "config.json").write_text(json.dumps(traw, indent=2) + "\n")
        shutil.copy(TINY[p["like"]] / "vision_towers" / kind / "preprocessor_config.json", tdir)
        towers[kind] = {"config": traw, "bytes": write_shards(tdir, tower_specs(kind, traw), torch.float32,
                                                               max_shard, seed + 1 + len(towers))}  # fmt: skip
    widths = [TOWERS["siglip"]["vision_config"]["hidden_size"], TOWERS["dinov2"]["hidden_size"]]
    specs = llm_specs(cfg) + connector_specs(cfg, widths)
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(p["generation_config"], indent=2) + "\n")
    pad_tokenizer(TINY[p["like"]], out, p["like"], p["tokenizer_len"])
    llm_bytes = write_shards(out, specs, torch.bfloat16, max_shard, seed, index=True)
    record = {
        "like": p["like"],
        "preset": next(k for k, v in PRESETS.items() if v["like"] == p["like"]),
        "llm_layers": n_llm,
        "vision_layers": {
            k: v["config"].get("num_hidden_layers") or v["config"]["vision_config"]["num_hidden_layers"]
            for k, v in towers.items()
        },  # fmt: skip
        "seed": seed,
        "bytes": {"llm_and_connector": llm_bytes, **{k: v["bytes"] for k, v in towers.items()}},
        "made_by": "scripts/make_random_checkpoint.py",
    }
    (out / "RANDOM_CHECKPOINT.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--like", required=True, choices=["qwen2-7b", "llama3.2-3b"])
    ap.add_argument("--llm-layers", type=int, help="decoder layers (default: the real depth)")
    ap.add_argument("--vision-layers", type=int, help="layers of each vision tower (default: the real depth)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--max-shard-gb", type=float, default=5.0, help="largest shard (memory use while writing)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rec = make_checkpoint(args.like, args.out, llm_layers=args.llm_layers, vision_layers=args.vision_layers,
                          max_shard_gb=args.max_shard_gb, seed=args.seed)  # fmt: skip
    print(json.dumps(rec["bytes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
