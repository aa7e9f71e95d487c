"""Running a benchmark: resumable JSONL results, sharding (local processes or Ray), summaries.

Results are written one JSON line per question as soon as it is answered (flushed and
fsynced), so a crash loses nothing finished and a re-run skips what is done; questions
that failed (an error line) are asked again.  The output folder is locked while a run
writes to it and remembers the settings it was made with (see :mod:`.store`).  Questions
are grouped by video (each video is encoded once), groups are spread over workers (see
:mod:`.workers`), and the merged results are sorted back into the dataset's order: a
sharded run writes the same files as a single-process run.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import LongVUConfig
from ..errors import LongVUError
from ..files import atomic_write_text
from ..loading.checkpoint import folder_fingerprint
from ..model.video import Sampling, StreamInfo, VideoClip, count_frames, iter_frames
from ..pipeline.api import GenerationOptions, LongVU
from .answers import parse_choice
from .benchmarks import PRESETS, Item, Preset
from .store import RESULTS, ResultWriter, check_settings, exclusive, read_results, write_results
from .workers import Queue, local_results, one_line, ray_results

__all__ = ["RESULTS", "Evaluator", "ResultWriter", "read_results", "run_benchmark", "summarize"]

# The number each original script reports as the score: eval_mlvu.py prints the mean of its seven
# per-task accuracies (the paper's MLVU figure); the other three pool all questions.
TASK_MEAN_HEADLINE = {"mlvu"}


# ------------------------------------------------------------------ video input
def load_item_video(item: Item, preset: Preset):
    """The frames the original script would feed for ``item``, as a VideoClip."""
    bound = tuple(item.extra["bound"]) if item.extra.get("bound") else None
    return preset_clip(item.video, preset, bound, frames_folder=item.extra.get("kind") == "frame")


def preset_clip(video: str | Path, preset: Preset, bound: tuple[float, float] | None = None, *,
                frames_folder: bool = False):  # fmt: skip
    """The frames ``preset``'s original script samples from ``video`` (within ``bound`` seconds).

    ``frames_folder``: ``video`` is a folder of ``%05d.jpg`` frames at 3 fps (MVBench's rule).
    """

    path = Path(video)
    if frames_folder:
        if not path.is_dir():
            raise LongVUError(f"{path}: no such frame folder")
        # The script counts every entry of the folder; the published folders hold only the JPEGs.
        n = len([p for p in path.iterdir() if p.suffix.lower() == ".jpg"])
        idx = preset.folder_indices(n, bound)
        frames = np.stack([np.asarray(Image.open(path / f"{i:05d}.jpg").convert("RGB")) for i in idx])
        return VideoClip(path=str(path), frames=frames, source_indices=idx, timestamps=[i / preset.folder_fps for i in idx],
                         avg_fps=preset.folder_fps, step=preset.step(preset.folder_fps), num_frames_total=n)  # fmt: skip
    total, fps = count_frames(path)
    wanted = preset.frame_indices(total, fps, bound)
    info = StreamInfo()
    got = list(iter_frames(path, Sampling(fps=fps), info, only=set(wanted)))
    if not got:
        raise LongVUError(f"{path}: no decodable frame")
    return VideoClip(path=str(path), frames=np.stack([f for _, _, f in got]), source_indices=[i for i, _, _ in got],
                     timestamps=[t for _, t, _ in got], avg_fps=fps, step=0, num_frames_total=info.total)  # fmt: skip


# ------------------------------------------------------------------ one worker
class Evaluator:
    """One model answering groups of questions (one video per group)."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", overrides: dict | None = None,
                 max_new_tokens: int = 5, adapter: str | None = None) -> None:  # fmt: skip
        self.lv = LongVU.from_pretrained(model, device=device, dtype=dtype, overrides=overrides, cache=False,
                                         adapter=adapter)  # fmt: skip
        self.max_new_tokens = max_new_tokens
        # what ran, as loaded ("auto" resolved), on every line: the summary names it
        self.ran = {"device": str(self.lv.device), "dtype": str(self.lv.dtype).removeprefix("torch.")}

    def run_group(self, group: list[dict], preset: Preset) -> list[dict]:
        """One result line per question; a failure is an error line (retried by the next run), never a stop."""
        return [dict(line, ran=self.ran) for line in self._run_group(group, preset)]

    def _run_group(self, group: list[dict], preset: Preset) -> list[dict]:
        items = [Item(**g) for g in group]
        try:
            clip = load_item_video(items[0], preset)
            feats = self.lv.features(clip)
            subs = ""
            if items[0].extra.get("subtitle"):
                subs = subtitle_text(items[0].extra["subtitle"], clip.source_indices, round(clip.avg_fps), self.lv)
        except Exception as e:  # this video fails, the run goes on
            return [result_line(it, None, f"video error: {_reason(e)}") for it in items]
        gen = GenerationOptions(max_new_tokens=self.max_new_tokens, greedy=True)
        return [self._answer(feats, subs + it.prompt, it, gen) for it in items]

    def _answer(self, feats, prompt: str, item: Item, gen) -> dict:
        try:
            text = self.lv.ask(feats, prompt, generation=gen).text
        except Exception as e:  # this question fails, the run goes on
            return result_line(item, None, f"generation error: {_reason(e)}")
        return result_line(item, text, None)


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, LongVUError) else one_line(e)


