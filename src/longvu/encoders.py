"""The two frozen vision towers: SigLIP-SO400M and DINOv2-giant (HF glue only).

Both towers come from transformers; this module loads them from local folders (or
the hub, as a last resort), reproduces how the reference reads their features, and
resamples each tower's 27x27 patch grid to 24x24 = 576 tokens.

* DINOv2 (paper Sec. 3.1, temporal reduction): ``last_hidden_state`` (after the
  final LayerNorm) without CLS.  transformers 5 changed how DINOv2 resamples its
  37x37 position grid to 27x27; the released connector was trained with the
  transformers-4.4x behaviour, which :func:`legacy_dinov2_pos_encoding` restores.
* SigLIP (paper Sec. 3.2, spatial features): the output of the last encoder layer,
  *before* ``post_layernorm`` (the reference's ``hidden_states[-1]``).

Shapes:
    pixels ``[N, 3, S, S]`` -> features ``[N, 576, C]`` (C = tower width)
"""

from __future__ import annotations

import json
import math
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import quiet_transformers
from .devices import bicubic_on_host, upload
from .errors import CheckpointError
from .preprocess import ImageSpec

# Names found in a checkpoint's mm_vision_tower_aux_list -> the hub repository the
# reference actually loads (siglip_encoder.py L13, dino_encoder.py L13 ignore the name).
TOWER_HUB_IDS = {
    "siglip/CLIP-ViT-SO400M-14-384": "google/siglip-so400m-patch14-384",
    "facebook/dinov2-giant-res378": "facebook/dinov2-giant",
}


def tower_kind(name: str) -> str:
    low = name.lower()
    if "siglip" in low:
        return "siglip"
    if "dino" in low:
        return "dinov2"
    raise CheckpointError(f"unsupported vision tower {name!r} (expected a SigLIP or DINOv2 tower)")


def legacy_dinov2_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2 position-grid resampling as in transformers 4.42-4.44.

    The old code resamples with ``scale_factor=((h + 0.1) / sqrt(P), ...)`` instead of
    ``size=(h, w)``; bicubic sampling then reads slightly different source positions.
    Bound onto ``Dinov2Embeddings`` instances in place of their own method.
    """
    num_patches = embeddings.shape[1] - 1
    pos = self.position_embeddings
    num_positions = pos.shape[1] - 1
    if num_patches == num_positions and height == width:
        return pos
    class_pos = pos[:, :1]
    patch_pos = pos[:, 1:]
    dim = embeddings.shape[-1]
    side = int(math.sqrt(num_positions))
    h = height // self.config.patch_size + 0.1
    w = width // self.config.patch_size + 0.1
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, C, side, side)
    target = patch_pos
    if bicubic_on_host(patch_pos.device):  # MPS before torch 2.6: no bicubic kernel there
        patch_pos = patch_pos.cpu()
    patch_pos = F.interpolate(
        patch_pos.to(torch.float32),
        scale_factor=(float(h / side), float(w / side)),
        mode="bicubic",
        align_corners=False,
    ).to(device=target.device, dtype=target.dtype)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)  # (1, h*w, C)
    return torch.cat((class_pos, patch_pos), dim=1)


def resample_tokens(features: torch.Tensor, side: int) -> torch.Tensor:
    """``[N, T, C]`` square token grid -> ``[N, side*side, C]`` by bilinear interpolation.

    Runs in float32 with ``align_corners=False`` as the reference's ``interpolate``.
    """
    n, t, c = features.shape
    src = int(math.isqrt(t))
    if src * src != t:
        raise ValueError(f"expected a square token grid, got {t} tokens")
    if src == side:
        return features
    x = features.reshape(n, src, src, c).permute(0, 3, 1, 2)  # (N, C, src, src)
    x = F.interpolate(x.to(torch.float32), size=(side, side), mode="bilinear", align_corners=False)
    return x.to(features.dtype).permute(0, 2, 3, 1).reshape(n, side * side, c)


@dataclass
class VisionTower:
    """One loaded tower: the transformers module and its input spec."""

    kind: str  # "siglip" | "dinov2"
    model: nn.Module
    spec: ImageSpec
    hidden_size: int
    folder: str
    output_device: torch.device | None = None  # where features go (the connector's device), if not here

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, out_side: int = 24) -> torch.Tensor:
        """``[N, 3, S, S]`` pixels -> ``[N, out_side**2, C]`` features (in the tower's dtype)."""
        p = next(self.model.parameters())
        pixels = upload(pixels, p.device, p.dtype)
        if self.kind == "dinov2":
            hidden = self.model(pixel_values=pixels).last_hidden_state[:, 1:]
        else:
            vm = getattr(self.model, "vision_model", self.model)  # transformers 4 nests it
            hidden = vm.encoder(inputs_embeds=vm.embeddings(pixels)).last_hidden_state
        out = resample_tokens(hidden, out_side)
        return out if self.output_device is None else out.to(self.output_device)

    def encode(self, pixels: torch.Tensor, chunk: int = 64, out_side: int = 24) -> torch.Tensor:
        """Like ``__call__`` but in chunks of ``chunk`` frames."""
        parts = [self(pixels[i : i + chunk], out_side) for i in range(0, len(pixels), chunk)]
        return torch.cat(parts, 0)


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
    try:
        from huggingface_hub import snapshot_download

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
    dino_image_size: int = 378,
    legacy_dinov2_interpolation: bool = True,
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
        from transformers import SiglipVisionConfig, SiglipVisionModel

        cfg = SiglipVisionConfig(**raw_cfg.get("vision_config", raw_cfg))
        model = _load_strict(SiglipVisionModel, folder, cfg, dtype, ignore_prefixes=("text_model.", "logit_"))
        spec = ImageSpec.from_preprocessor_config(proc)
        hidden = cfg.hidden_size
    else:
        from transformers import Dinov2Config, Dinov2Model

        cfg = Dinov2Config(**raw_cfg)
        model = _load_strict(Dinov2Model, folder, cfg, dtype, ignore_prefixes=())
        if legacy_dinov2_interpolation:
            emb = model.embeddings
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
