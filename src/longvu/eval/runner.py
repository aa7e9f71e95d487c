"""Running a benchmark: resumable JSONL results, sharding (local processes or Ray), summaries.

Results are written one JSON line per question as soon as it is answered (flushed and
fsynced), so a crash loses nothing finished and a re-run skips what is done.  Questions
are grouped by video (each video is encoded once), groups are spread over workers, and
the merged results are sorted back into the dataset's order: a sharded run writes the
same files as a single-process run.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections import OrderedDict, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import LongVUConfig
from ..errors import LongVUError
from .answers import parse_choice
from .benchmarks import PRESETS, Item, Preset, frames_folder_indices

RESULTS = "results.jsonl"


# ------------------------------------------------------------------ video input
def load_item_video(item: Item, preset: Preset):
    """The frames the original script would feed for ``item``, as a VideoClip."""
    import numpy as np

    from ..video import Sampling, StreamInfo, VideoClip, count_frames, iter_frames

    path = Path(item.video)
    bound = tuple(item.extra["bound"]) if item.extra.get("bound") else None
    if item.extra.get("kind") == "frame":
        from PIL import Image

        if not path.is_dir():
            raise LongVUError(f"{path}: no such frame folder")
        n = len([p for p in path.iterdir() if p.suffix.lower() == ".jpg"])
        idx = frames_folder_indices(n, bound)
        frames = np.stack([np.asarray(Image.open(path / f"{i:05d}.jpg").convert("RGB")) for i in idx])
        return VideoClip(str(path), frames, idx, [i / 3.0 for i in idx], 3.0, 2, n)
    total, fps = count_frames(path)
    wanted = preset.frame_indices(total, fps, bound)
    info = StreamInfo()
    got = list(iter_frames(path, Sampling(fps=fps), info, only=set(wanted)))
    if not got:
        raise LongVUError(f"{path}: no decodable frame")
    frames = np.stack([f for _, _, f in got])
    return VideoClip(str(path), frames, [i for i, _, _ in got], [t for _, t, _ in got], fps, 0, info.total)


# ------------------------------------------------------------------ one worker
class Evaluator:
    """One model answering groups of questions (one video per group)."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", overrides: dict | None = None,
                 max_new_tokens: int = 5) -> None:  # fmt: skip
        from ..pipeline import LongVU

        self.lv = LongVU.from_pretrained(model, device=device, dtype=dtype, overrides=overrides, cache=False)
        self.max_new_tokens = max_new_tokens

    def run_group(self, group: list[dict], preset: Preset) -> list[dict]:
        from ..pipeline import GenerationOptions

        items = [Item(**g) for g in group]
        try:
            clip = load_item_video(items[0], preset)
            feats = self.lv.features(clip)
        except (LongVUError, OSError) as e:
            return [result_line(it, None, f"video error: {e}") for it in items]
        subs = ""
        if items[0].extra.get("subtitle"):
            subs = subtitle_text(items[0].extra["subtitle"], clip.source_indices, round(clip.avg_fps), self.lv)
        gen = GenerationOptions(max_new_tokens=self.max_new_tokens, greedy=True)
        return [result_line(it, self.lv.ask(feats, subs + it.prompt, generation=gen).text, None) for it in items]


def subtitle_text(srt: str, frame_indices: list[int], fps: int, lv) -> str:
    """VideoMME's subtitle prefix as eval_videomme.py builds it: the line showing at each sampled
    frame, without [Music]/[Applause] and repeats, thinned to about 200 lines past 6000 tokens."""
    import pysubs2

    subs = pysubs2.load(srt, encoding="utf-8")
    lines: list[str] = []
    for frame in frame_indices:
        now = pysubs2.make_time(fps=fps, frames=frame)
        text = next((sub.text.replace("\\N", " ") for sub in subs if sub.start < now < sub.end), "")
        if text.strip() and "[Music]" not in text and "[Applause]" not in text and text not in lines:
            if not lines or text not in lines[-1]:
                lines.append(text)
    if len(lv.tokenizer("\n".join(lines)).input_ids) > 6000:
        step = max(1, len(lines) // 200)
        lines = [lines[i] for i in range(0, len(lines), step)]
    return "This video's subtitles are listed below:\n" + "\n".join(lines) + "\n"


def result_line(item: Item, text: str | None, error: str | None) -> dict:
    pred = parse_choice(text, item.letters) if text is not None else None
    return {
        "qid": item.qid, "benchmark": item.benchmark, "category": item.category, "video": item.video,
        "answer": item.answer, "output": text, "pred": pred,
        "correct": bool(pred is not None and item.answer is not None and pred == item.answer),
        "unparseable": text is not None and pred is None, "error": error,
        **{k: v for k, v in item.extra.items() if k in ("duration", "task_type", "domain")},
    }  # fmt: skip


# ------------------------------------------------------------------ files
def read_results(path: Path) -> dict[str, dict]:
    """Finished lines of a results file; a torn last line (a crash mid-write) is dropped."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    good: list[str] = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        done[rec["qid"]] = rec
        good.append(line)
    path.write_text("".join(x + "\n" for x in good))
    return done


class ResultWriter:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "a")  # noqa: SIM115 (closed in close())

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ------------------------------------------------------------------ driver
def group_by_video(items: list[Item]) -> list[list[Item]]:
    groups: OrderedDict[str, list[Item]] = OrderedDict()
    for it in items:
        groups.setdefault(it.video, []).append(it)
    return list(groups.values())


def run_benchmark(
    benchmark: str,
    items: list[Item],
    out_dir: str | Path,
    *,
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    overrides: dict | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    ray_gpus: float | None = None,
    progress: bool = False,
    preset: Preset | None = None,
) -> dict:
    """Answer every item not already in ``out_dir/results.jsonl``, then write the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset = preset or PRESETS[benchmark]
    cfg = dict(preset.overrides)
    cfg.update(LongVUConfig.coerce_overrides(overrides or {}))
    done = read_results(out / RESULTS)
    todo = [it for it in items if it.qid not in done]
    groups = [[asdict(i) for i in g] for g in group_by_video(todo)]
    writer = ResultWriter(out / RESULTS)
    kw = {"model": model, "device": device, "dtype": dtype, "overrides": cfg, "max_new_tokens": preset.max_new_tokens}
    t0 = time.perf_counter()
    n_done = 0
    try:
        for lines in _results(groups, preset, kw, workers, ray_address, ray_gpus):
            for rec in lines:
                writer.write(rec)
                done[rec["qid"]] = rec
            n_done += len(lines)
            if progress:
                print(f"\r{n_done}/{len(todo)} questions", end="", file=sys.stderr, flush=True)
    finally:
        writer.close()
        if progress:
            print(file=sys.stderr)
    ordered = [done[it.qid] for it in items if it.qid in done]
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in ordered))
    summary = summarize(benchmark, ordered)
    summary["elapsed_s"] = round(time.perf_counter() - t0, 2)
    summary["settings"] = {"model": model, "overrides": cfg, "sample_fps": preset.sample_fps,
                           "max_frames": preset.max_frames, "max_new_tokens": preset.max_new_tokens}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(markdown(benchmark, summary))
    if benchmark == "egoschema":
        write_egoschema_submission(ordered, out / "submission.csv")
    return summary


