"""Per-tower image preprocessing: pad to square, resize, rescale, normalise.

This reproduces the reference's ``process_images`` (``image_aspect_ratio="pad"``):
each frame is padded to a square with the tower's mean colour, resized with
Pillow's BICUBIC filter (pixel values depend on Pillow, so Pillow it is), then
rescaled and normalised as the HF image processors do in float32.  Written here
rather than calling the HF processors because transformers 5's processors may
take a torchvision path with different resampling, and because doing it in numpy
is faster.

Shapes:
    frames: ``[N, H, W, 3]`` uint8 RGB  ->  pixels: ``[N, 3, S, S]`` float32
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class ImageSpec:
    """What one vision tower expects as input."""

    size: int  # output side in pixels (SigLIP 384, DINOv2 378)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255

    @property
    def pad_color(self) -> tuple[int, int, int]:
        # The reference pads with tuple(int(m * 255) for m in image_mean).
        return tuple(int(m * 255) for m in self.mean)  # type: ignore[return-value]

    @classmethod
    def from_preprocessor_config(cls, path: str | Path, size: int | None = None) -> ImageSpec:
        """Read an HF ``preprocessor_config.json``; ``size`` overrides its resolution."""
        raw = json.loads(Path(path).read_text())
        if size is None:
            box = raw.get("crop_size") or raw.get("size") or {}
            size = int(box.get("height") or box.get("shortest_edge"))
        return cls(
            size=size,
            mean=tuple(raw.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(raw.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
        )


def expand_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Pad ``image`` to a square of side max(W, H), content centred (offset floor((big-small)/2))."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), color)
    out.paste(image, ((side - w) // 2, 0) if w < h else (0, (side - h) // 2))
    return out


def preprocess_frame(frame: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """One ``[H, W, 3]`` uint8 frame -> ``[3, S, S]`` float32 normalised pixels."""
    img = expand_to_square(Image.fromarray(frame), spec.pad_color)
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), Image.BICUBIC)
    # HF's rescale multiplies in float64 and casts to float32; normalise runs in float32.
    x = (np.asarray(img, dtype=np.float64) * spec.rescale_factor).astype(np.float32)
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_frames(frames: np.ndarray, spec: ImageSpec) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 -> ``[N, 3, S, S]`` float32 (see :func:`preprocess_frame`)."""
    out = np.empty((len(frames), 3, spec.size, spec.size), dtype=np.float32)
    for i, frame in enumerate(frames):
        out[i] = preprocess_frame(frame, spec)
    return torch.from_numpy(out)
