"""Stage 3: spatial token compression, STC (paper Sec. 3.3).

When the frames still exceed the budget, they are cut into windows of ``window``
(8) frames.  The first frame of each window is kept whole; in every other frame,
token k is kept only if its cosine similarity to token k of the window's first
frame is below ``drop_threshold`` (it changed; the cosine is computed in float32
whatever the tokens' dtype).  If the total is still too long,
the reference trims the same number of tokens from the end of *every* window
(``force_remove``, which can empty short windows), then cuts to the budget.

Newline tokens are identical across frames (without frame_pos), so outside the
anchor frame they are always dropped; this is the reference's behaviour.

Shapes:
    frames: ``[N, T, H]`` (every frame has the same T) -> tokens ``[T', H]``
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class STCResult:
    """Output of :func:`spatial_token_compression`.

    Attributes:
        tokens: ``[T', H]``, at most ``max_visual_len`` rows.
        chunks: per window ``{"first_frame", "num_frames", "tokens_in", "tokens_kept"}``.
        similarity: float32 cosine of every non-anchor token to its anchor, in window order.
        keep_mask: ``[N*T]`` uint8, 1 for kept tokens (anchors included), before force-remove.
        reduced_len: tokens after the threshold rule.
        force_remove: tokens cut from the end of every window (0 if none).
        after_force_remove: tokens after force-remove, before the final cut.
    """

    tokens: torch.Tensor
    chunks: list[dict] = field(default_factory=list)
    similarity: torch.Tensor | None = None
    keep_mask: torch.Tensor | None = None
    reduced_len: int = 0
    force_remove: int = 0
    after_force_remove: int = 0


def spatial_token_compression(
    frames: torch.Tensor, *, max_visual_len: int, drop_threshold: float, window: int
) -> STCResult:
    """Drop tokens that barely changed since their window's first frame.

    Args:
        frames: ``[N, T, H]`` tokens per frame.
        max_visual_len: budget; the result has at most this many tokens.
        drop_threshold: tokens with cosine ``>= drop_threshold`` to the anchor are dropped.
        window: frames per window.
    """
    n, t, _ = frames.shape
    kept_windows: list[torch.Tensor] = []
    chunks: list[dict] = []
    sims: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for start in range(0, n, window):
        chunk = frames[start : start + window]  # (w, T, H)
        anchor_mask = torch.ones(t, dtype=torch.uint8, device=frames.device)
        if len(chunk) == 1:
            kept_windows.append(chunk[0])
            masks.append(anchor_mask)
        else:
            # The cosine in float32 whatever the model dtype (bf16 moves it across drop_threshold).
            anchor = chunk[0].unsqueeze(0).repeat_interleave(len(chunk) - 1, dim=0).float()
            sim = F.cosine_similarity(anchor, chunk[1:].float(), dim=-1)  # (w-1, T)
            keep = sim.flatten(0, 1) < drop_threshold
            kept_windows.append(torch.cat([chunk[0], chunk[1:].flatten(0, 1)[keep]], dim=0))
            sims.append(sim.flatten())
            masks.extend([anchor_mask, keep.to(torch.uint8)])
        chunks.append(
            {"first_frame": start, "num_frames": len(chunk), "tokens_in": len(chunk) * t,
             "tokens_kept": int(kept_windows[-1].shape[0])}
        )  # fmt: skip
    reduced = sum(int(x.shape[0]) for x in kept_windows)
    force_remove = 0
    if reduced > max_visual_len:
        force_remove = math.ceil((reduced - max_visual_len) / len(kept_windows))
        kept_windows = [x[:-force_remove] for x in kept_windows]
    tokens = torch.cat(kept_windows, dim=0)
    after = int(tokens.shape[0])
    return STCResult(
        tokens=tokens[:max_visual_len],
        chunks=chunks,
        similarity=torch.cat(sims) if sims else frames.new_zeros(0, dtype=torch.float32),
        keep_mask=torch.cat(masks),
        reduced_len=reduced,
        force_remove=force_remove,
        after_force_remove=after,
    )
