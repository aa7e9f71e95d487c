"""The compression trace: what each stage kept, in the ``longvu-parity-trace/1`` schema.

It is a user feature (which frames were kept, which got high resolution, at which
timestamps, how many tokens each stage left) and the parity check against the original
code's golden traces (``compare.py`` in the parity fixtures).  It is built from the
:class:`~longvu.model.compose.Decisions` record, so it costs no tensor copies; the parity
checksums (``inputs_embeds``, ``logits_step0``) and arrays are added only when a
:class:`~longvu.model.observe.ParityObserver` ran.

The parity sections keep the reference's meanings; for example
``selection.high_res_frames`` lists the frames that text-guided selection upgraded, and is
empty when it did not run.  The ``frames`` section says what a user means: which sampled
frames were kept and which of them reached the LLM as high-resolution grids.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes
from ..model.prompt import IMAGE_TOKEN_INDEX

SCHEMA = "longvu-parity-trace/1"


class Trace:
    """Stage decisions as a JSON-ready dict (``.data``) and optional parity arrays (``.arrays``)."""

    def __init__(self, case: str = "") -> None:
        self.data: dict[str, Any] = {"schema": SCHEMA, "case": case}
        self.arrays: dict[str, np.ndarray] = {}

    @classmethod
    def from_decisions(cls, d, feats, cfg, *, dropped_turns: int = 0) -> Trace:
        """The trace of one prompt about ``feats`` (a :class:`~longvu.model.encode.VisualFeatures`)."""
        t = cls()
        t.data["video"] = _video(feats)
        t.data["prompt"] = {"input_ids": list(d.input_ids), "image_token_pos": d.input_ids.index(IMAGE_TOKEN_INDEX),
                            "num_text_tokens": len(d.input_ids) - 1, "dropped_turns": dropped_turns}  # fmt: skip
        t.data["budget"] = _budget(d.budget, cfg)
        t.data["dino"] = _dino(d.temporal, feats, cfg)
        t.data["tokens_per_frame"] = {"high": d.high_tokens, "high_grid": list(d.high_grid), "low": d.low_tokens,
                                      "low_grid": None if d.low_grid is None else list(d.low_grid)}  # fmt: skip
        t.data["selection"] = _selection(d, feats)
        t.data["stc"] = _stc(d, cfg)
        t.data["frames"] = _frames(d, feats)
        t.data["counts"] = {
            "sampled_frames": len(feats),
            "frames_after_dino": len(d.kept),
            "visual_tokens_after_frame_reduction": d.tokens_after_frame_reduction,
            "visual_tokens_after_selection": d.tokens_after_selection,
            "visual_tokens_after_stc_drop": t.data["stc"]["reduced_visual_len"],
            "visual_tokens_after_force_remove": t.data["stc"]["after_force_remove"],
            "visual_tokens_final": d.tokens_final,
            "sequence_length": d.sequence_length,
        }
        t.data["inputs_embeds"] = {"shape": [1, d.sequence_length, cfg.hidden_size]}
        return t

    @classmethod
    def from_text(cls, ids: list[int], cfg, *, dropped_turns: int = 0) -> Trace:
        """The trace of a text-only prompt: no video, no stage ran, no visual tokens."""
        t = cls()
        t.data["video"] = None
        t.data["prompt"] = {"input_ids": list(ids), "image_token_pos": None, "num_text_tokens": len(ids),
                            "dropped_turns": dropped_turns}  # fmt: skip
        t.data["counts"] = {"sampled_frames": 0, "frames_after_dino": 0, "visual_tokens_final": 0,
                            "sequence_length": len(ids)}  # fmt: skip
        t.data["inputs_embeds"] = {"shape": [1, len(ids), cfg.hidden_size]}
        return t

    def record_generation(self, ids: list[int], text: str, stopped_by: str, max_new_tokens: int) -> None:
        self.data["generation"] = {"token_ids": list(ids), "text": text, "stopped_by": stopped_by,
                                   "max_new_tokens": max_new_tokens}  # fmt: skip

    # ---------------------------------------------------------------- output
    def save(self, path: str | Path) -> None:
        """Write the trace as JSON, one top-level section per line, atomically."""
        body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in self.data.items())
        atomic_write_bytes(Path(path), ("{\n" + body + "\n}\n").encode())

    def save_arrays(self, path: str | Path) -> None:

        buf = io.BytesIO()
        np.savez(buf, **self.arrays)
        atomic_write_bytes(Path(path), buf.getvalue())

    def summary(self) -> str:
        """A few human lines: frames and tokens after each stage."""
        if "video" in self.data and self.data["video"] is None:
            return f"text only (no video): sequence {self.data['counts']['sequence_length']} tokens"
        return summary_lines(self.data.get("counts", {}), len(self.data.get("frames", {}).get("high_res", [])))


def summary_lines(c: dict, high: int) -> str:
    """The stage summary from a trace's ``counts`` and the number of high-resolution frames (the server's
    ``longvu`` field has both, so ``longvu ask --server`` prints the same lines)."""
    return "\n".join([
        f"frames: {c.get('sampled_frames')} sampled -> {c.get('frames_after_dino')} after temporal reduction"
        f" ({high} at high resolution)",
        f"visual tokens: {c.get('visual_tokens_after_frame_reduction')} -> {c.get('visual_tokens_after_selection')}"
        f" after selection -> {c.get('visual_tokens_final')} after spatial compression;"
        f" sequence {c.get('sequence_length')} tokens",
    ])  # fmt: skip


def _video(feats) -> dict:
    out = {
        "path": feats.path,
        "num_frames_total": feats.num_frames_total,
        "avg_fps": feats.avg_fps,
        "step": feats.step,
        "sampled_indices": list(feats.source_indices),
        "timestamps": [round(t, 3) for t in feats.timestamps],
        "frame_hw": list(feats.frame_hw),
    }
    if getattr(feats, "covered", None) is not None:  # a live stream: the span the answer saw
        out["covered_s"] = [round(float(t), 3) for t in feats.covered]
    return out


def _budget(b, cfg) -> dict:
    return {
        "tokenizer_model_max_length": cfg.tokenizer_model_max_length,
        "inference_max_length": cfg.inference_max_length,
        "text_len_for_budget": b.text_len,
        "max_frames_dino": b.max_frames_dino,
        "max_visual_len_for_resolution_choice": b.mvl_resolution,
        "max_num_frames_high": b.max_frames_high,
        "max_num_frames_low": b.max_frames_low,
        "max_visual_len": b.max_visual_len,
    }


def _dino(res, feats, cfg) -> dict:
    src = feats.source_indices
    return {
        "reduction_applied": res.path != "none",
        "path": res.path,
        "window_size": cfg.dino_window,
        "threshold": cfg.dino_threshold,
        "num_windows": len(res.window_sizes),
        "kept_indices": list(res.kept),
        "kept_source_indices": [src[i] for i in res.kept],
        "kept_timestamps": [round(feats.timestamps[i], 3) for i in res.kept],
        "num_kept": len(res.kept),
        "num_kept_before_cap": res.num_kept_before_cap,
        "cap400_applied": res.capped,
    }


def _selection(d, feats) -> dict:
    src = feats.source_indices
    high = list(d.high_frames)
    return {
        "input_mix_res": d.mixed,
        "mix_token": d.mix_token,
        "highres_num": d.highres_num,
        "high_res_frames": high,
        "high_res_frames_source_index": [src[d.kept[i]] for i in high],
        "low_res_frames": [i for i in range(len(d.kept)) if i not in set(high)] if d.mixed else [],
    }


def _stc(d, cfg) -> dict:
    base = {"drop_threshold": cfg.drop_threshold, "window_frames": cfg.stc_window}
    if d.stc is None:
        n = d.tokens_after_selection
        return {"applied": False, **base, "chunks": [], "reduced_visual_len": n, "force_remove": 0,
                "after_force_remove": n}  # fmt: skip
    s = d.stc
    return {"applied": True, **base, "chunks": s["chunks"], "reduced_visual_len": s["reduced_len"],
            "force_remove": s["force_remove"], "after_force_remove": s["after_force_remove"]}  # fmt: skip


def _frames(d, feats) -> dict:
    """The user-facing view: sampled positions kept, and those given high-resolution grids."""
    high = [d.kept[i] for i in d.high_res_kept]
    ts = feats.timestamps
    return {"kept": list(d.kept), "kept_timestamps": [round(ts[i], 3) for i in d.kept],
            "high_res": high, "high_res_timestamps": [round(ts[i], 3) for i in high]}  # fmt: skip
