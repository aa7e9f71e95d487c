"""Observers: opt-in views of the pipeline's intermediate tensors.

The production path computes nothing it does not need.  Whoever wants more (the parity
tests, a debugging session, a notebook) passes an :class:`Observer` and the encoder and
the question-dependent stages call its hooks with the tensors they already hold.  With no
observer, no hook runs and nothing is copied.

:class:`ParityObserver` gathers what the golden traces of the original code check: the
``inputs_embeds`` checksums, the first-step logits and, with ``arrays=True``, the
per-frame checksums and similarity arrays of ``--trace-arrays`` (see
``tests/fixtures/parity/README.md``, "Golden files and the trace").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

EMBEDS_FULL_LIMIT = 300_000  # store inputs_embeds whole up to this many values, else head/tail rows


class Observer:
    """Sees intermediate tensors; every hook is a no-op here, override what you need.

    Pass one as ``observer=`` to :meth:`longvu.LongVU.features` and
    :meth:`longvu.LongVU.generate` (or ``ask``/``ask_stream``).  Hooks receive
    tensors on the model's device: copy what you keep with ``.detach().cpu()``.

    Attributes:
        needs_encoder: the encoder hooks must run, so the feature cache is bypassed.
        needs_step0_logits: generation keeps the first step's logits for
            :meth:`on_step0_logits` (otherwise no logits are kept at all).
    """

    needs_encoder: bool = False
    needs_step0_logits: bool = False

    # ----------------------------------------------------------- encoder
    def on_window(
        self, *, positions: list[int], pixels: torch.Tensor, features: torch.Tensor, siglip_pixels: Callable
    ) -> None:
        """One stage-1 window: DINOv2 ``pixels [w, 3, S, S]`` and ``features [w, 576, C]``.

        ``siglip_pixels()`` gives the window's SigLIP input ``[w, 3, S', S']`` (computed on demand).
        """

    def on_siglip_chunk(
        self, *, positions: list[int], features: torch.Tensor, aux: list[torch.Tensor], sampled: torch.Tensor
    ) -> None:
        """One SigLIP chunk: ``features [n, 576, C]``, projected tower features ``aux``, sampler output."""

    # ------------------------------------------- question-dependent stages
    def on_temporal(self, *, result: Any) -> None:
        """Stage 1's :class:`~longvu.model.compress.TemporalResult`."""

    def on_grids(self, *, high: torch.Tensor, low: torch.Tensor | None) -> None:
        """Projected ``[N, 12, 12, H]`` (and ``[N, 8, 8, H]``) grids of the kept frames, before unpadding."""

    def on_selection(self, *, result: Any) -> None:
        """Stage 2's :class:`~longvu.model.compress.TextGuidedResult` (mixed resolution only)."""

    def on_stc(self, *, result: Any) -> None:
        """Stage 3's :class:`~longvu.model.compress.STCResult` (when it ran)."""

    def on_embeds(self, *, embeds: torch.Tensor) -> None:
        """The LLM's ``[1, L, H]`` input embeddings."""

    def on_step0_logits(self, *, logits: torch.Tensor) -> None:
        """``[V]`` logits of the first generated token (only with ``needs_step0_logits``)."""

    def on_answer(self, answer: Any) -> None:
        """The finished :class:`~longvu.pipeline.api.Answer`."""


def host64(t: torch.Tensor) -> torch.Tensor:
    """A float64 copy on the CPU (``.cpu()`` first: MPS has no float64)."""
    return t.detach().cpu().double()


