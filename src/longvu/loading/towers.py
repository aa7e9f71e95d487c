"""Finding and loading the two vision towers: a local folder (the checkpoint's own, an explicit one, or
the Hugging Face cache), the hub as a last resort, and a strict load that refuses missing weights.

Their forward pass is :mod:`longvu.model.towers`.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..model.preprocess import ImageSpec
from ..model.towers import VisionTower, legacy_dinov2_pos_encoding, tower_kind
from .checkpoint import quiet_transformers

# Names found in a checkpoint's mm_vision_tower_aux_list -> the hub repository the
# reference actually loads (siglip_encoder.py L13, dino_encoder.py L13 ignore the name).
TOWER_HUB_IDS = {
    "siglip/CLIP-ViT-SO400M-14-384": "google/siglip-so400m-patch14-384",
    "facebook/dinov2-giant-res378": "facebook/dinov2-giant",
}


def resolve_tower_folder(name: str, checkpoint_dir: Path | None, explicit: str | None, offline: bool = False) -> Path:
    """Find a tower: explicit path, then ``<ckpt>/vision_towers/<kind>``, then the hub."""
    kind = tower_kind(name)
    if explicit:
        path = Path(explicit)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{explicit}: no config.json for the {kind} tower")
        return path
    if checkpoint_dir is not None:
        local = checkpoint_dir / "vision_towers" / kind
        if (local / "config.json").is_file():
            return local
    repo_id = TOWER_HUB_IDS.get(name, name)
    flag = "--siglip" if kind == "siglip" else "--dinov2"
    if offline:
        raise CheckpointError(
            f"the {kind} tower {repo_id!r} is not available locally; pass {flag} PATH "
            f"or put it in <checkpoint>/vision_towers/{kind}/"
        )
    from huggingface_hub import snapshot_download  # lazy: only when a tower must come from the hub

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # any hub failure becomes one actionable line
        raise CheckpointError(
            f"could not download the {kind} tower {repo_id!r} ({type(e).__name__}); "
            f"pass {flag} PATH or put it in <checkpoint>/vision_towers/{kind}/"
        ) from None


def load_tower(
    name: str,
    folder: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    dino_image_size: int,
) -> VisionTower:
    """Load a SigLIP or DINOv2 tower from ``folder`` with strict weight matching."""
    kind = tower_kind(name)
    proc = folder / "preprocessor_config.json"
    if not proc.is_file():
        raise CheckpointError(f"{folder}: no preprocessor_config.json for the {kind} tower")
    try:
        raw_cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from None
    if kind == "siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel  # lazy: imported only when a tower loads

        cfg = SiglipVisionConfig(**raw_cfg.get("vision_config", raw_cfg))
        model = _load_strict(SiglipVisionModel, folder, cfg, dtype, ignore_prefixes=("text_model.", "logit_"))
        spec = ImageSpec.from_preprocessor_config(proc)
        hidden = cfg.hidden_size
    else:
        from transformers import Dinov2Config, Dinov2Model  # lazy: imported only when a tower loads

        cfg = Dinov2Config(**raw_cfg)
        model = _load_strict(Dinov2Model, folder, cfg, dtype, ignore_prefixes=())
        emb = model.embeddings  # the released connector was trained on transformers 4.4x's resampling
        emb.interpolate_pos_encoding = types.MethodType(legacy_dinov2_pos_encoding, emb)
        spec = ImageSpec.from_preprocessor_config(proc, size=dino_image_size)
        hidden = cfg.hidden_size
    model.to(device).eval()
    return VisionTower(kind=kind, model=model, spec=spec, hidden_size=hidden, folder=str(folder))


def _load_strict(cls, folder: Path, cfg, dtype: torch.dtype, ignore_prefixes: tuple[str, ...]) -> nn.Module:
    """``cls.from_pretrained`` from a local folder; any missing or unexpected tensor is an error."""
    if not list(folder.glob("*.safetensors")):
        raise CheckpointError(f"{folder}: no .safetensors weights")
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(
                str(folder), config=cfg, dtype=dtype, local_files_only=True, output_loading_info=True
            )
    except OSError as e:
        raise CheckpointError(f"{folder}: cannot load weights ({e})") from None
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(ignore_prefixes)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {sorted(missing)[:5]}")
        if unexpected:
            parts.append(f"unexpected {sorted(unexpected)[:5]}")
        if mismatched:
            parts.append(f"wrong shape {[m[0] if isinstance(m, tuple) else m for m in mismatched][:5]}")
        raise CheckpointError(f"{folder}: weights do not match {cls.__name__}: {'; '.join(parts)}")
    return model
