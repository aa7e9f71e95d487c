"""Where a cached ``longvu ask`` spends its time: imports, model load, features, answer.

``imports`` is torch, transformers and the modeling modules the load pulls in, so ``load``
is reading and placing the weights.  Each run is a fresh Python process (as ``longvu ask`` is) that times its own phases with a
monotonic clock; the video's features are put in the cache first, so the features phase is
a cache read.  Prints the median of each phase over the runs.

    python -m benchmarks.cli_startup [--model DIR] [--video FILE] [--runs 5]

Defaults: the tiny test checkpoint and parity video, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, transformers  # what every model-loading command imports, and the modules loading pulls in
import transformers.models.qwen2.modeling_qwen2, transformers.models.siglip.modeling_siglip
import transformers.models.dinov2.modeling_dinov2
from transformers import AutoTokenizer
from longvu.pipeline import LongVU
from longvu.model.generation import GenerationOptions
t1 = time.perf_counter()
lv = LongVU.from_pretrained(sys.argv[1], device="cpu", dtype="float32")
t2 = time.perf_counter()
feats = lv.features(sys.argv[2])
t3 = time.perf_counter()
lv.ask(feats, "What happens?", generation=GenerationOptions(max_new_tokens=8, greedy=True))
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "features": t3 - t2, "answer": t4 - t3,
                  "from_cache": feats.from_cache}))
"""


def run_once(model: str, video: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, video], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(FIXTURES / "checkpoints" / "tiny-longvu-qwen2"))
    ap.add_argument("--video", default=str(FIXTURES / "videos" / "video1.mp4"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LONGVU_CACHE_DIR": cache, "TRANSFORMERS_OFFLINE": "1"}
        run_once(args.model, args.video, env)  # fills the feature cache (and the OS file cache)
        runs = [run_once(args.model, args.video, env) for _ in range(args.runs)]
    assert all(r["from_cache"] for r in runs)
    phases = ("imports", "load", "features", "answer")
    med = {k: statistics.median(r[k] for r in runs) for k in phases}
    total = sum(med.values())
    print(f"cached ask, median of {len(runs)} fresh processes ({args.model}):")
    for k in phases:
        print(f"  {k:9s} {med[k]:6.2f} s  {100 * med[k] / total:4.0f}%")


if __name__ == "__main__":
    main()