def _results(groups, preset, kw, workers, ray_address, ray_gpus):
    if not groups:
        return
    if ray_address:
        yield from _ray_results(groups, preset, kw, workers, ray_address, ray_gpus)
    elif workers > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        ranks = ctx.Value("i", 0)  # each worker takes the next rank: its GPU is cuda:(rank mod GPUs)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(kw, ranks, workers)) as pool:
            yield from pool.imap_unordered(_pool_run, [(g, preset) for g in groups])
    else:
        ev = Evaluator(**kw)
        for g in groups:
            yield ev.run_group(g, preset)


_WORKER: Evaluator | None = None


def _init_worker(kw: dict, ranks, workers: int) -> None:
    global _WORKER
    from ..devices import pin_worker

    with ranks.get_lock():
        rank, ranks.value = ranks.value, ranks.value + 1
    _WORKER = Evaluator(**{**kw, "device": pin_worker(kw["device"], rank, workers)})


def _pool_run(args: tuple) -> list[dict]:
    group, preset = args
    return _WORKER.run_group(group, preset)


def _ray_results(groups, preset, kw, workers, address, gpus):
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    from ..devices import ray_cpus_per_gpu

    cpus = max(1, int(ray_cpus_per_gpu(ray.nodes()) * gpus)) if gpus else 1  # a GPU actor: its share of the cores
    actor_cls = ray.remote(num_gpus=gpus, num_cpus=cpus)(Evaluator)
    actors = [actor_cls.remote(**kw) for _ in range(max(1, workers))]
    pool = ActorPool(actors)
    yield from pool.map_unordered(lambda a, g: a.run_group.remote(g, preset), groups)
    for a in actors:
        ray.kill(a)


# ------------------------------------------------------------------ scoring
def summarize(benchmark: str, results: list[dict]) -> dict[str, Any]:
    scored = [r for r in results if r["answer"] is not None]

    def acc(rs):  # noqa: E306
        return round(100.0 * sum(r["correct"] for r in rs) / len(rs), 2) if rs else None

    by_cat: dict[str, list] = defaultdict(list)
    for r in scored:
        by_cat[str(r["category"])].append(r)
    summary: dict[str, Any] = {
        "benchmark": benchmark,
        "questions": len(results),
        "scored": len(scored),
        "accuracy": acc(scored),
        "per_category": {k: {"accuracy": acc(v), "n": len(v)} for k, v in sorted(by_cat.items())},
        "unparseable": sum(r["unparseable"] for r in results),
        "unparseable_qids": [r["qid"] for r in results if r["unparseable"]][:100],
        "video_errors": sum(1 for r in results if r["error"]),
    }
    if benchmark == "videomme":
        tasks: dict[str, list] = defaultdict(list)
        for r in scored:
            tasks[str(r.get("task_type"))].append(r)
        summary["per_task_type"] = {k: {"accuracy": acc(v), "n": len(v)} for k, v in sorted(tasks.items())}
    return summary


def markdown(benchmark: str, s: dict) -> str:
    head = "duration" if benchmark == "videomme" else "category"
    lines = [f"## {benchmark}", "", f"| {head} | questions | accuracy (%) |", "| --- | --- | --- |"]
    for k, v in s["per_category"].items():
        lines.append(f"| {k} | {v['n']} | {v['accuracy']} |")
    lines.append(f"| **overall** | {s['scored']} | **{s['accuracy']}** |")
    lines += ["", f"Unparseable answers (counted wrong): {s['unparseable']}. Video errors: {s['video_errors']}."]
    return "\n".join(lines) + "\n"


def write_egoschema_submission(results: list[dict], path: Path) -> None:
    """``q_uid,answer`` with the option index; -1 where the answer could not be parsed."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["q_uid", "answer"])
        for r in results:
            w.writerow([r["qid"], ord(r["pred"]) - ord("A") if r["pred"] else -1])