def subtitle_text(srt: str, frame_indices: list[int], fps: int, lv) -> str:
    """VideoMME's subtitle prefix as eval_videomme.py builds it: the line showing at each sampled
    frame, without [Music]/[Applause] and repeats, thinned to about 200 lines past 6000 tokens."""
    # lazy: pysubs2 comes with the eval extra
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


# What a results line must hold to be resumed from (summaries and submissions read these).
RESULT_FIELDS = ("qid", "answer", "pred", "category", "unparseable", "error")


def result_line(item: Item, text: str | None, error: str | None) -> dict:
    pred = parse_choice(text, item.letters) if text is not None else None
    return {
        "qid": item.qid, "benchmark": item.benchmark, "category": item.category, "video": item.video,
        "answer": item.answer, "output": text, "pred": pred,
        "correct": bool(pred is not None and item.answer is not None and pred == item.answer),
        "unparseable": text is not None and pred is None, "error": error,
        **{k: v for k, v in item.extra.items() if k in ("duration", "task_type", "domain")},
    }  # fmt: skip


def error_lines(group: list[dict], error: str) -> list[dict]:
    return [result_line(Item(**g), None, error) for g in group]


# ------------------------------------------------------------------ driver
def group_by_video(items: list[Item]) -> list[list[Item]]:
    groups: OrderedDict[str, list[Item]] = OrderedDict()
    for it in items:
        groups.setdefault(it.video, []).append(it)
    return list(groups.values())


