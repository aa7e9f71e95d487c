"""The paper's ablation in miniature: accuracy on ``longvu synth`` videos under a fixed token budget.

    python -m benchmarks.ablation --model CHECKPOINT                  # 30 short + 30 long videos, context 512
    python -m benchmarks.ablation --model CHECKPOINT --adapter ADAPTER --n 10 --context 1024

What it measures: the accuracy of a checkpoint (and ``--adapter``) on two held-out
``longvu synth`` sets, short (0.2-0.4 min) and long (2-4 min) videos, both at 1 fps, one object
(``--cast 1``), the colour / shape / word families, when one compression stage at a time is
switched off or made aggressive.  Every setting runs under the same context
(``tokenizer_model_max_length``, ``--context``, 512 by default: 2 frames at high or 4-5 at low
resolution once the prompt (125-190 tokens with the tiny checkpoint's tokenizer) and the 16
answer tokens are taken), so a stage that
keeps less lets the budget go further, and one that is off leaves the cut to the budget rule.
Each setting changes its own knob only; the other two stay at the checkpoint's values:

============================  ======================  ==============================================
setting                       knob                    value
============================  ======================  ==============================================
all stages on (checkpoint)    (none)                  the checkpoint's values (the "on" of every row)
frame reduction off           ``dino_threshold``      1.01: nothing is dropped (see OFF_THRESHOLD)
frame reduction aggressive    ``dino_threshold``      the checkpoint's minus ``--dino-delta`` (0.83 - 0.15 = 0.68)
STC off                       ``drop_threshold``      1.01: no token is dropped for similarity
STC aggressive                ``drop_threshold``      the checkpoint's minus ``--stc-delta`` (0.8 - 0.3 = 0.5)
text-guided selection off     ``text_guided``         false: as many high-res frames, evenly spaced
============================  ======================  ==============================================

Why 1.01 and not 1.0 for "off": both stages drop what scores ``>= threshold`` (a frame's mean
DINOv2 cosine to its 16-frame window, ``compress/temporal.py``; a token's cosine to the same
token of its 8-frame window's first frame, ``compress/spatial.py``), and identical frames or
tokens score 1.0 give or take float32 rounding (up to ~1.00002 measured), so 1.0 still drops
exact repeats: on a 135-second synth video 1.0 kept 114 of its 135 frames, 1.01 all 135.  ``--set``
on the command line caps thresholds at 1.0; this script changes the config through the Python
API, which does not.  With STC off the budget still holds: the reference then trims the same
number of tokens off the end of every 8-frame window and cuts to the budget (``force_remove``),
which is what "no STC" means under a fixed context.  STC runs only when the frames' base tokens
exceed the budget and text-guided selection did not upgrade any frame (``compose.py``); text-guided
selection matters only when the frames fit at low resolution with room for some, not all, at high
resolution (``compress/selection.py``), so at a small context it bites on short videos (a few
frames), and STC on long ones.  "Aggressive" frame reduction still keeps a frame per 16-frame window.

Per (setting, set) it runs ``longvu eval synthetic`` through its Python API
(:func:`longvu.eval.runner.run_benchmark`, the same prompts, answer parsing and scoring, resumable
results under ``--data-dir``/runs), on views of one loaded model, and videos are encoded
through a feature cache (``--data-dir``/feature-cache), once per frame-reduction threshold.
The videos are made with :func:`longvu.train.synth.generate` (``longvu synth``) in ``--data-dir``,
and reused.  Each answer also records its stage counts (frames kept, high-res frames, visual
tokens), averaged per run.

Output: ``<out>/ablation.json`` (every setting and set: accuracy, n, mean frames and tokens)
and ``<out>/ablation.md``, a table also printed (rows: settings; columns: short / long).
With 30 questions a set an accuracy's standard error is up to 9 points: read big gaps only.

Time: the work is 3 x 2n video encodes (one per frame-reduction threshold; the other settings
read the feature cache) and 6 x 2n answers of at most 5 tokens.  With the tiny test checkpoint
on 2 busy CPU cores, ``--n 3`` took 2 min 40 s (a short video about 7 s for all six settings, a
long one about 45 s), so the default ``--n 30`` takes about 25 minutes; a real checkpoint takes
what its encoder and prefill take.  A re-run resumes where the last one stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KNOBS = ("dino_threshold", "drop_threshold", "text_guided")
CONTEXT = "tokenizer_model_max_length"
# Above any cosine a float32 computation gives (identical inputs score up to ~1.00002), so a
# threshold stage with it drops nothing; 1.0 still drops exact repeats (see the module docstring).
OFF_THRESHOLD = 1.01
SETS = {"short": (101, (0.2, 0.4)), "long": (102, (2.0, 4.0))}  # name: (seed, minutes); held out from seed 0
FAMILIES = ("colour", "shape", "word")
COUNTS = ("frames_sampled", "frames_kept", "high_res_frames", "tokens_after_stc_drop", "visual_tokens",
          "sequence_length", "stc_applied")  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """One row of the ablation.

    Attributes:
        name: folder-safe id (``stc-off``).
        label: the table's row name.
        knob: the config field this setting changes (None for the all-on baseline).
        overrides: every ablated knob and the context, explicitly (what the eval runs with).
    """

    name: str
    label: str
    knob: str | None
    overrides: dict[str, Any]


def aggressive(value: float, delta: float) -> float:
    """A threshold ``delta`` below ``value``, at least 0 (rounded: 0.83 - 0.15 is 0.68, not 0.6799...)."""
    return round(max(0.0, value - delta), 4)


def build_settings(on: dict[str, Any], context: int, dino_delta: float = 0.15, stc_delta: float = 0.3) -> list[Setting]:
    """The ablation's settings: the checkpoint's values ``on`` (``KNOBS``), then one knob changed at a time."""
    base = {**{k: on[k] for k in KNOBS}, CONTEXT: context}
    rows = [
        ("all-on", "all stages on (checkpoint)", None, None),
        ("frames-off", "frame reduction off", "dino_threshold", OFF_THRESHOLD),
        ("frames-aggressive", "frame reduction aggressive", "dino_threshold",
         aggressive(on["dino_threshold"], dino_delta)),
        ("stc-off", "STC off", "drop_threshold", OFF_THRESHOLD),
        ("stc-aggressive", "STC aggressive", "drop_threshold", aggressive(on["drop_threshold"], stc_delta)),
        ("text-guided-off", "text-guided selection off", "text_guided", False),
    ]  # fmt: skip
    return [
        Setting(name, label, knob, {**base, **({knob: value} if knob else {})}) for name, label, knob, value in rows
    ]


SETTING_NAMES = [s.name for s in build_settings(dict.fromkeys(KNOBS, 0.5), 512)]


# ------------------------------------------------------------------ data
def digest(obj: Any, n: int = 8) -> str:
    """A short hex digest of ``obj`` as JSON (folder names that change when what made them changes)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def prepare_set(root: Path, name: str, seed: int, minutes: tuple[float, float], n: int, families: list[str]) -> Path:
    """A ``longvu synth`` folder of ``n`` videos (made, or reused when made with the same settings)."""
    from longvu.train.synth import SynthSettings, generate

    settings = SynthSettings(seed=seed, minutes=tuple(minutes), families=tuple(families), cast=1)
    folder = root / f"{name}-seed{seed}-{minutes[0]:g}-{minutes[1]:g}min-{digest(settings.manifest())}"
    generate(folder, settings, n)
    return folder


