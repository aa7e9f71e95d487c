"""V-NIAH: a visual needle in a video haystack (after LongVA's benchmark).

``generate`` builds haystack videos of several lengths from any video (or synthetic
frames) and inserts a *needle frame* - a word drawn in pixels - at several depths, so
the test exercises LongVU's frame reduction itself: a reduction that drops the needle
frame cannot answer.  ``score`` answers each item in one of two modes:

* ``teacher``: teacher-forced exact match as LongVA scores it: the answer's tokens are
  appended to the prompt and the item is right if the model's greedy next-token choice
  equals every answer token;
* ``generate``: the model answers freely; right if the answer word is in its output.

``heatmap`` draws accuracy over (haystack length x needle depth) as a PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..synth import word_frame, write_video

NEEDLES = ["APPLE", "RIVER", "CANDLE", "PLANET", "TIGER", "BRIDGE", "VIOLIN", "GARDEN"]
QUESTION = "One frame of this video shows a single word in large letters. What is that word? Answer with the word only."


def haystack_frames(source: str | None, n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames at 1 fps from ``source`` (looped if short), or synthetic ones."""
    if source:
        from PIL import Image

        from ..video import load_video

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
) -> Path:
    """Write one video per (length, depth) and ``vniah.json``; lengths are seconds at 1 fps."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    h, w = size
    base = haystack_frames(haystack, max(lengths), h, w)
    items = []
    for li, n in enumerate(lengths):
        for di, depth in enumerate(depths):
            word = NEEDLES[(li * len(depths) + di) % len(NEEDLES)]
            pos = int(round(depth * n))
            frames = base[:pos] + [word_frame(word, h, w)] + base[pos:n]
            name = f"len{n:05d}_depth{int(round(depth * 100)):03d}.mp4"
            write_video(out / "videos" / name, frames, crf=12)
            items.append({"id": name[:-4], "video": f"videos/{name}", "length": n, "depth": depth,
                          "needle_index": pos, "question": QUESTION, "answer": word})  # fmt: skip
    manifest = out / "vniah.json"
    manifest.write_text(json.dumps({"haystack": haystack or "synthetic", "items": items}, indent=1))
    return manifest


def score_item(lv, item: dict, root: Path, mode: str = "teacher") -> dict:
    """Answer one V-NIAH item; returns the result line."""
    from ..generation import GenerationOptions

    feats = lv.features(str(root / item["video"]))
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
    return {
        "qid": item["id"], "length": item["length"], "depth": item["depth"], "answer": item["answer"],
        "output": output, "correct": bool(correct), "mode": mode,
        "needle_kept": item["needle_index"] in kept,
    }  # fmt: skip


def heatmap(results: list[dict], path: str | Path, title: str = "V-NIAH") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in results:
        grid[depths.index(r["depth"]), lengths.index(r["length"])] = 1.0 if r["correct"] else 0.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(lengths), 1.2 + 0.5 * len(depths)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
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
              dtype: str = "auto", overrides: dict | None = None, adapter: str | None = None) -> dict:  # fmt: skip
    """Score every item of ``data/vniah.json`` (resumable) and draw the heatmap."""
    from ..errors import LongVUError
    from ..pipeline import LongVU
    from .runner import RESULTS, ResultWriter, read_results

    root = Path(data)
    manifest = root / "vniah.json"
    if not manifest.exists():
        raise LongVUError(f"{root}: no vniah.json (make one with `longvu vniah generate`)")
    items = json.loads(manifest.read_text())["items"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = read_results(out / RESULTS)
    todo = [it for it in items if it["id"] not in done]
    if todo:
        lv = LongVU.from_pretrained(model, device=device, dtype=dtype, overrides=overrides, cache=False,
                                    adapter=adapter)  # fmt: skip
        writer = ResultWriter(out / RESULTS)
        try:
            for it in todo:
                rec = score_item(lv, it, root, mode)
                writer.write(rec)
                done[rec["qid"]] = rec
        finally:
            writer.close()
    ordered = [done[it["id"]] for it in items]
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in ordered))
    summary = {
        "benchmark": "vniah", "mode": mode, "items": len(ordered),
        "accuracy": round(100.0 * sum(r["correct"] for r in ordered) / len(ordered), 2),
        "needle_kept_rate": round(100.0 * sum(r["needle_kept"] for r in ordered) / len(ordered), 2),
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    heatmap(ordered, out / "heatmap.png", f"V-NIAH ({mode}), accuracy {summary['accuracy']}%")
    return summary
