"""The question-dependent half of LongVU: encoded video + prompt ids -> the LLM's input embeddings.

    budgets (Sec. 3.2) -> stage 1 decisions (Sec. 3.1) -> 12x12 and 8x8 grids (SVA heads)
    -> stage 2, text-guided selection (Sec. 3.2) -> stage 3, spatial token compression (Sec. 3.3)
    -> splice the visual tokens into the prompt at the video placeholder

A text-only prompt (no placeholder, no video) composes to its text embeddings alone:
no visual tokens and no stage decisions.

:func:`compose` is that recipe, step by step, on a loaded model.  It returns the
embeddings and a small :class:`Decisions` record (what each stage kept, no tensors);
the trace, the server's report and the training code all read that record.  It runs
without gradients only if the caller says so (``torch.inference_mode()``), so training
goes through the same function.

Shapes:
    N: frames kept by stage 1; T_hi, T_lo: tokens per frame at high / low resolution
    (newline tokens included); H: LLM hidden size; L: sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import LongVUConfig
from .compress import (
    Budget,
    TemporalResult,
    compute_budget,
    select_frames,
    select_high_res,
    spatial_token_compression,
    use_mixed_resolution,
)
from .observe import Observer
from .prompt import IMAGE_TOKEN_INDEX


@dataclass
class Decisions:
    """What the question-dependent stages decided, in the reference's terms.

    Attributes:
        input_ids: prompt ids with the video placeholder (``IMAGE_TOKEN_INDEX``).
        budget: every budget of the reference, from the prompt.
        temporal: stage 1 (``kept`` are positions into the sampled frames).
        mixed: low-res tokens are the base (the reference's ``input_mix_res``).
        high_tokens, high_grid, low_tokens, low_grid: tokens per frame and (rows, cols)
            of each grid; ``low_*`` are None unless ``mixed``.
        high_frames: positions into ``temporal.kept`` that stage 2 upgraded to high
            resolution (the reference's ``high_res_frames``: empty unless ``mix_token``).
        highres_num: frames the budget allowed at high resolution (0 if none).
        mix_token: stage 2 upgraded frames (the reference's ``mix_token``).
        stc: stage 3's report (``chunks``, ``reduced_len``, ``force_remove``,
            ``after_force_remove``), or None if it did not run.
        tokens_after_frame_reduction, tokens_after_selection, tokens_final: visual tokens.
        sequence_length: L.
    """

    input_ids: list[int]
    budget: Budget
    temporal: TemporalResult
    mixed: bool
    high_tokens: int
    high_grid: tuple[int, int]
    low_tokens: int | None
    low_grid: tuple[int, int] | None
    high_frames: list[int]
    highres_num: int
    mix_token: bool
    stc: dict | None
    tokens_after_frame_reduction: int
    tokens_after_selection: int
    tokens_final: int
    sequence_length: int

    @property
    def kept(self) -> list[int]:
        """Sampled-frame positions kept by stage 1."""
        return self.temporal.kept

    @property
    def high_res_kept(self) -> list[int]:
        """Positions into :attr:`kept` whose tokens come from the 12x12 grid, as a user means it.

        Without mixed resolution every kept frame has its high-res grid; in mixed mode only
        the frames stage 2 upgraded do (none if the budget had no room).
        """
        return list(self.high_frames) if self.mixed else list(range(len(self.kept)))


@dataclass
class Composition:
    """:func:`compose`'s result: ``embeds [1, L, H]`` and the :class:`Decisions` behind them
    (None for a text-only prompt: no stage ran)."""

    embeds: torch.Tensor
    decisions: Decisions | None


def budget_for(ids: list[int], cfg: LongVUConfig) -> Budget:
    """The reference's budgets for a prompt (see :func:`longvu.model.compress.compute_budget`)."""
    return compute_budget(
        ids,
        max_length=cfg.tokenizer_model_max_length,
        inference_max_length=cfg.inference_max_length,
        image_token_len=cfg.image_token_len,
        lowres_token=cfg.lowres_token,
        highres=cfg.highres,
        pad_id=cfg.budget_pad_token_id,
    )


def compose(model, feats, ids: list[int], *, observer: Observer | None = None) -> Composition:
    """Build the LLM's input embeddings for one prompt about one encoded video (or none).

    Args:
        model: a loaded :class:`longvu.loading.load.LongVUModel`.
        feats: the video's :class:`longvu.model.encode.VisualFeatures`; None for a text-only prompt.
        ids: prompt token ids holding exactly one ``IMAGE_TOKEN_INDEX`` (none if ``feats`` is None).
        observer: gets the intermediate tensors (parity checksums); None computes nothing extra.
    """
    cfg = model.cfg
    if feats is None:
        return compose_text(model, ids, observer=observer)
    if ids.count(IMAGE_TOKEN_INDEX) != 1:
        raise ValueError(f"the prompt must hold exactly one video placeholder, found {ids.count(IMAGE_TOKEN_INDEX)}")
    budget = budget_for(ids, cfg)
    temporal = select_frames(
        feats.similarity, feats.window_sizes, max_frames=budget.max_frames_dino, threshold=cfg.dino_threshold,
        window=cfg.dino_window, cap=cfg.max_frames_cap, fix_middle_frame=cfg.fix_dino_middle_frame,
    )  # fmt: skip
    if observer:
        observer.on_temporal(result=temporal)
    mixed = (
        cfg.highres and cfg.image_token_len > cfg.lowres_token**2 and use_mixed_resolution(len(temporal.kept), budget)
    )
    high, low, grids = frame_tokens(model, feats, temporal.kept, mixed, observer)  # [N, T_hi, H], [N, T_lo, H]
    pos = ids.index(IMAGE_TOKEN_INDEX)
    before, after = model.embed(ids[:pos]), model.embed(ids[pos + 1 :])  # [n_before, H], [n_after, H]
    tokens, sel, stc = select_and_compress(high, low, after, budget, cfg, observer)  # [T, H]
    embeds = torch.cat([before, tokens.to(before.dtype), after], dim=0).unsqueeze(0)  # [1, L, H]
    if embeds.shape[1] > cfg.tokenizer_model_max_length:  # the context policy keeps this from happening
        raise ValueError(f"sequence of {embeds.shape[1]} tokens exceeds the context {cfg.tokenizer_model_max_length}")
    if observer:
        observer.on_embeds(embeds=embeds)
    decisions = Decisions(
        input_ids=list(ids), budget=budget, temporal=temporal, mixed=mixed, **grids,
        high_frames=list(sel.high_frames) if sel is not None else [],
        highres_num=int(sel.highres_num) if sel is not None else 0, mix_token=bool(sel is not None and sel.mixed),
        stc=_stc_report(stc), tokens_after_frame_reduction=int(high.shape[0] * high.shape[1]),
        tokens_after_selection=int(sel.tokens.shape[0]) if sel is not None else int(high.shape[0] * high.shape[1]),
        tokens_final=int(tokens.shape[0]), sequence_length=int(embeds.shape[1]),
    )  # fmt: skip
    return Composition(embeds, decisions)


def compose_text(model, ids: list[int], *, observer: Observer | None = None) -> Composition:
    """The LLM's input embeddings ``[1, L, H]`` of a text-only prompt: its text, embedded."""
    if IMAGE_TOKEN_INDEX in ids:
        raise ValueError("the prompt holds a video placeholder but no video was given")
    embeds, context = model.embed(ids).unsqueeze(0), model.cfg.tokenizer_model_max_length  # [1, L, H]
    if embeds.shape[1] > context:  # the context policy keeps this from happening
        raise ValueError(f"sequence of {embeds.shape[1]} tokens exceeds the context {context}")
    if observer:
        observer.on_embeds(embeds=embeds)
    return Composition(embeds, None)


def select_and_compress(high, low, text_after, budget: Budget, cfg: LongVUConfig, observer: Observer | None = None):
    """Stages 2 and 3 on the kept frames' tokens.

    Args:
        high: ``[N, T_hi, H]``; low: ``[N, T_lo, H]`` in mixed mode, else None.
        text_after: ``[n, H]`` embeddings of the prompt text after the placeholder.
    Returns:
        the visual tokens ``[T, H]`` (at most ``budget.max_visual_len`` when stage 3 ran),
        the :class:`~longvu.model.compress.TextGuidedResult` (None unless mixed) and the
        :class:`~longvu.model.compress.STCResult` (None unless stage 3 ran).
    """
    sel = None
    if low is not None:
        sel = select_high_res(low, high, text_after, max_visual_len=budget.max_visual_len, guided=cfg.text_guided)
    tokens = sel.tokens if sel is not None else high.reshape(-1, high.shape[-1])
    if sel is not None and observer:
        observer.on_selection(result=sel)
    base = low if low is not None else high  # the reference's visual_len counts the base, before mixing
    stc = None
    if budget.max_visual_len < base.shape[0] * base.shape[1] and not (sel is not None and sel.mixed):
        stc = spatial_token_compression(base, max_visual_len=budget.max_visual_len, drop_threshold=cfg.drop_threshold,
                                        window=cfg.stc_window)  # fmt: skip
        tokens = stc.tokens
        if observer:
            observer.on_stc(result=stc)
    return tokens, sel, stc


def frame_tokens(model, feats, kept: list[int], mixed: bool, observer: Observer | None = None):
    """The kept frames' token grids through ``mm_projector``, unpadded, newlines appended.

    Returns:
        high ``[N, T_hi, H]``, low ``[N, T_lo, H]`` or None (unless ``mixed``), and the
        grid sizes as :class:`Decisions` fields.
    """
    cfg, conn = model.cfg, model.connector
    hw = feats.frame_hw
    sampled = feats.sampled_for(kept, device=model.device)  # [N, 144, vh]
    grid_hi = conn.project(sampled)  # [N, 12, 12, H]
    fix = cfg.fix_unpad_orientation
    high, high_grid = conn.unpad_with_newlines(grid_hi, hw, fix_orientation=fix)
    low = low_grid = grid_lo = None
    if mixed:
        grid_lo = conn.project(conn.lowres(sampled))  # [N, 8, 8, H]
        scale = cfg.high_side / cfg.lowres_token
        low, low_grid = conn.unpad_with_newlines(grid_lo, (int(hw[0] / scale), int(hw[1] / scale)), fix_orientation=fix)
    if observer:
        observer.on_grids(high=grid_hi, low=grid_lo)
    if cfg.frame_pos:
        high = add_frame_pos(high, kept, fix=cfg.fix_frame_pos)
        low = None if low is None else add_frame_pos(low, kept, fix=cfg.fix_frame_pos)
    grids = {"high_tokens": int(high.shape[1]), "high_grid": tuple(high_grid),
             "low_tokens": None if low is None else int(low.shape[1]),
             "low_grid": None if low_grid is None else tuple(low_grid)}  # fmt: skip
    return high, low, grids


def add_frame_pos(tokens: torch.Tensor, positions: list[int], *, fix: bool = False) -> torch.Tensor:
    """Add the reference's sinusoidal frame-position code to every token of each frame.

    ``omega_j = 10000^(-2*floor(j/2)/H)``, t = kept-frame position.  Even dims get
    ``sin(t*omega)``; odd dims get ``cos(sin(t*omega))`` in the reference
    (cambrian_arch.py ``get_frame_pos``: the cos is taken of values already
    replaced by sin), ``cos(t*omega)`` with ``fix=True``.

    Args:
        tokens: ``[N, T, H]``
        positions: N kept-frame positions
    """
    h = tokens.shape[-1]
    # The code is computed on the host (the same numbers whatever the device) and moved once.
    base = torch.tensor(10000, device="cpu")
    omega = torch.stack([1 / torch.pow(base, torch.tensor(2 * (j // 2) / h, device="cpu")) for j in range(h)])
    angle = omega.reshape(1, -1) * torch.tensor(positions, device="cpu").reshape(-1, 1)  # (N, H)
    pos = angle.clone()
    pos[:, 0::2] = torch.sin(angle[:, 0::2])
    pos[:, 1::2] = torch.cos(angle[:, 1::2]) if fix else torch.cos(pos[:, 0::2])
    return tokens + pos.unsqueeze(1).to(device=tokens.device, dtype=tokens.dtype)


def _stc_report(stc) -> dict | None:
    if stc is None:
        return None
    return {"chunks": stc.chunks, "reduced_len": stc.reduced_len, "force_remove": stc.force_remove,
            "after_force_remove": stc.after_force_remove}  # fmt: skip