# ------------------------------------------------------------------ evaluation
def stage_counts(trace: dict) -> dict[str, Any]:
    """What the stages kept for one answer, from its trace."""
    c = trace.get("counts", {})
    return {
        "frames_sampled": c.get("sampled_frames"),
        "frames_kept": c.get("frames_after_dino"),
        "high_res_frames": len(trace.get("frames", {}).get("high_res", [])),
        "tokens_after_stc_drop": c.get("visual_tokens_after_stc_drop"),  # before the budget's trim and cut
        "visual_tokens": c.get("visual_tokens_final"),
        "sequence_length": c.get("sequence_length"),
        "stc_applied": bool(trace.get("stc", {}).get("applied")),
    }


def view_evaluator(base: Any) -> Callable[..., Any]:
    """An evaluator factory for :func:`run_benchmark`: each setting gets a view of ``base`` (weights loaded once)."""
    from longvu.eval.benchmarks import Item
    from longvu.eval.runner import Evaluator, result_line
    from longvu.eval.workers import one_line
    from longvu.model.video import Sampling
    from longvu.pipeline.api import GenerationOptions

    class ViewEvaluator(Evaluator):
        """``Evaluator`` on a view; videos go through the view's feature cache; lines get the stage counts."""

        def __init__(self, overrides: dict, max_new_tokens: int) -> None:
            self.lv, self.max_new_tokens = base.with_overrides(overrides), max_new_tokens

        def run_group(self, group: list[dict], preset: Any) -> list[dict]:
            items = [Item(**g) for g in group]
            try:  # by path, not a decoded clip, so the cache applies (synth videos: 1 fps, every frame)
                feats = self.lv.features(items[0].video, Sampling(fps=preset.sample_fps, max_frames=preset.max_frames))
            except Exception as e:  # this video fails, the run goes on (as Evaluator.run_group)
                return [result_line(it, None, f"video error: {one_line(e)}") for it in items]
            gen = GenerationOptions(max_new_tokens=self.max_new_tokens, greedy=True)
            return [self.answer(feats, it.prompt, it, gen) for it in items]

        def answer(self, feats: Any, prompt: str, item: Any, gen: Any) -> dict:
            try:
                ans = self.lv.ask(feats, prompt, generation=gen)
            except Exception as e:  # this question fails, the run goes on
                return result_line(item, None, f"generation error: {one_line(e)}")
            return {**result_line(item, ans.text, None), **stage_counts(ans.trace.data)}

    return lambda **kw: ViewEvaluator(kw["overrides"], kw["max_new_tokens"])


