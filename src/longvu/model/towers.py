"""The two frozen vision towers: SigLIP-SO400M and DINOv2-giant (HF glue only).

Both towers come from transformers (:mod:`longvu.loading.towers` finds and loads them); this
module reproduces how the reference reads their features, and resamples each tower's 27x27 patch grid to 24x24 = 576 tokens.

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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .devices import bicubic_on_host, upload
from .preprocess import ImageSpec


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
