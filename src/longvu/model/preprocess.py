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

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .intake import MediaLimits


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


@functools.lru_cache(maxsize=16)
def _normalize_lut(spec: ImageSpec) -> np.ndarray:
    """``[3, 256]`` float32: the normalised value of each byte per channel.

    Computed with exactly the float operations of HF's rescale (float64 multiply, cast
    to float32) and normalise (float32 subtract and divide), so a table lookup gives
    bit-identical pixels at a fraction of the cost.
    """
    v = np.arange(256, dtype=np.float64)[:, None].repeat(3, axis=1)  # (256, 3)
    x = (v * spec.rescale_factor).astype(np.float32)
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.T)


# Rows of a portrait frame padded at once by :func:`pad_and_resize` (a band of 64 rows of a
# 4K portrait frame is 0.7 MB; the padded square would be 44 MB).
BAND_ROWS = 64


def pad_and_resize(frame: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> padded to a square and resized: ``[S, S, 3]`` uint8.

    Bit-identical to ``expand_to_square(...).resize((S, S), BICUBIC)``, without building the
    padded square at full size.  Pillow resizes horizontally (each row on its own, to 8-bit),
    then vertically.  For a landscape frame every row of the square that is pure padding gives
    the same horizontal result, so only the frame's own rows go through the horizontal pass
    and the padding rows are one resized row, repeated.  For a portrait frame every row is
    padding, frame row, padding: the rows are padded and resized horizontally a band at a
    time.  Either way the vertical pass then runs on the assembled ``[side, S]`` image, so
    memory stays a few MB whatever the frame size (a 4K portrait square is 44 MB).
    """
    h, w = frame.shape[:2]
    t = spec.size
    if max(w, h) > _EXACT.max_side or max(w, h) > _EXACT.max_aspect * min(w, h):
        return _resize_then_pad(frame, spec)
    if h == w or max(w, h) == t:
        img = expand_to_square(Image.fromarray(frame), spec.pad_color)
        if img.size != (t, t):
            img = img.resize((t, t), Image.BICUBIC)
        return np.asarray(img)
    inter = _landscape_rows(frame, spec) if w > h else _portrait_rows(frame, spec)  # [side, S, 3]
    return np.asarray(Image.fromarray(inter).resize((t, t), Image.BICUBIC))


# Shapes the default :class:`~longvu.model.intake.MediaLimits` let through take the exact path;
# every decoded video and image frame is within them (the intake refuses the rest).
_EXACT = MediaLimits()


def _resize_then_pad(frame: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """``[S, S, 3]`` for a shape beyond the default limits: the content resized first, then padded.

    Only a :class:`~longvu.model.video.VideoClip` built by hand can bring such a shape
    (1,000,000x1, 1x600,000): the padded-square path would cost memory with the long side
    and time with its square.  Resizing the content to its place in the ``S x S`` square
    first costs time with its pixels and memory with ``S``.  Pillow rounds differently on
    this path (its passes see other sizes), so it is not bit-identical to the reference;
    the limits keep every real frame on the exact path.
    """
    h, w = frame.shape[:2]
    t = spec.size
    scale = t / max(w, h)
    nw, nh = min(t, max(1, round(w * scale))), min(t, max(1, round(h * scale)))
    out = Image.new("RGB", (t, t), spec.pad_color)
    out.paste(Image.fromarray(frame).resize((nw, nh), Image.BICUBIC), ((t - nw) // 2, (t - nh) // 2))
    return np.asarray(out)


def _landscape_rows(frame: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """The padded square of a landscape frame after Pillow's horizontal pass: ``[W, S, 3]``."""
    h, w = frame.shape[:2]
    t, top = spec.size, (w - h) // 2
    inter = np.empty((w, t, 3), dtype=np.uint8)
    pad_row = np.asarray(Image.new("RGB", (w, 1), spec.pad_color).resize((t, 1), Image.BICUBIC))
    inter[:top] = pad_row
    inter[top + h :] = pad_row
    inter[top : top + h] = np.asarray(Image.fromarray(frame).resize((t, h), Image.BICUBIC))
    return inter


def _portrait_rows(frame: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """The padded square of a portrait frame after Pillow's horizontal pass: ``[H, S, 3]``."""
    h, w = frame.shape[:2]
    t, left = spec.size, (h - w) // 2
    inter = np.empty((h, t, 3), dtype=np.uint8)
    band = np.empty((min(h, BAND_ROWS), h, 3), dtype=np.uint8)  # rows of the square, at full width
    band[:] = spec.pad_color
    for r0 in range(0, h, BAND_ROWS):
        n = min(BAND_ROWS, h - r0)
        band[:n, left : left + w] = frame[r0 : r0 + n]
        inter[r0 : r0 + n] = np.asarray(Image.fromarray(band[:n]).resize((t, n), Image.BICUBIC))
    return inter


def preprocess_frame(frame: np.ndarray, spec: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
    """One ``[H, W, 3]`` uint8 frame -> ``[3, S, S]`` float32 normalised pixels."""
    return normalize(pad_and_resize(frame, spec), spec, out)


def normalize(arr: np.ndarray, spec: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
    """A padded and resized ``[S, S, 3]`` uint8 image -> ``[3, S, S]`` float32 (rescale, normalise)."""
    lut = _normalize_lut(spec)
    if out is None:
        out = np.empty((3, spec.size, spec.size), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], arr[:, :, c], out=out[c])
    return out


def preprocess_reference(frame: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """The same as :func:`preprocess_frame`, written as HF's processors compute it (for tests)."""
    img = expand_to_square(Image.fromarray(frame), spec.pad_color)
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), Image.BICUBIC)
    x = (np.asarray(img, dtype=np.float64) * spec.rescale_factor).astype(np.float32)
    x = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_frames(frames: np.ndarray, spec: ImageSpec) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 -> ``[N, 3, S, S]`` float32 (see :func:`preprocess_frame`)."""
    out = np.empty((len(frames), 3, spec.size, spec.size), dtype=np.float32)
    for i, frame in enumerate(frames):
        preprocess_frame(frame, spec, out[i])
    return torch.from_numpy(out)
