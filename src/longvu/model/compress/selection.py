"""Stage 2: token budget, resolution choice and text-guided selection (paper Sec. 3.2).

Under the context budget, LongVU gives every kept frame a low-res 8x8 grid and
upgrades the frames most related to the question to the high-res 12x12 grid.
Relatedness is the mean dot product between a frame's low-res tokens and the
embeddings of the question text (the prompt text *after* the video placeholder).

The reference's budget arithmetic is reproduced exactly, off-by-ones included:
the frame budgets count the placeholder as a text token, ``max_visual_len`` does
not (see the README, "Reference quirks").

Shapes:
    low: ``[N, T_lo, H]``, high: ``[N, T_hi, H]``, text: ``[n_text_after, H]``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...config import frame_budget
from ..prompt import IMAGE_TOKEN_INDEX


@dataclass(frozen=True)
class Budget:
    """Token budgets derived from the prompt and the config (all reference formulas).

    Attributes:
        text_len: prompt length used by the frame budgets: index of the first
            ``pad_id`` in the ids, else ``len(ids)`` (placeholder included).
        max_frames_dino: frames below which temporal reduction is skipped.
        mvl_resolution: visual tokens available, as the resolution choice sees it.
        max_frames_high: frames that fit at high resolution (at least 1).
        max_frames_low: frames that fit at low resolution (at least 1).
        max_visual_len: visual tokens available in the sequence (placeholder not
            counted as text).
    """

    text_len: int
    max_frames_dino: int
    mvl_resolution: int
    max_frames_high: int
    max_frames_low: int
    max_visual_len: int


def compute_budget(
    input_ids: list[int],
    *,
    max_length: int,
    inference_max_length: int,
    image_token_len: int,
    lowres_token: int,
    highres: bool,
    pad_id: int,
    image_token_id: int = IMAGE_TOKEN_INDEX,
) -> Budget:
    """Work out every budget of the reference from the prompt ids (with the placeholder)."""
    text_len = input_ids.index(pad_id) if pad_id in input_ids else len(input_ids)
    tokens_per_frame = lowres_token**2 if highres else image_token_len
    mvl = max_length - text_len - inference_max_length
    n_text = sum(1 for t in input_ids if t != image_token_id)
    return Budget(
        text_len=text_len,
        max_frames_dino=frame_budget(max_length, inference_max_length, tokens_per_frame, text_len),
        mvl_resolution=mvl,
        max_frames_high=max(1, math.floor(mvl // image_token_len)),
        max_frames_low=max(1, math.floor(mvl // lowres_token**2)),
        max_visual_len=max_length - inference_max_length - n_text,
    )


def use_mixed_resolution(num_frames: int, budget: Budget) -> bool:
    """Whether low-res tokens are the base (the reference's ``input_mix_res``).

    Few frames (``< max_frames_high``): all high-res.  Too many even at low-res
    (``> max_frames_low``): also all high-res, and stage 3 shrinks them (the
    reference's 8x8 fallback for this case is dead code).  Otherwise mixed.
    """
    if num_frames < budget.max_frames_high:
        return False
    if num_frames > budget.max_frames_low:
        return False
    return True


@dataclass
class TextGuidedResult:
    """Output of :func:`select_high_res`.

    Attributes:
        tokens: ``[T, H]`` the frames' tokens in order, high-res for chosen frames.
        high_frames: frame positions (ascending) given high-res tokens.
        highres_num: how many frames the budget allowed at high res (before the min
            with the frame count); 0 if the budget had no room.
        frame_similarity: ``[N]`` float32 per-frame text similarity, or None if not computed.
    """

    tokens: torch.Tensor
    high_frames: list[int]
    highres_num: int
    frame_similarity: torch.Tensor | None

    @property
    def mixed(self) -> bool:
        """True when some frames were upgraded (the reference's ``mix_token``)."""
        return self.frame_similarity is not None


def select_high_res(
    low: torch.Tensor, high: torch.Tensor, text: torch.Tensor, *, max_visual_len: int, guided: bool = True
) -> TextGuidedResult:
    """Upgrade the frames most similar to the question to high resolution.

    ``highres_num = floor((max_visual_len - N*T_lo) / (T_hi - T_lo))`` frames get
    their high-res tokens: the top-k frames by mean over their low-res tokens of the
    mean over text tokens of ``token . text``, computed in float32.

    Args:
        low: ``[N, T_lo, H]`` low-res tokens per frame (newlines included).
        high: ``[N, T_hi, H]`` high-res tokens per frame.
        text: ``[n, H]`` embeddings of the prompt text after the video placeholder.
        max_visual_len: visual token budget.
        guided: False upgrades as many frames, spread evenly over the video instead of
            chosen by the question (not the paper's method: its ablation baseline).
    """
    n, t_lo, h = low.shape
    t_hi = high.shape[1]
    visual_len = n * t_lo
    flat_low = low.reshape(n * t_lo, h)
    if max_visual_len <= visual_len:
        return TextGuidedResult(flat_low, [], 0, None)
    highres_num = math.floor((max_visual_len - visual_len) / (t_hi - t_lo))
    if highres_num < 1:
        return TextGuidedResult(flat_low, [], highres_num, None)
    # Scores in float32 whatever the model dtype: in bf16 they are quantised to ~1/256 and
    # tie, and top-k would pick by the backend's tie order.  The tokens keep their dtype.
    sim = torch.matmul(flat_low.float(), text.float().transpose(0, 1)).mean(dim=-1)  # (N*T_lo,)
    sim_frame = sim.reshape(n, -1).mean(dim=-1)  # (N,)
    k = min(highres_num, n)
    chosen = sorted(torch.topk(sim_frame, k).indices.tolist()) if guided else evenly_spaced(n, k)
    chosen_set = set(chosen)
    parts = [high[i] if i in chosen_set else low[i] for i in range(n)]
    return TextGuidedResult(torch.cat(parts, 0), chosen, highres_num, sim_frame)


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` of ``range(n)`` spread evenly, first and last included (``1 <= k <= n``)."""
    if k == 1:
        return [(n - 1) // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
