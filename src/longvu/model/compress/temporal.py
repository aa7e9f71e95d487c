"""Stage 1: temporal reduction by DINOv2 similarity (paper Sec. 3.1).

Frames are cut into windows of ``window`` (16) consecutive frames.  Inside a window
each frame gets the mean cosine similarity of its DINOv2 features to every frame of
the window (itself included, as in the reference), and frames at or above
``threshold`` are dropped as redundant.  The reference always keeps the middle
frame of each window (it zeroes that frame's similarity), which guarantees a frame
per window.

Shapes:
    features: ``[N, T, C]`` DINOv2 tokens per sampled frame (T = 576)
    returns kept positions into ``range(N)``
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TemporalResult:
    """Which sampled frames survive, and why.

    Attributes:
        kept: positions (into the sampled frames) kept, ascending, after the cap.
        path: "none" (under budget, nothing dropped), "single_window" (fewer than
            ``window`` frames) or "windows".
        similarity: per-frame mean similarity *before* the middle-frame override,
            concatenated over windows (``[N]``); None on the "none" path.
        window_sizes: frames per window.
        num_kept_before_cap: survivors before the ``cap`` was applied.
        capped: whether the cap subsampled the survivors.
    """

    kept: list[int]
    path: str
    similarity: torch.Tensor | None = None
    window_sizes: list[int] = field(default_factory=list)
    num_kept_before_cap: int = 0
    capped: bool = False


def window_similarity(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of each frame to all frames of its window, itself included.

    Args:
        features: ``[n, T, C]``
    Returns:
        ``[n]``
    """
    f = features.flatten(1, 2)  # (n, T*C)
    f = f / torch.norm(f, dim=1, keepdim=True)
    return torch.mean(f @ f.T, dim=1)


def select_in_window(sim: torch.Tensor, threshold: float, fix_middle_frame: bool) -> torch.Tensor:
    """Positions kept inside one window, from its ``[n]`` similarities (``LongTensor``, ascending)."""
    sim = sim.clone()
    if fix_middle_frame:
        # Fix: ignore the self term, and keep the window's least redundant frame
        # instead of forcing its middle frame in.
        n = len(sim)
        if n > 1:
            sim = (sim * n - 1.0) / (n - 1)
        keep = sim < threshold
        keep[torch.argmin(sim)] = True
        return torch.where(keep)[0]
    sim[len(sim) // 2] = 0  # reference quirk: the middle frame is always kept
    return torch.where(sim < threshold)[0]


def select_frames(
    similarity: torch.Tensor,
    window_sizes: list[int],
    *,
    max_frames: int,
    threshold: float,
    window: int,
    cap: int,
    fix_middle_frame: bool = False,
) -> TemporalResult:
    """Drop temporally redundant frames, given the per-window similarities.

    The similarities (:func:`window_similarity` of each window of ``window`` frames) are
    computed as frames stream in and are cached with the video; the decisions depend
    on the question's token budget and are taken here.

    Args:
        similarity: ``[N]`` per-frame mean similarity, windows concatenated.
        window_sizes: frames per window (``window`` each, the last may be shorter).
        max_frames: if ``N < max_frames`` every frame is kept (the budget fits).
        threshold: frames with mean similarity ``>= threshold`` are dropped.
        window: frames per window; with ``N < window`` the video is one window.
        cap: after the windowed pass at most ``cap`` frames are kept, evenly spaced
            (``int(i * n / cap)``); not applied on the single-window path.
        fix_middle_frame: see :func:`select_in_window`.
    """
    n = int(similarity.shape[0])
    if n < max_frames:
        return TemporalResult(kept=list(range(n)), path="none", num_kept_before_cap=n)
    kept: list[int] = []
    start = 0
    for size in window_sizes:
        sim = similarity[start : start + size]
        kept.extend((select_in_window(sim, threshold, fix_middle_frame) + start).tolist())
        start += size
    before = len(kept)
    if n < window:  # one short window; the reference applies no cap on this path
        return TemporalResult(kept, "single_window", similarity, list(window_sizes), before, False)
    capped = before > cap
    if capped:
        kept = cap_frames(kept, cap)
    return TemporalResult(kept, "windows", similarity, list(window_sizes), before, capped)


def cap_frames(kept: list[int], cap: int) -> list[int]:
    """Keep ``cap`` of the survivors, evenly spaced: position ``int(i * n / cap)``."""
    interval = len(kept) / float(cap)
    return [kept[int(interval * i)] for i in range(cap)]
