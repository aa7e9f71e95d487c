"""Memory benchmark: measured peak RSS of ``longvu ask`` next to ``longvu plan``'s prediction, and the
quality drift of each quantization.

    python -m benchmarks.memory                      # Qwen2-7B widths, 2 LLM + 2 vision layers, 2-minute video
    python -m benchmarks.memory --configs float32 int8-float32   # a subset
    python -m benchmarks.memory --report                         # the table again, from what was measured

Every finished measurement is appended to ``<work>/runs.jsonl`` and not repeated (``--redo``
measures again), so an interrupted run resumes and several can run side by side.

It builds (once, under ``out/``) a real-width random checkpoint with reduced depth
(``scripts/make_random_checkpoint.py``) and a synthetic video, then for each configuration
(dtype, ``--quantize``) runs, on CPU:

* ``longvu plan --json``: the predicted peak (before anything is loaded);
* ``longvu ask`` in a fresh process, peak RSS from the OS (``wait4``'s ``ru_maxrss``), with
  a fresh feature cache (the default behaviour of ``ask``: encode, store, answer);
* the drift of each quantization against the unquantized model of the same compute dtype,
  on the same inputs (the video's cached features, the same prompt): agreement of the greedy
  tokens and the cosine of the step-0 logits (one child process per dtype).

Results go to ``<out>/memory.json`` and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What happens in this video?"
CONFIGS = {
    "float32": ("float32", None),
    "bfloat16": ("bfloat16", None),
    "int8-float32": ("float32", "int8"),
    "int8-bfloat16": ("bfloat16", "int8"),
}


def run_rss(cmd: list[str]) -> dict:
    """Run ``cmd``; wall time and peak RSS (bytes) from ``wait4``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        o, e = out.read().decode(), err.read().decode()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({code}): {e[-1500:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_bytes": usage.ru_maxrss * 1024, "stdout": o}


def ensure_inputs(args) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_random_checkpoint import make_checkpoint

    from benchmarks.long_video import make_video

    ckpt = args.work / f"{args.like}-{args.llm_layers}x{args.vision_layers}"
    if not (ckpt / "RANDOM_CHECKPOINT.json").is_file():
        make_checkpoint(args.like, ckpt, llm_layers=args.llm_layers, vision_layers=args.vision_layers)
    video = args.work / f"video-{args.minutes:g}min.mp4"
    if not video.is_file():
        make_video(video, args.minutes)
    return ckpt, video


def linear_weight_bytes(ckpt: Path, dtype: str) -> int:
    """Bytes of the LLM's quantizable matrices (every layer's linear weights and the head) in ``dtype``."""
    from longvu.loading.plan import DTYPE_BYTES, llm_param_counts, load_shapes

    n = llm_param_counts(load_shapes(str(ckpt)))
    return (n["linear"] + n["head"]) * DTYPE_BYTES[dtype]


def _options(name: str, ckpt: Path) -> list[str]:
    dtype, quant = CONFIGS[name]
    return ["--model", str(ckpt), "--device", "cpu", "--dtype", dtype] + (["--quantize", quant] if quant else [])


def predict(name: str, ckpt: Path, args) -> dict:
    """``longvu plan --json``'s CPU peak for a configuration (the planner as it is now)."""
    planned = run_rss([sys.executable, "-m", "longvu.cli", "plan", *_options(name, ckpt), "--minutes",
                       str(args.minutes), "--frame-size", "640x360", "--max-new-tokens", str(args.tokens), "--json"])  # fmt: skip
    p = json.loads(planned["stdout"])
    return {
        "predicted_bytes": p["peak_bytes"]["cpu"], "predicted_stage": p["peak_stage"]["cpu"],
        "predicted_stages_cpu": {k: sum(v["cpu"].values()) for k, v in p["stages"].items()},
    }  # fmt: skip


def measure(name: str, ckpt: Path, video: Path, args) -> dict:
    dtype, quant = CONFIGS[name]
    py = [sys.executable, "-m", "longvu.cli"]
    opts = _options(name, ckpt)
    cache = args.work / "cache" / name
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    ask = run_rss(py + ["ask", str(video), QUESTION, *opts, "--greedy", "--max-new-tokens", str(args.tokens),
                        "--cache-dir", str(cache), "--no-stream", "--quiet"])  # fmt: skip
    return {"config": name, "dtype": dtype, "quantize": quant, "wall_s": ask["wall_s"],
            "peak_rss_bytes": ask["peak_rss_bytes"]}  # fmt: skip


def drift_child(ckpt: str, video: str, cache_dir: str, dtype: str, tokens: int) -> None:
    """Unquantized then int8, same cached features and prompt: token agreement and step-0 logits cosine."""
    import torch

    from longvu import GenerationOptions, LongVU

    torch.manual_seed(0)
    out = {}
    for quant in (None, "int8"):
        lv = LongVU.from_pretrained(ckpt, device="cpu", dtype=dtype, cache=cache_dir, quantize=quant)
        feats = lv.features(video)
        ans = lv.ask(feats, QUESTION, generation=GenerationOptions(max_new_tokens=tokens, greedy=True), arrays=True)
        out[quant or "none"] = (ans.token_ids, torch.from_numpy(ans.arrays["logits_step0"]).double())
        del lv
    (ids0, l0), (ids1, l1) = out["none"], out["int8"]
    n = min(len(ids0), len(ids1))
    agree = sum(a == b for a, b in zip(ids0[:n], ids1[:n])) / max(1, max(len(ids0), len(ids1)))
    cos = torch.nn.functional.cosine_similarity(l0, l1, dim=0).item()
    print(json.dumps({"dtype": dtype, "token_agreement": round(agree, 4), "tokens": [ids0, ids1],
                      "logits_cosine": round(cos, 6), "top1_step0_same": int(l0.argmax()) == int(l1.argmax())}))  # fmt: skip


def table(rows: list[dict], drift: dict, lin: dict) -> str:
    gib = 1024**3
    lines = [
        "| config | measured peak RSS | `longvu plan` | error | peak stage (plan) | drift vs unquantized |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d = drift.get(r["dtype"]) if r["quantize"] else None
        dtext = f"tokens {d['token_agreement']:.0%}, step-0 logits cosine {d['logits_cosine']:.4f}" if d else "-"
        lines.append(
            f"| {r['config']} | {r['peak_rss_bytes'] / gib:.2f} GiB | {r['predicted_bytes'] / gib:.2f} GiB | "
            f"{r['error']:+.1%} | {r['predicted_stage']} | {dtext} |"
        )
    by = {r["config"]: r for r in rows}
    lines.append("")
    for dtype, b in lin.items():
        base, q = by.get(dtype), by.get(f"int8-{dtype}")
        if base and q:
            saved = base["peak_rss_bytes"] - q["peak_rss_bytes"]
            verb = "lowers" if saved >= 0 else "raises"
            lines.append(f"- `--quantize int8` with {dtype} {verb} the measured peak by {abs(saved) / gib:.2f} GiB, "
                         f"{abs(saved) / b:.0%} of the LLM's linear-weight bytes ({b / gib:.2f} GiB).")  # fmt: skip
    return "\n".join(lines)


def _key(args, ckpt: Path) -> dict:
    return {"checkpoint": ckpt.name, "minutes": args.minutes, "tokens": args.tokens}


def _load_log(log: Path, key: dict) -> tuple[dict, dict]:
    """Finished runs and drifts of this setup from ``runs.jsonl`` (the last of each wins)."""
    runs, drift = {}, {}
    if log.is_file():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("key") == key:
                (runs if rec["kind"] == "run" else drift)[rec["name"]] = rec["result"]
    return runs, drift


def _append(log: Path, key: dict, kind: str, name: str, result: dict) -> None:
    with log.open("a") as f:
        f.write(json.dumps({"key": key, "kind": kind, "name": name, "result": result}) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--like", default="qwen2-7b", choices=["qwen2-7b", "llama3.2-3b"])
    ap.add_argument("--llm-layers", type=int, default=2)
    ap.add_argument("--vision-layers", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, default=8, help="tokens generated per answer")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--no-drift", action="store_true")
    ap.add_argument("--redo", action="store_true", help="measure again what runs.jsonl already has")
    ap.add_argument("--report", action="store_true", help="only write the report from runs.jsonl")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "memory-bench", help="checkpoints, videos, caches")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument(
        "--child-drift", nargs=5, metavar=("CKPT", "VIDEO", "CACHE", "DTYPE", "TOKENS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child_drift:
        c, v, cache, dtype, tokens = args.child_drift
        drift_child(c, v, cache, dtype, int(tokens))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, video = ensure_inputs(args)
    log, key = args.work / "runs.jsonl", _key(args, ckpt)
    runs, drift = _load_log(log, key)
    for name in [] if args.report else args.configs:
        if name not in runs or args.redo:
            runs[name] = measure(name, ckpt, video, args)
            _append(log, key, "run", name, runs[name])
            print(json.dumps(runs[name]), file=sys.stderr, flush=True)
        dtype, quant = CONFIGS[name]
        if quant and not args.no_drift and (dtype not in drift or args.redo):
            cache = args.work / "cache" / name
            d = run_rss([sys.executable, "-m", "benchmarks.memory", "--child-drift", str(ckpt), str(video),
                         str(cache), dtype, str(args.tokens)])  # fmt: skip
            drift[dtype] = json.loads(d["stdout"].strip().splitlines()[-1])
            _append(log, key, "drift", dtype, drift[dtype])
            print(json.dumps(drift[dtype]), file=sys.stderr, flush=True)
    rows = []
    for name in [n for n in CONFIGS if n in runs]:
        row = {**runs[name], **predict(name, ckpt, args)}  # predictions by the current planner
        row["error"] = round(row["predicted_bytes"] / row["peak_rss_bytes"] - 1, 4)
        rows.append(row)
    lin = {d: linear_weight_bytes(ckpt, d) for d in sorted({r["dtype"] for r in rows})}
    result = {**key, "like": args.like, "llm_layers": args.llm_layers, "vision_layers": args.vision_layers,
              "llm_linear_weight_bytes": lin, "runs": rows, "drift": drift, "cpus": os.cpu_count()}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "memory.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out / "memory.json")
    print(table(rows, drift, lin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
