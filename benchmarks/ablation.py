r"""The paper's ablation (LongVU, Table 4) in miniature, on ``longvu synth`` videos under a fixed context.

    python -m benchmarks.ablation --model CHECKPOINT --context 256 --out benchmarks/results/ablation_ctx256
    python -m benchmarks.ablation --docs            # the docs' table, from the committed reports

Rows, each adding one stage to the row above, all under the same context
(``tokenizer_model_max_length``, ``--context``):

=================================  ==============================================================
row                                what changes against the row above
=================================  ==============================================================
uniform sampling                   the baseline: per video, as many frames as the full method keeps
                                   for it (row 4's frames kept), evenly spaced; no frame reduction,
                                   no text-guided selection, no STC (thresholds 1.01)
\+ frame reduction (DINOv2)        every frame at 1 fps, reduced by DINOv2 similarity
                                   (``dino_threshold`` at the checkpoint's value)
\+ text-guided selection           ``text_guided`` true: the question picks the high-res frames
\+ STC (the full method)           ``drop_threshold`` at the checkpoint's value
=================================  ==============================================================

Why 1.01 and not 1.0 for "off": both stages drop what scores ``>= threshold``, and identical frames or
tokens score 1.0 give or take float32 rounding (up to ~1.00002 measured), so 1.0 still drops exact
repeats.  With STC off the budget still holds: the reference trims tokens off the end of every
8-frame window and cuts to the budget (``force_remove``), which is what "no STC" means under a fixed
context.

A stage can only change an answer where it acts: text-guided selection where some, not all, kept frames
fit at high resolution; STC where it ran.  Each answer records the stage counts from its trace, and a
row whose stage acted on no question of a set is marked "cannot act" there (its answers equal the row
above's by construction) instead of being reported as a result.

The sets: short (0.2-0.4 min) and long (2-4 min) videos, one object (``--cast 1``), each video asked
every family of ``--families`` (default colour, shape, word), ``--n`` videos per seed and two seeds per
set (``--short-seeds``, ``--long-seeds``), so a cell holds n x families x seeds questions.  Beside
every figure: the count, the 95% Wilson interval, and McNemar's exact paired test against the row
above and against uniform sampling (the same questions in both rows).

Output: ``<out>/ablation.json`` (every row and set: the answers' outcomes per question, the stage
counts, the tests) and ``<out>/ablation.md``.  ``--docs`` writes the tables of every committed
report into ``docs/model-trained-here.md`` between its ``ablation`` markers.  A re-run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longvu.config import THRESHOLD_OFF

ROOT = Path(__file__).resolve().parent.parent
KNOBS = ("dino_threshold", "drop_threshold", "text_guided")
CONTEXT = "tokenizer_model_max_length"
OFF_THRESHOLD = THRESHOLD_OFF  # a threshold stage with it drops nothing (longvu.config)
SETS = {"short": ((101, 201), (0.2, 0.4)), "long": ((102, 202), (2.0, 4.0))}  # name: (seeds, minutes)
FAMILIES = ("colour", "shape", "word")
COUNTS = ("frames_sampled", "frames_kept", "high_res_frames", "tokens_after_stc_drop", "visual_tokens",
          "sequence_length", "stc_applied")  # fmt: skip
DOCS = ROOT / "docs" / "model-trained-here.md"
REPORTS = ("ablation_ctx256", "ablation_ctx256_v2")  # under benchmarks/results, the ones --docs tabulates


@dataclass(frozen=True)
class Setting:
    """One row of the ablation.

    Attributes:
        name: folder-safe id (``stc``).
        label: the table's row name.
        knob: what this row changes against the row above (None for the baseline).
        overrides: every ablated knob and the context, explicitly (what the eval runs with).
        uniform: frames are sampled uniformly, as many per video as the full method keeps.
    """

    name: str
    label: str
    knob: str | None
    overrides: dict[str, Any]
    uniform: bool = False


def build_settings(on: dict[str, Any], context: int) -> list[Setting]:
    """The rows, baseline first, each adding one stage at the checkpoint's value ``on`` (``KNOBS``)."""
    off = {"dino_threshold": OFF_THRESHOLD, "drop_threshold": OFF_THRESHOLD, "text_guided": False, CONTEXT: context}
    frames = {**off, "dino_threshold": on["dino_threshold"]}
    text = {**frames, "text_guided": on["text_guided"]}
    full = {**text, "drop_threshold": on["drop_threshold"]}
    return [
        Setting("uniform", "uniform sampling (frames matched)", None, off, uniform=True),
        Setting("frames", "+ frame reduction (DINOv2)", "dino_threshold", frames),
        Setting("text", "+ text-guided selection", "text_guided", text),
        Setting("stc", "+ STC (full method)", "drop_threshold", full),
    ]


