"""The compression trace: what each stage kept, in the ``longvu-parity-trace/1`` schema.

It is both a user feature (which frames were kept, which got high resolution, at
which timestamps, how many tokens each stage left) and the parity check against the
original code's golden traces (``compare.py`` in the shared parity fixtures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCHEMA = "longvu-parity-trace/1"
EMBEDS_FULL_LIMIT = 300_000  # store inputs_embeds whole up to this many values, else head/tail


class Trace:
    """Collects stage decisions as a JSON-ready dict (``.data``) and optional arrays (``.arrays``)."""

    def __init__(self, case: str = "") -> None:
        self.data: dict[str, Any] = {"schema": SCHEMA, "case": case}
        self.arrays: dict[str, np.ndarray] = {}
        self._sel_tokens = 0

    # ------------------------------------------------------------- recorders
    def record_video(self, clip) -> None:
        self.data["video"] = {
            "path": clip.path,
            "num_frames_total": clip.num_frames_total,
            "avg_fps": clip.avg_fps,
            "step": clip.step,
            "sampled_indices": list(clip.source_indices),
            "timestamps": [round(t, 3) for t in clip.timestamps],
            "frame_hw": list(clip.frame_hw),
        }

    def record_prompt(self, ids: list[int], budget, cfg) -> None:
        pos = ids.index(-200)
        self.data["prompt"] = {"input_ids": list(ids), "image_token_pos": pos, "num_text_tokens": len(ids) - 1}
        self.data["budget"] = {
            "tokenizer_model_max_length": cfg.tokenizer_model_max_length,
            "inference_max_length": cfg.inference_max_length,
            "text_len_for_budget": budget.text_len,
            "max_frames_dino": budget.max_frames_dino,
            "max_visual_len_for_resolution_choice": budget.mvl_resolution,
            "max_num_frames_high": budget.max_frames_high,
            "max_num_frames_low": budget.max_frames_low,
            "max_visual_len": budget.max_visual_len,
        }

    def record_dino(self, res, clip, cfg) -> None:
        src = clip.source_indices
        self.data["dino"] = {
            "reduction_applied": res.path != "none",
            "path": res.path,
            "window_size": cfg.dino_window,
            "threshold": cfg.dino_threshold,
            "num_windows": len(res.window_sizes),
            "kept_indices": list(res.kept),
            "kept_source_indices": [src[i] for i in res.kept],
            "kept_timestamps": [round(clip.timestamps[i], 3) for i in res.kept],
            "num_kept": len(res.kept),
            "num_kept_before_cap": res.num_kept_before_cap,
            "cap400_applied": res.capped,
        }
        self.data.setdefault("counts", {}).update(sampled_frames=len(clip), frames_after_dino=len(res.kept))

    def record_grids(self, high: int, high_grid, low: int | None, low_grid) -> None:
        self.data["tokens_per_frame"] = {
            "high": high,
            "high_grid": list(high_grid),
            "low": low,
            "low_grid": None if low_grid is None else list(low_grid),
        }

    def record_selection(
        self, mixed: bool, sel, kept: list[int], clip, *, visual_len: int, after_selection: int
    ) -> None:
        src = clip.source_indices
        high = list(sel.high_frames) if (mixed and sel is not None) else []
        low = [i for i in range(len(kept)) if i not in set(high)] if mixed else []
        self.data["selection"] = {
            "input_mix_res": mixed,
            "mix_token": bool(mixed and sel is not None and sel.mixed),
            "highres_num": int(sel.highres_num) if (mixed and sel is not None) else 0,
            "high_res_frames": high,
            "high_res_frames_source_index": [src[kept[i]] for i in high],
            "low_res_frames": low,
        }
        self.data["counts"].update(
            visual_tokens_after_frame_reduction=visual_len, visual_tokens_after_selection=after_selection
        )
        self._sel_tokens = after_selection

    def record_stc(self, stc, cfg, final: int) -> None:
        if stc is None:
            n = self._sel_tokens
            self.data["stc"] = {
                "applied": False, "drop_threshold": cfg.drop_threshold, "window_frames": cfg.stc_window,
                "chunks": [], "reduced_visual_len": n, "force_remove": 0, "after_force_remove": n,
            }  # fmt: skip
        else:
            self.data["stc"] = {
                "applied": True, "drop_threshold": cfg.drop_threshold, "window_frames": cfg.stc_window,
                "chunks": stc.chunks, "reduced_visual_len": stc.reduced_len, "force_remove": stc.force_remove,
                "after_force_remove": stc.after_force_remove,
            }  # fmt: skip
        st = self.data["stc"]
        self.data["counts"].update(
            visual_tokens_after_stc_drop=st["reduced_visual_len"],
            visual_tokens_after_force_remove=st["after_force_remove"],
            visual_tokens_final=final,
        )

    def record_embeds(self, embeds: torch.Tensor, arr: dict | None) -> None:
        e = embeds.detach().double().cpu()
        self.data["inputs_embeds"] = {
            "shape": list(e.shape),
            "sum": float(e.sum()),
            "abs_sum": float(e.abs().sum()),
            "sq_sum": float((e * e).sum()),
            "first_row": e[0, 0].tolist(),
            "last_row": e[0, -1].tolist(),
        }
        self.data["counts"]["sequence_length"] = int(e.shape[1])
        if arr is not None:
            x = embeds[0].detach().float().cpu().numpy()
            if x.size <= EMBEDS_FULL_LIMIT:
                arr["inputs_embeds"] = x
            else:
                arr["inputs_embeds_head"] = x[:64]
                arr["inputs_embeds_tail"] = x[-64:]
            arr["inputs_embeds_row_sum"] = e[0].sum(1).numpy()
            arr["inputs_embeds_row_l2"] = e[0].norm(dim=1).numpy()

    def record_generation(self, ids: list[int], text: str, stopped_by: str, logits0: torch.Tensor | None) -> None:
        if logits0 is not None:
            self.data["logits_step0"] = {
                "size": int(logits0.numel()),
                "argmax": int(logits0.argmax()),
                "max": float(logits0.max()),
                "top5_ids": torch.topk(logits0, min(5, logits0.numel())).indices.tolist(),
            }
            self.arrays["logits_step0"] = logits0.numpy().astype(np.float32)
        self.data["generation"] = {"token_ids": list(ids), "text": text, "stopped_by": stopped_by}

    # ---------------------------------------------------------------- output
    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.data, indent=1))

    def save_arrays(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, **self.arrays)

    def summary(self) -> str:
        """A few human lines: frames and tokens after each stage."""
        d = self.data
        c = d.get("counts", {})
        sel = d.get("selection", {})
        lines = [
            f"frames: {c.get('sampled_frames')} sampled -> {c.get('frames_after_dino')} after temporal reduction"
            f" ({len(sel.get('high_res_frames', [])) if sel.get('input_mix_res') else c.get('frames_after_dino')}"
            " at high resolution)",
            f"visual tokens: {c.get('visual_tokens_after_frame_reduction')} -> {c.get('visual_tokens_after_selection')}"
            f" after selection -> {c.get('visual_tokens_final')} after spatial compression;"
            f" sequence {c.get('sequence_length')} tokens",
        ]
        return "\n".join(lines)