def mean_counts(results: Path, qids: set[str]) -> dict[str, float | None]:
    """Per-run means of :func:`stage_counts` over the answered questions ``qids`` (lines without a count skipped)."""
    from longvu.eval.runner import read_results

    lines = [r for q, r in read_results(results).items() if q in qids]
    out: dict[str, float | None] = {}
    for k in COUNTS:
        values = [float(r[k]) for r in lines if r.get(k) is not None]
        out[f"mean_{k}"] = round(sum(values) / len(values), 2) if values else None
    return out


def run_setting(base: Any, setting: Setting, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``longvu eval synthetic --data DATA --out OUT --set ...`` for one setting, on ``base``'s weights."""
    from longvu.eval.runner import RESULTS, run_benchmark
    from longvu.eval.synthetic import load_synthetic

    items = load_synthetic(data)
    t0 = time.perf_counter()
    s = run_benchmark("synthetic", items, out, model=args.model, device=args.device, dtype=args.dtype,
                      overrides=setting.overrides, progress=not args.quiet, evaluator=view_evaluator(base),
                      adapter=args.adapter)  # fmt: skip
    return {"accuracy": s["accuracy"], "n": s["scored"], "errors": s["errors"], "unparseable": s["unparseable"],
            "per_family": s["per_category"], "elapsed_s": round(time.perf_counter() - t0, 2),
            **mean_counts(out / RESULTS, {it.qid for it in items}), "out": str(out)}  # fmt: skip


def load_base(args: argparse.Namespace) -> Any:
    """The checkpoint, loaded once, with a feature cache under ``--data-dir``."""
    from longvu.pipeline.api import LongVU
    from longvu.pipeline.cache import FeatureCache

    cache = FeatureCache(Path(args.data_dir) / "feature-cache")
    return LongVU.from_pretrained(args.model, device=args.device, dtype=args.dtype, cache=cache, adapter=args.adapter)


# ------------------------------------------------------------------ report
def fmt(x: float | None, digits: int = 1) -> str:
    """A table cell: ``x`` to ``digits`` decimals, ``-`` if unknown."""
    return "-" if x is None else f"{x:.{digits}f}"


def table(settings: list[Setting], results: list[dict], sets: list[str]) -> str:
    """Markdown: a row per setting; per set its accuracy (n), then its mean frames kept / visual tokens."""
    by = {(r["setting"], r["set"]): r for r in results}
    head = ["setting", "changed"] + [f"{s} accuracy % (n)" for s in sets]
    head += [f"{s} frames kept / visual tokens" for s in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for st in settings:
        changed = f"{st.knob}={json.dumps(st.overrides[st.knob])}" if st.knob else "-"
        cells = [st.label, changed]
        for s in sets:
            r = by.get((st.name, s))
            cells.append(f"{fmt(r['accuracy'])} ({r['n']})" if r else "-")
        for s in sets:
            r = by.get((st.name, s))
            cells.append(f"{fmt(r['mean_frames_kept'])} / {fmt(r['mean_visual_tokens'], 0)}" if r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict, settings: list[Setting]) -> str:
    """The whole ``ablation.md``: what ran, the table, and how to read it."""
    on = ", ".join(f"{k}={json.dumps(v)}" for k, v in report["checkpoint_values"].items())
    sets = ", ".join(f"{k}: seed {v['seed']}, {v['minutes'][0]:g}-{v['minutes'][1]:g} min, {v['videos']} videos"
                     for k, v in report["sets"].items())  # fmt: skip
    return "\n".join([
        "## Ablation under a fixed token budget (longvu synth)", "",
        f"Model {report['model']}" + (f" + adapter {report['adapter']}" if report["adapter"] else "")
        + f", device {report['device']}, context {report['context']} tokens. Checkpoint values (\"on\"): {on}.",
        f"Sets: {sets}.", "", table(settings, report["results"], list(report["sets"])), "",
        "Each row changes only the knob shown; the others keep the checkpoint's values. Means per question: "
        "frames kept by frame reduction, and visual tokens reaching the LLM (the budget caps them).",
    ]) + "\n"  # fmt: skip


def write_report(out: Path, report: dict, settings: list[Setting]) -> str:
    """Write ``ablation.json`` and ``ablation.md`` atomically; returns the markdown."""
    from longvu.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.json", json.dumps(report, indent=1) + "\n")
    md = markdown(report, settings)
    atomic_write_text(out / "ablation.md", md)
    return md


# ------------------------------------------------------------------ driver
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint folder or hub id (the one to measure)")
    ap.add_argument("--adapter", help="a `longvu train` adapter folder applied on the checkpoint")
    ap.add_argument("--context", type=int, default=512, help="the fixed budget: tokenizer_model_max_length (512)")
    ap.add_argument("--n", type=int, default=30, help="videos (= questions) per set (30)")
    ap.add_argument("--short-seed", type=int, default=SETS["short"][0], help="synth seed of the short set (101)")
    ap.add_argument("--long-seed", type=int, default=SETS["long"][0], help="synth seed of the long set (102)")
    ap.add_argument("--short-minutes", type=float, nargs=2, default=list(SETS["short"][1]), metavar=("MIN", "MAX"))
    ap.add_argument("--long-minutes", type=float, nargs=2, default=list(SETS["long"][1]), metavar=("MIN", "MAX"))
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), help="synth question families")
    ap.add_argument("--dino-delta", type=float, default=0.15, help="aggressive dino_threshold: checkpoint's minus this")
    ap.add_argument("--stc-delta", type=float, default=0.3, help="aggressive drop_threshold: checkpoint's minus this")
    ap.add_argument("--settings", nargs="+", choices=SETTING_NAMES, default=SETTING_NAMES, help="a subset to run")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "longvu-ablation"),
                    help="videos, eval results (resumed) and the feature cache")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where ablation.json/.md go")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    if args.context < 1 or args.n < 1:
        ap.error("--context and --n must be positive")
    return args


