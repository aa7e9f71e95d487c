"""V-NIAH: a visual needle in a video haystack (after LongVA's benchmark).

``generate`` builds haystack videos of several lengths from any video (or synthetic
frames) and inserts a *needle frame* - a word drawn in pixels - at several depths, so
the test exercises LongVU's frame reduction itself: a reduction that drops the needle
frame cannot answer.  ``score`` answers each item in one of two modes:

* ``teacher``: teacher-forced exact match as LongVA scores it: the answer's tokens are
  appended to the prompt and the item is right if the model's greedy next-token choice
  equals every answer token;
* ``generate``: the model answers freely; right if the answer word is in its output.

Every needle word is put in every (length, depth) cell, so a cell's accuracy is not the accident of
which word sat in it; the summary gives each cell's n and Wilson interval, and a per-word breakdown.
``heatmap`` draws accuracy over (haystack length x needle depth) as a PNG, each cell with its k/n.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import LongVUError
from ..files import atomic_write_text
from ..model.generation import GenerationOptions
from ..model.video import Sampling, load_video
from ..train.synth import word_frame, write_video
from .benchmarks import Preset
from .stats import wilson
from .store import RESULTS, ResultWriter, check_settings, exclusive, read_results, write_results

NEEDLES = ["APPLE", "RIVER", "CANDLE", "PLANET", "TIGER", "BRIDGE", "VIOLIN", "GARDEN"]
QUESTION = "One frame of this video shows a single word in large letters. What is that word? Answer with the word only."


def haystack_frames(source: str | None, n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames at 1 fps from ``source`` (looped if short), or synthetic ones."""
    if source:
        # lazy: PIL only on this path (the module imports without it)
        from PIL import Image

        clip = load_video(source)
        base = [np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in clip.frames]
        return [base[i % len(base)] for i in range(n)]
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        c = rng.integers(40, 200, 3)
        f = np.empty((h, w, 3), np.uint8)
        f[:] = c
        x = (i * 11) % (w - 24)
        f[h // 3 : h // 3 + 24, x : x + 24] = 255 - c
        frames.append(f)
    return frames


def generate(
    out_dir: str | Path,
    *,
    lengths: list[int],
    depths: list[float],
    haystack: str | None = None,
    size: tuple[int, int] = (224, 336),
    words: list[str] | None = None,
) -> Path:
    """Write one video per (length, depth, word) and ``vniah.json``; lengths are seconds at 1 fps.

    ``words`` (default all of :data:`NEEDLES`) are the needles: each is put in every cell."""
    words = list(NEEDLES if words is None else words)
    if not words or not all(w.isalpha() and w.isascii() for w in words) or len(set(words)) != len(words):
        raise LongVUError(f"--words takes distinct words of letters A-Z, got {words}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    h, w = size
    base = haystack_frames(haystack, max(lengths), h, w)
    items = []
    for n in lengths:
        for depth in depths:
            pos = int(round(depth * n))
            for word in words:
                frames = base[:pos] + [word_frame(word, h, w)] + base[pos:n]
                name = f"len{n:05d}_depth{int(round(depth * 100)):03d}_{word.lower()}.mp4"
                write_video(out / "videos" / name, frames, crf=12)
                items.append({"id": name[:-4], "video": f"videos/{name}", "length": n, "depth": depth,
                              "needle_index": pos, "question": QUESTION, "answer": word})  # fmt: skip
    manifest = out / "vniah.json"
    manifest.write_text(json.dumps({"haystack": haystack or "synthetic", "items": items}, indent=1))
    return manifest


def score_item(lv, item: dict, root: Path, mode: str = "teacher", sampling=None) -> dict:
    """Answer one V-NIAH item; returns the result line (``sampling``: a :class:`~longvu.model.video.Sampling`)."""

    feats = lv.features(str(root / item["video"]), sampling)
    if mode == "generate":
        answer = lv.ask(feats, item["question"], generation=GenerationOptions(max_new_tokens=8, greedy=True))
        output = answer.text
        correct = item["answer"].lower() in output.lower()
        kept = answer.trace.data["dino"]["kept_source_indices"]
    else:
        conv = lv.conversation()
        conv.add_user(item["question"])
        forced = lv.teacher_forced(feats, conv, item["answer"])
        correct = forced.exact_match
        output = lv.tokenizer.decode(forced.greedy_ids)
        kept = [feats.source_indices[i] for i in forced.decisions.kept]
    return result_line(item, mode, output, bool(correct), item["needle_index"] in kept)


def result_line(item: dict, mode: str, output: str | None, correct: bool, needle_kept: bool,
                error: str | None = None) -> dict:  # fmt: skip
    return {
        "qid": item["id"], "length": item["length"], "depth": item["depth"], "answer": item["answer"],
        "output": output, "correct": correct, "mode": mode, "needle_kept": needle_kept, "error": error,
    }  # fmt: skip


def error_lines(group: list[dict], error: str) -> list[dict]:
    """Result lines for items that could not be answered (counted wrong; a re-run asks them again)."""
    return [result_line(it, it["mode"], None, False, False, error) for it in group]


class VniahEvaluator:
    """One model scoring V-NIAH items, for the benchmark runner's workers (local processes or Ray).

    A group is one item (each has its own video); ``preset`` carries the frame sampling.
    """

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", overrides: dict | None = None,
                 mode: str = "teacher", adapter: str | None = None) -> None:  # fmt: skip
        # lazy: this module imports without torch; the caller's path needs it only here
        from ..pipeline.api import LongVU

        self.lv = LongVU.from_pretrained(model, device=device, dtype=dtype, overrides=overrides, cache=False,
                                         adapter=adapter)  # fmt: skip
        self.mode = mode

    def run_group(self, group: list[dict], preset) -> list[dict]:
        # lazy: this module imports without torch; the caller's path needs it only here
        from .workers import one_line

        sampling = Sampling(fps=preset.sample_fps, max_frames=preset.max_frames)
        out = []
        for it in group:
            try:
                out.append(score_item(self.lv, it, Path(it["root"]), self.mode, sampling))
            except Exception as e:  # this item fails, the run goes on
                out += error_lines([it], one_line(e))
        return out


def heatmap(results: list[dict], path: str | Path, title: str = "V-NIAH") -> None:
    # lazy: matplotlib comes with the bench/eval extra
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib comes with the bench/eval extra
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    right, total = np.zeros((len(depths), len(lengths))), np.zeros((len(depths), len(lengths)))
    for r in results:
        at = depths.index(r["depth"]), lengths.index(r["length"])
        right[at] += bool(r["correct"])
        total[at] += 1
    grid = np.where(total > 0, right / np.maximum(total, 1), np.nan)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(lengths), 1.2 + 0.5 * len(depths)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), n in np.ndenumerate(total):
        if n:
            ax.text(j, i, f"{int(right[i, j])}/{int(n)}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(x) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("haystack length (frames at 1 fps)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_vniah(data: str | Path, out_dir: str | Path, *, model: str, mode: str = "teacher", device: str = "auto",
              dtype: str = "auto", overrides: dict | None = None, limit: int | None = None, sample_fps: float = 1.0,
              max_frames: int | None = None, workers: int = 1, ray_address: str | None = None,
              ray_gpus: float | None = None, force: bool = False, adapter: str | None = None) -> dict:  # fmt: skip
    """Score the items of ``data/vniah.json`` (the first ``limit``) and draw the heatmap.

    Resumable like the other benchmarks: answered items are skipped, failed ones asked again,
    and ``out_dir`` refuses answers made with other settings unless ``force``.  Frames are
    sampled at ``sample_fps`` (at most ``max_frames``, evenly spaced); ``workers`` model
    processes, or Ray actors with ``ray_address``.
    """
    # lazy: this module imports without torch; the caller's path needs it only here
    from .runner import answer_groups, run_settings

    root = Path(data)
    manifest = root / "vniah.json"
    if not manifest.exists():
        raise LongVUError(f"{root}: no vniah.json (make one with `longvu vniah generate`)")
    items = json.loads(manifest.read_text())["items"][:limit]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset = Preset("vniah", sample_fps, max_frames=max_frames, max_new_tokens=8)
    settings = {**run_settings("vniah", model, device, dtype, dict(sorted((overrides or {}).items())), preset, False),
                "mode": mode}  # fmt: skip
    kw = {"model": model, "device": device, "dtype": dtype, "overrides": overrides, "mode": mode}
    if adapter is not None:  # part of the settings a resumed run must match
        kw["adapter"] = settings["adapter"] = str(Path(adapter).resolve())
    with exclusive(out):
        check_settings(out, settings, force=force)
        done = read_results(out / RESULTS, ("qid", "correct", "needle_kept", "error"))
        groups = [
            [{**it, "root": str(root), "mode": mode}]
            for it in items
            if it["id"] not in done or done[it["id"]].get("error")
        ]
        writer = ResultWriter(out / RESULTS)
        try:
            for lines in answer_groups(groups, preset, kw, workers=workers, ray_address=ray_address, ray_gpus=ray_gpus,
                                       evaluator=VniahEvaluator, give_up=error_lines):  # fmt: skip
                for rec in lines:
                    writer.write(rec)
                    done[rec["qid"]] = rec
        finally:
            writer.close()
        ordered = [done[it["id"]] for it in items]
        asked = {it["id"] for it in items}  # answers outside this run (--limit) are kept after them
        write_results(out / RESULTS, ordered + [r for q, r in done.items() if q not in asked])
        return _summarize(ordered, mode, out)


def _summarize(ordered: list[dict], mode: str, out: Path) -> dict:
    """summary.json and heatmap.png for the scored items."""

    n = len(ordered)
    summary = {
        "benchmark": "vniah", "mode": mode, "items": n,
        "accuracy": round(100.0 * sum(r["correct"] for r in ordered) / n, 2) if n else 0.0,
        "accuracy_interval": interval([r["correct"] for r in ordered]),
        "needle_kept_rate": round(100.0 * sum(r["needle_kept"] for r in ordered) / n, 2) if n else 0.0,
        "errors": sum(1 for r in ordered if r.get("error")),
        "cells": breakdown(ordered, lambda r: f"{r['length']}@{r['depth']:g}"),
        "per_word": breakdown(ordered, lambda r: r["answer"]),
        "per_length": breakdown(ordered, lambda r: str(r["length"])),
        "per_depth": breakdown(ordered, lambda r: f"{r['depth']:g}"),
    }  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    heatmap(ordered, out / "heatmap.png", f"V-NIAH ({mode}), accuracy {summary['accuracy']}%")
    return summary


def interval(outcomes: list[bool]) -> list[float]:
    """The 95% Wilson interval of a list of outcomes, in percent."""
    lo, hi = wilson(sum(map(bool, outcomes)), len(outcomes))
    return [round(100 * lo, 1), round(100 * hi, 1)]


def breakdown(results: list[dict], key) -> dict[str, dict]:
    """Per group (``key(result)``): n, right, accuracy (percent) and its Wilson interval."""
    groups: dict[str, list[bool]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(bool(r["correct"]))
    return {k: {"n": len(v), "right": sum(v), "accuracy": round(100.0 * sum(v) / len(v), 1), "interval": interval(v)}
            for k, v in groups.items()}  # fmt: skip