SETTING_NAMES = [s.name for s in build_settings(dict.fromkeys(KNOBS, 0.5), 512)]


# ------------------------------------------------------------------ data
def digest(obj: Any, n: int = 8) -> str:
    """A short hex digest of ``obj`` as JSON (folder names that change when what made them changes)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def prepare_set(root: Path, name: str, seed: int, minutes: tuple[float, float], n: int, families: list[str],
                render: str = "default") -> Path:  # fmt: skip
    """A ``longvu synth`` folder of ``n`` one-object videos, each asked every family (made, or reused)."""
    from longvu.train.synth import SynthSettings, generate

    settings = SynthSettings(seed=seed, minutes=tuple(minutes), families=tuple(families), cast=1,
                             questions_per_video=len(families), render=render)  # fmt: skip
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


def acted(knob: str | None, line: dict) -> bool:
    """Whether the stage a row adds acted on this answer (its counts; the baseline always 'acts')."""
    if knob == "text_guided":  # selection chooses only when some, not all, kept frames are high-res
        return 0 < (line.get("high_res_frames") or 0) < (line.get("frames_kept") or 0)
    if knob == "drop_threshold":
        return bool(line.get("stc_applied"))
    if knob == "dino_threshold":
        return (line.get("frames_kept") or 0) < (line.get("frames_sampled") or 0)
    return True


def view_evaluator(base: Any, frames_for: dict[str, int] | None = None) -> Callable[..., Any]:
    """An evaluator factory for :func:`run_benchmark`: each setting gets a view of ``base`` (weights loaded
    once); ``frames_for`` (question id -> frames) samples that many frames of its video, evenly spaced (the
    full method's budget, and so what it keeps, depends on the question's length)."""
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
            gen = GenerationOptions(max_new_tokens=self.max_new_tokens, greedy=True)
            out, feats = [], {}
            for it in (Item(**g) for g in group):
                cap = frames_for.get(it.qid) if frames_for is not None else preset.max_frames
                try:  # by path, not a decoded clip, so the cache applies (synth videos: 1 fps, every frame)
                    if cap not in feats:
                        feats[cap] = self.lv.features(it.video, Sampling(fps=preset.sample_fps, max_frames=cap))
                except Exception as e:  # this video fails, the run goes on (as Evaluator.run_group)
                    out.append(result_line(it, None, f"video error: {one_line(e)}"))
                    continue
                out.append(self.answer(feats[cap], it.prompt, it, gen))
            return out

        def answer(self, feats: Any, prompt: str, item: Any, gen: Any) -> dict:
            try:
                ans = self.lv.ask(feats, prompt, generation=gen)
            except Exception as e:  # this question fails, the run goes on
                return result_line(item, None, f"generation error: {one_line(e)}")
            return {**result_line(item, ans.text, None), **stage_counts(ans.trace.data)}

    return lambda **kw: ViewEvaluator(kw["overrides"], kw["max_new_tokens"])


def run_setting(base: Any, setting: Setting, data: Path, out: Path, args: argparse.Namespace,
                frames_for: dict[str, int] | None = None) -> list[dict]:  # fmt: skip
    """``longvu eval synthetic`` for one row on one set folder; returns its result lines in item order."""
    from longvu.eval.runner import RESULTS, read_results, run_benchmark
    from longvu.eval.synthetic import load_synthetic

    items = load_synthetic(data)
    run_benchmark("synthetic", items, out, model=args.model, device=args.device, dtype=args.dtype,
                  overrides=setting.overrides, progress=not args.quiet, evaluator=view_evaluator(base, frames_for),
                  adapter=args.adapter)  # fmt: skip
    done = read_results(out / RESULTS)
    return [{**done[it.qid], "video": it.video} for it in items]


def load_base(args: argparse.Namespace) -> Any:
    """The checkpoint, loaded once, with a feature cache under ``--data-dir``."""
    from longvu.pipeline.api import LongVU
    from longvu.pipeline.cache import FeatureCache

    cache = FeatureCache(Path(args.data_dir) / "feature-cache")
    return LongVU.from_pretrained(args.model, device=args.device, dtype=args.dtype, cache=cache, adapter=args.adapter)


# ------------------------------------------------------------------ statistics
def cell(lines: list[dict], knob: str | None, above: list[dict] | None, uniform: list[dict] | None) -> dict:
    """One (row, set): counts, the Wilson interval, McNemar against the row above and uniform, per family."""
    from longvu.eval.stats import mcnemar, wilson

    ok = [bool(x.get("correct")) for x in lines]
    right, n = sum(ok), len(ok)
    lo, hi = wilson(right, n)
    out: dict[str, Any] = {
        "n": n, "right": right, "accuracy": round(100.0 * right / n, 1) if n else None,
        "interval": [round(100 * lo, 1), round(100 * hi, 1)],
        "acted": sum(acted(knob, x) for x in lines),
        "per_family": {},
    }  # fmt: skip
    for name, other in (("vs_above", above), ("vs_uniform", uniform)):
        if other is not None:
            out[name] = mcnemar(ok, [bool(x.get("correct")) for x in other])
    for fam in sorted({x.get("category") for x in lines}):
        f = [bool(x.get("correct")) for x in lines if x.get("category") == fam]
        flo, fhi = wilson(sum(f), len(f))
        out["per_family"][fam] = {"n": len(f), "right": sum(f), "interval": [round(100 * flo, 1), round(100 * fhi, 1)]}
    for k in COUNTS:
        values = [float(x[k]) for x in lines if x.get(k) is not None]
        out[f"mean_{k}"] = round(sum(values) / len(values), 2) if values else None
    return out


# ------------------------------------------------------------------ report
def fmt(x: float | None, digits: int = 1) -> str:
    """A table cell: ``x`` to ``digits`` decimals, ``-`` if unknown."""
    return "-" if x is None else f"{x:.{digits}f}"


def p_text(test: dict | None) -> str:
    """``p=0.004 (9:0)``: McNemar's p and the discordant pairs (this row right only : the other right only)."""
    if not test:
        return "-"
    return f"p={test['p']:.2g} ({test['only_a']}:{test['only_b']})"