class ParityObserver(Observer):
    """Collects the parity checksums of the golden traces; ``arrays=True`` adds ``--trace-arrays``.

    The trace fields (``inputs_embeds``, ``logits_step0``) and arrays are added to the
    answer's :class:`~longvu.pipeline.trace.Trace` when the answer is complete.
    """

    needs_step0_logits = True

    def __init__(self, arrays: bool = False) -> None:
        self.arrays_wanted = arrays
        self.needs_encoder = arrays
        self.fields: dict[str, Any] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self._per_frame: dict[str, dict[int, np.ndarray]] = {}  # by sampled position
        self._per_stored: dict[str, dict[int, np.ndarray]] = {}  # by sampled position, stored frames only

    # ----------------------------------------------------------- encoder
    def on_window(self, *, positions, pixels, features, siglip_pixels) -> None:
        if not self.arrays_wanted:
            return
        pd, fd, ps = host64(pixels), host64(features), host64(siglip_pixels())
        stats = {
            "pixels_dino_sum": pd.sum((1, 2, 3)).numpy(),
            "pixels_dino_sq_sum": (pd**2).sum((1, 2, 3)).numpy(),
            "pixels_siglip_sum": ps.sum((1, 2, 3)).numpy(),
            "pixels_siglip_sq_sum": (ps**2).sum((1, 2, 3)).numpy(),
            "features_dino_sum": fd.sum((1, 2)).numpy(),
            "features_dino_l2": fd.flatten(1).norm(dim=1).numpy(),
        }
        _scatter(self._per_frame, positions, stats)
        if positions[0] == 0:
            self.arrays["pixels_dino_frame0_crop"] = pixels[0, :, :16, :16].detach().cpu().float().numpy()
            self.arrays["pixels_siglip_frame0_crop"] = ps[0, :, :16, :16].float().numpy()

    def on_siglip_chunk(self, *, positions, features, aux, sampled) -> None:
        if not self.arrays_wanted:
            return
        stats = {"features_siglip_l2": host64(features).flatten(1).norm(dim=1).numpy()}
        for i, a in enumerate(aux):
            stats[f"hook_mm_projector_aux_{i}_0_frame_sum"] = host64(a).sum((1, 2)).numpy()
        stats["hook_vision_sampler_0_0_frame_sum"] = host64(sampled).sum(-1).numpy()
        _scatter(self._per_stored, positions, stats)

    # ------------------------------------------- question-dependent stages
    def on_temporal(self, *, result) -> None:
        if not self.arrays_wanted:
            return
        if result.similarity is not None:
            self.arrays["dino_similarity"] = result.similarity.detach().cpu().float().numpy()
            self.arrays["dino_window_sizes"] = np.asarray(result.window_sizes, dtype=np.int64)
        for name, values in self._per_frame.items():
            self.arrays[name] = np.stack([values[p] for p in sorted(values)])
        for name, values in self._per_stored.items():
            self.arrays[name] = np.concatenate([np.atleast_1d(values[p]) for p in result.kept])

    def on_grids(self, *, high, low) -> None:
        if self.arrays_wanted:
            self.arrays["hook_mm_projector_0_frame_sum"] = host64(high).sum((1, 2, 3)).numpy()
            if low is not None:
                self.arrays["hook_mm_projector_1_frame_sum"] = host64(low).sum((1, 2, 3)).numpy()

    def on_selection(self, *, result) -> None:
        if self.arrays_wanted and result.frame_similarity is not None:
            self.arrays["text_frame_similarity"] = result.frame_similarity.detach().cpu().float().numpy()

    def on_stc(self, *, result) -> None:
        if self.arrays_wanted:
            self.arrays["stc_similarity"] = result.similarity.detach().cpu().float().numpy()
            self.arrays["stc_keep_mask"] = result.keep_mask.detach().cpu().numpy().astype(np.uint8)

    def on_embeds(self, *, embeds) -> None:
        e = host64(embeds)
        self.fields["inputs_embeds"] = {
            "shape": list(e.shape),
            "sum": float(e.sum()),
            "abs_sum": float(e.abs().sum()),
            "sq_sum": float((e * e).sum()),
            "first_row": e[0, 0].tolist(),
            "last_row": e[0, -1].tolist(),
        }
        if self.arrays_wanted:
            x = e[0].float().numpy()
            if x.size <= EMBEDS_FULL_LIMIT:
                self.arrays["inputs_embeds"] = x
            else:
                self.arrays["inputs_embeds_head"] = x[:64]
                self.arrays["inputs_embeds_tail"] = x[-64:]
            self.arrays["inputs_embeds_row_sum"] = e[0].sum(1).numpy()
            self.arrays["inputs_embeds_row_l2"] = e[0].norm(dim=1).numpy()

    def on_step0_logits(self, *, logits) -> None:
        x = logits.detach().cpu().float()
        self.fields["logits_step0"] = {
            "size": int(x.numel()),
            "argmax": int(x.argmax()),
            "max": float(x.max()),
            "top5_ids": torch.topk(x, min(5, x.numel())).indices.tolist(),
        }
        self.arrays["logits_step0"] = x.numpy().astype(np.float32)

    def on_answer(self, answer) -> None:
        answer.trace.data.update(self.fields)
        answer.trace.arrays.update(self.arrays)


def _scatter(table: dict[str, dict[int, np.ndarray]], positions: list[int], stats: dict[str, np.ndarray]) -> None:
    for name, values in stats.items():
        column = table.setdefault(name, {})
        for i, p in enumerate(positions):
            column[p] = values[i]