def run_settings(benchmark: str, model: str, device: str, dtype: str, cfg: dict, preset: Preset,
                 subtitles: bool) -> dict[str, Any]:  # fmt: skip
    """Everything that can change an answer: a resumed run must match it (see store.check_settings).
    A local model's ``weights`` fingerprint is part of it, so a model retrained in place starts afresh."""
    local = Path(str(model)).expanduser()
    settings = {
        "benchmark": benchmark, "model": str(local.resolve()) if local.exists() else str(model),
        "weights": folder_fingerprint(local),
        "device": device, "dtype": dtype, "overrides": dict(sorted(cfg.items())), "sample_fps": preset.sample_fps,
        "stride_to": preset.stride_to, "max_frames": preset.max_frames, "max_new_tokens": preset.max_new_tokens,
    }  # fmt: skip
    if benchmark == "videomme":
        settings["subtitles"] = subtitles
    return settings


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
    subtitles: bool = False,
    force: bool = False,
    evaluator: Callable[..., Any] = Evaluator,
    adapter: str | None = None,
) -> dict:
    """Answer every item not already answered in ``out_dir/results.jsonl``, then write the summary.

    ``subtitles`` records whether the VideoMME items carry subtitles (``load_items(...,
    subtitles=True)``).  ``force`` adds to answers made with other settings.  ``evaluator``
    is what each worker builds with the model keywords (tests pass one that fails on purpose).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset = preset or PRESETS[benchmark]
    cfg = dict(preset.overrides)
    cfg.update(LongVUConfig.coerce_overrides(overrides or {}))
    settings = run_settings(benchmark, model, device, dtype, cfg, preset, subtitles)
    kw = {"model": model, "device": device, "dtype": dtype, "overrides": cfg, "max_new_tokens": preset.max_new_tokens}
    if adapter is not None:  # part of the settings a resumed run must match
        kw["adapter"] = settings["adapter"] = str(Path(adapter).resolve())
        settings["adapter_weights"] = folder_fingerprint(adapter)
    with exclusive(out):
        mixed = check_settings(out, settings, force=force)
        done = read_results(out / RESULTS, RESULT_FIELDS)
        todo = [it for it in items if it.qid not in done or done[it.qid].get("error")]
        t0 = time.perf_counter()
        groups = [[asdict(i) for i in g] for g in group_by_video(todo)]
        runs = answer_groups(groups, preset, kw, workers=workers, ray_address=ray_address, ray_gpus=ray_gpus,
                             evaluator=evaluator)  # fmt: skip
        _record(runs, out / RESULTS, done, len(todo), progress)
        ordered = [done[it.qid] for it in items if it.qid in done]
        summary = summarize(benchmark, ordered)
        summary.update(elapsed_s=round(time.perf_counter() - t0, 2), settings=settings, mixed_settings=mixed)
        asked = {it.qid for it in items}  # answers to questions outside this run (--limit) are kept after them
        try:
            _write_outputs(out, benchmark, ordered + [r for q, r in done.items() if q not in asked], summary)
        except OSError as e:
            raise LongVUError(f"{out}: could not write the results ({e.strerror or e}); "
                              f"the answers in {RESULTS} are kept as they were") from None  # fmt: skip
    return summary


def _record(runs: Iterator[list[dict]], path: Path, done: dict, total: int, progress: bool) -> None:
    writer = ResultWriter(path)
    n = 0
    try:
        for lines in runs:
            for rec in lines:
                writer.write(rec)
                done[rec["qid"]] = rec
            n += len(lines)
            if progress:
                print(f"\r{n}/{total} questions", end="", file=sys.stderr, flush=True)
    finally:
        writer.close()
        if progress:
            print(file=sys.stderr)


def _write_outputs(out: Path, benchmark: str, records: list[dict], summary: dict) -> None:
    write_results(out / RESULTS, records)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "summary.md", markdown(benchmark, summary))
    if benchmark == "egoschema":
        write_egoschema_submission(records, out / "submission.csv")


def answer_groups(groups: list[list[dict]], preset: Preset, kw: dict, *, workers: int = 1,
                  ray_address: str | None = None, ray_gpus: float | None = None,
                  evaluator: Callable[..., Any] = Evaluator,
                  give_up: Callable[[list[dict], str], list[dict]] = error_lines) -> Iterator[list[dict]]:  # fmt: skip
    """Result lines for each group, in the order they finish (here, on local workers, or on Ray).

    ``give_up(group, why)`` makes the error lines of a group whose worker died too often.
    """
    if not groups:
        return
    queue = Queue(groups, give_up=give_up)
    if ray_address:
        yield from ray_results(queue, preset, evaluator, kw, workers, ray_address, ray_gpus)
    elif workers > 1:
        yield from local_results(queue, preset, evaluator, kw, workers)
    else:
        ev = evaluator(**kw)
        while (task := queue.take()) is not None:
            yield ev.run_group(task[1], preset)


# ------------------------------------------------------------------ scoring
def summarize(benchmark: str, results: list[dict]) -> dict[str, Any]:
    """Accuracies (%); the headline (``accuracy``) is the number the benchmark's original script reports."""
    scored = [r for r in results if r["answer"] is not None]
    by_cat: dict[str, list] = defaultdict(list)
    for r in scored:
        by_cat[str(r["category"])].append(r)
    task_mean = _mean([_acc(v) for v in by_cat.values()])
    pooled = _acc(scored)
    by_task = benchmark in TASK_MEAN_HEADLINE
    summary: dict[str, Any] = {
        "benchmark": benchmark,
        "questions": len(results),
        "scored": len(scored),
        "headline": "mean of the per-task accuracies" if by_task else "all scored questions pooled",
        "accuracy": _round(task_mean if by_task else pooled),
        "accuracy_pooled": _round(pooled),
        "accuracy_category_mean": _round(task_mean),
        "per_category": {k: {"accuracy": _round(_acc(v)), "n": len(v)} for k, v in sorted(by_cat.items())},
        "unparseable": sum(r["unparseable"] for r in results),
        "unparseable_qids": [r["qid"] for r in results if r["unparseable"]][:100],
        "errors": sum(1 for r in results if r["error"]),
        "error_qids": [r["qid"] for r in results if r["error"]][:100],
        # the devices and dtypes that answered (a run resumed elsewhere, or on several GPUs, has more than one)
        "ran": {k: sorted({r["ran"][k] for r in results if "ran" in r}) for k in ("device", "dtype")},
    }
    if benchmark == "videomme":
        tasks: dict[str, list] = defaultdict(list)
        for r in scored:
            tasks[str(r.get("task_type"))].append(r)
        summary["per_task_type"] = {k: {"accuracy": _round(_acc(v)), "n": len(v)} for k, v in sorted(tasks.items())}
    return summary