def figure(c: dict | None) -> str:
    """``k/n = 62.0% [52.2, 70.9]``, or why there is no figure."""
    if c is None:
        return "-"
    if c.get("cannot_act"):
        return "cannot act here (= row above)"
    return f"{c['right']}/{c['n']} = {fmt(c['accuracy'])}% [{fmt(c['interval'][0])}, {fmt(c['interval'][1])}]"


def table(settings: list[Setting], results: list[dict], sets: list[str]) -> str:
    """Markdown: a row per setting; per set the figure, McNemar vs the row above and vs uniform, and counts."""
    by = {(r["setting"], r["set"]): r for r in results}
    head = ["row"]
    for s in sets:
        head += [f"{s}: right/n = % [95% CI]", f"{s}: vs row above", f"{s}: vs uniform", f"{s}: frames / tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for st in settings:
        cells = [st.label]
        for s in sets:
            c = by.get((st.name, s))
            live = c is not None and not c.get("cannot_act")
            cells += [figure(c), p_text(c.get("vs_above")) if live else "-", p_text(c.get("vs_uniform")) if live else "-",
                      f"{fmt(c['mean_frames_kept'])} / {fmt(c['mean_visual_tokens'], 0)}" if c else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_table(settings: list[Setting], results: list[dict], sets: list[str], families: list[str]) -> str:
    """Markdown: per row, each family's right/n and Wilson interval on each set."""
    by = {(r["setting"], r["set"]): r for r in results}
    head = ["row"] + [f"{s}: {f}" for s in sets for f in families]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for st in settings:
        cells = [st.label]
        for s in sets:
            for f in families:
                c = by.get((st.name, s))
                x = c["per_family"].get(f) if c and not c.get("cannot_act") else None
                cells.append(
                    f"{x['right']}/{x['n']} [{fmt(x['interval'][0], 0)}, {fmt(x['interval'][1], 0)}]" if x else "-"
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict, settings: list[Setting]) -> str:
    """The whole ``ablation.md``: what ran, the tables, and how to read them."""
    on = ", ".join(f"{k}={json.dumps(v)}" for k, v in report["checkpoint_values"].items())
    sets = "; ".join(f"{k}: seeds {', '.join(map(str, v['seeds']))}, {v['minutes'][0]:g}-{v['minutes'][1]:g} min, "
                     f"{v['videos']} videos a seed, families {', '.join(v['families'])}, word needles "
                     f"`--render {v.get('render', 'default')}`"
                     for k, v in report["sets"].items())  # fmt: skip
    names = list(report["sets"])
    return "\n".join([
        f"### Context {report['context']} tokens: {Path(report['model']).name}", "",
        f"Model {report['model']}" + (f" + adapter {report['adapter']}" if report["adapter"] else "")
        + f", device {report['device']}. Checkpoint values: {on}. Sets: {sets}. Command: `{report['command']}`.", "",
        table(settings, report["results"], names), "",
        "Per family (right/n [95% Wilson interval]):", "",
        family_table(settings, report["results"], names, report["sets"][names[0]]["families"]), "",
        "Each row adds one stage to the row above. The uniform row samples, per video, as many frames as the full "
        "method keeps for it, evenly spaced. p: McNemar's exact paired test on the same questions; (a:b) counts the "
        "questions only this row got right : only the other row got right. \"cannot act\": the stage did not act on "
        "any question of the set (its answers equal the row above's by construction).",
    ]) + "\n"  # fmt: skip


def write_report(out: Path, report: dict, settings: list[Setting]) -> str:
    """Write ``ablation.json`` and ``ablation.md`` atomically; returns the markdown."""
    from longvu.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.json", json.dumps(report, indent=1) + "\n")
    md = markdown(report, settings)
    atomic_write_text(out / "ablation.md", md)
    return md


def write_docs(results_dir: Path = ROOT / "benchmarks" / "results", docs: Path = DOCS) -> str:
    """Put every committed report's tables (``REPORTS``) between the ``ablation`` markers of ``docs``."""
    from longvu.files import atomic_write_text

    parts = []
    for name in REPORTS:
        path = results_dir / name / "ablation.json"
        if path.exists():
            report = json.loads(path.read_text())
            if report.get("format") == "ablation/2":
                parts.append(markdown(report, [Setting(**s) for s in report["settings"]]))
    block = "<!-- ablation:start (generated by python -m benchmarks.ablation --docs; do not edit) -->\n"
    block += "\n".join(parts) + "<!-- ablation:end -->"
    text = docs.read_text()
    new, found = re.subn(r"<!-- ablation:start.*?<!-- ablation:end -->", lambda _: block, text, flags=re.S)
    if not found:
        raise SystemExit(f"{docs}: no <!-- ablation:start --> ... <!-- ablation:end --> markers")
    atomic_write_text(docs, new)
    return block


# ------------------------------------------------------------------ driver
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint folder or hub id (the one to measure)")
    ap.add_argument("--adapter", help="a `longvu train` adapter folder applied on the checkpoint")
    ap.add_argument("--context", type=int, default=256, help="the fixed budget: tokenizer_model_max_length (256)")
    ap.add_argument(
        "--n", type=int, default=34, help="videos per seed and set (34: 2 seeds x 3 families = 204 questions)"
    )
    ap.add_argument("--short-seeds", type=int, nargs="+", default=list(SETS["short"][0]), help="synth seeds (101 201)")
    ap.add_argument("--long-seeds", type=int, nargs="+", default=list(SETS["long"][0]), help="synth seeds (102 202)")
    ap.add_argument("--short-minutes", type=float, nargs=2, default=list(SETS["short"][1]), metavar=("MIN", "MAX"))
    ap.add_argument("--long-minutes", type=float, nargs=2, default=list(SETS["long"][1]), metavar=("MIN", "MAX"))
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), help="synth question families (each video: all)")
    ap.add_argument("--render", default="default", choices=["default", "heldout", "plain"],
                    help="the word needles' style set (longvu synth --render; default: default)")  # fmt: skip
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "longvu-ablation"),
                    help="videos, eval results (resumed) and the feature cache")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablation_ctx256"),
                    help="where ablation.json/.md go")  # fmt: skip
    ap.add_argument("--docs", action="store_true", help="only write the committed reports' tables into the docs")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    if not args.docs and not args.model:
        ap.error("--model is required (unless --docs)")
    if args.context < 1 or args.n < 1:
        ap.error("--context and --n must be positive")
    return args