def run_key(args: argparse.Namespace) -> str:
    """The runs' folder name: the checkpoint, adapter, device and precision (the setting's folder has the rest)."""
    local = Path(args.model).expanduser()
    model = str(local.resolve()) if local.exists() else args.model
    adapter = str(Path(args.adapter).resolve()) if args.adapter else None
    return f"{Path(model).name}-ctx{args.context}-{digest([model, adapter, args.device, args.dtype])}"


def new_report(args: argparse.Namespace, base: Any, sets: dict[str, Path], settings: list[Setting],
               argv: list[str]) -> dict[str, Any]:  # fmt: skip
    """``ablation.json`` before any result: what is measured, on what, with which settings."""
    import torch

    minutes = {"short": args.short_minutes, "long": args.long_minutes}
    seeds = {"short": args.short_seed, "long": args.long_seed}
    return {
        "benchmark": "ablation", "command": "python -m benchmarks.ablation " + shlex.join(argv),
        "model": args.model, "adapter": args.adapter, "device": str(base.device), "dtype": str(base.dtype),
        "context": args.context, "checkpoint_values": {k: getattr(base.config, k) for k in KNOBS},
        "sets": {k: {"seed": seeds[k], "minutes": minutes[k], "videos": args.n, "families": args.families,
                     "cast": 1, "data": str(p)} for k, p in sets.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "settings": [asdict(s) for s in settings],
        "results": [],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    root, out, t0 = Path(args.data_dir), Path(args.out), time.perf_counter()
    sets = {"short": prepare_set(root, "short", args.short_seed, args.short_minutes, args.n, args.families),
            "long": prepare_set(root, "long", args.long_seed, args.long_minutes, args.n, args.families)}  # fmt: skip
    base = load_base(args)
    on = {k: getattr(base.config, k) for k in KNOBS}
    settings = [s for s in build_settings(on, args.context, args.dino_delta, args.stc_delta) if s.name in args.settings]
    report = new_report(args, base, sets, settings, argv)
    for set_name, data in sets.items():
        for st in settings:
            folder = root / "runs" / run_key(args) / data.name / f"{st.name}-{digest(st.overrides, 6)}"
            r = run_setting(base, st, data, folder, args)
            report["results"].append({"setting": st.name, "set": set_name, "knob": st.knob,
                                      "value": st.overrides.get(st.knob) if st.knob else None, **r})  # fmt: skip
            print(f"{set_name} / {st.name}: {fmt(r['accuracy'])}% of {r['n']}, {fmt(r['mean_frames_kept'])} frames "
                  f"kept, {fmt(r['mean_visual_tokens'], 0)} visual tokens ({r['elapsed_s']:.0f} s)", file=sys.stderr,
                  flush=True)  # fmt: skip
            write_report(out, report, settings)  # after every run: a stopped run leaves what it measured
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(write_report(out, report, settings), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