def _acc(rs: list[dict]) -> float | None:
    return 100.0 * sum(r["correct"] for r in rs) / len(rs) if rs else None


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _round(x: float | None) -> float | None:
    return round(x, 2) if x is not None else None


def markdown(benchmark: str, s: dict) -> str:
    head = "duration" if benchmark == "videomme" else "category"
    lines = [f"## {benchmark}", "", f"| {head} | questions | accuracy (%) |", "| --- | --- | --- |"]
    for k, v in s["per_category"].items():
        lines.append(f"| {k} | {v['n']} | {v['accuracy']} |")
    if benchmark in TASK_MEAN_HEADLINE:
        lines.append(f"| all questions pooled | {s['scored']} | {s['accuracy_pooled']} |")
        lines.append(f"| **mean of the {len(s['per_category'])} tasks** | {s['scored']} | **{s['accuracy']}** |")
    else:
        lines.append(f"| **overall** | {s['scored']} | **{s['accuracy']}** |")
    source = "" if benchmark == "synthetic" else ", as the original script reports it"  # synth has no original
    lines += ["", f"Headline: {s['headline']}{source}."]
    lines += [f"Unparseable answers (counted wrong): {s['unparseable']}. "
              f"Errors (counted wrong; a re-run retries them): {s['errors']}."]  # fmt: skip
    if "settings" in s:
        lines.append(_settings_line(s["settings"], s.get("ran") or {}))
    return "\n".join(lines) + "\n"


def _settings_line(st: dict, ran: dict) -> str:
    """The model, and the device and precision that ran (what was asked for only where no line says)."""

    def what(key: str) -> str:
        if not ran.get(key):
            return f"{st[key]} (as asked; no answer records what ran)"
        asked = f" (asked: {st[key]})" if ran[key] != [st[key]] else ""
        return ", ".join(ran[key]) + asked

    line = f"Model {st['model']}, device {what('device')}, precision {what('dtype')}"
    if "subtitles" in st:
        line += ", subtitles " + ("on (the 'w/ subs' setting)" if st["subtitles"] else "off (the 'w/o subs' setting)")
    return line + "."


def write_egoschema_submission(results: list[dict], path: Path) -> None:
    """``q_uid,answer`` with the option index; -1 where the answer could not be parsed."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["q_uid", "answer"])
    for r in results:
        w.writerow([r["qid"], ord(r["pred"]) - ord("A") if r["pred"] else -1])
    atomic_write_text(path, buf.getvalue())