def run_key(args: argparse.Namespace) -> str:
    """The runs' folder name: the checkpoint (its path and, for a local folder, its weights, so that a model
    retrained in place is not answered from the old one's results), adapter, device and precision (the
    setting's folder has the rest)."""
    from longvu.loading.checkpoint import folder_fingerprint

    local = Path(args.model).expanduser()
    model = str(local.resolve()) if local.exists() else args.model
    weights = folder_fingerprint(local)
    adapter = str(Path(args.adapter).resolve()) if args.adapter else None
    return f"{Path(model).name}-ctx{args.context}-{digest([model, weights, adapter, args.device, args.dtype])}"


def new_report(args: argparse.Namespace, base: Any, settings: list[Setting], argv: list[str]) -> dict[str, Any]:
    """``ablation.json`` before any result: what is measured, on what, with which settings."""
    import torch

    sets = {"short": (args.short_seeds, args.short_minutes), "long": (args.long_seeds, args.long_minutes)}
    return {
        "format": "ablation/2", "benchmark": "ablation", "command": "python -m benchmarks.ablation " + shlex.join(argv),
        "model": args.model, "adapter": args.adapter, "device": str(base.device), "dtype": str(base.dtype),
        "context": args.context, "checkpoint_values": {k: getattr(base.config, k) for k in KNOBS},
        "sets": {k: {"seeds": seeds, "minutes": minutes, "videos": args.n, "families": args.families, "cast": 1,
                     "render": args.render}
                 for k, (seeds, minutes) in sets.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "settings": [asdict(s) for s in settings],
        "results": [],
    }  # fmt: skip


def run_set(base: Any, settings: list[Setting], folders: list[Path], args: argparse.Namespace) -> dict[str, list]:
    """Every row on a set's folders (one per seed): the full method first, as it fixes the uniform row's frames."""
    runs = Path(args.data_dir) / "runs" / run_key(args)
    order = [settings[-1], *settings[:-1]]
    lines: dict[str, list] = {}
    for st in order:
        lines[st.name] = []
        for data in folders:
            frames_for = None
            if st.uniform:
                full = [x for x in lines[settings[-1].name] if x["video"].startswith(str(data))]
                frames_for = {x["qid"]: int(x["frames_kept"] or 1) for x in full}
            tag = digest([st.overrides, sorted((frames_for or {}).items())], 6)
            t0 = time.perf_counter()
            got = run_setting(base, st, data, runs / data.name / f"{st.name}-{tag}", args, frames_for)
            lines[st.name] += got
            right = sum(bool(x.get("correct")) for x in got)
            print(f"{data.name} / {st.name}: {right}/{len(got)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.docs:
        print(write_docs())
        return 0
    root, out, t0 = Path(args.data_dir), Path(args.out), time.perf_counter()
    base = load_base(args)
    settings = build_settings({k: getattr(base.config, k) for k in KNOBS}, args.context)
    report = new_report(args, base, settings, argv)
    for set_name, spec in report["sets"].items():
        folders = [prepare_set(root, set_name, seed, spec["minutes"], args.n, args.families, args.render)
                   for seed in spec["seeds"]]  # fmt: skip
        lines = run_set(base, settings, folders, args)
        for i, st in enumerate(settings):
            above = lines[settings[i - 1].name] if i else None
            c = cell(lines[st.name], st.knob, above, lines[settings[0].name] if i else None)
            c["cannot_act"] = st.knob is not None and c["acted"] == 0
            report["results"].append({"setting": st.name, "set": set_name, "knob": st.knob, **c,
                                      "outcomes": {x["qid"]: bool(x.get("correct")) for x in lines[st.name]}})  # fmt: skip
        write_report(out, report, settings)  # after every set: a stopped run leaves what it measured
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(write_report(out, report, settings), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
