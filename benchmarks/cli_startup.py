"""Where a cached ``longvu ask`` spends its time: imports, model load, features, answer.

``imports`` is torch, transformers and the modeling modules the load pulls in, so ``load``
is reading and placing the weights.  Each run is a fresh Python process (as ``longvu ask`` is) that times its own phases with a
monotonic clock; the video's features are put in the cache first, so the features phase is
a cache read.  Prints the median of each phase over the runs.

    python -m benchmarks.cli_startup [--model DIR] [--video FILE] [--runs 5] [--server]

Defaults: the tiny test checkpoint and parity video, on the CPU.  ``--server`` also times the
same cached question asked as a user would, whole ``longvu ask`` processes: loading the model
here, against ``longvu ask --server URL`` sent to a ``longvu serve`` started for the purpose
(the way to ask repeated questions without paying the imports each time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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


QUESTION = "What happens?"


def wall(cmd: list[str], env: dict) -> float:
    """Whole-process wall time of one command (its output discarded; a failure stops the benchmark)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - t0


def compare_server(model: str, video: str, runs: int, env: dict) -> dict[str, float]:
    """Median whole-process seconds of a cached ``longvu ask``, local and through ``longvu serve``."""
    longvu = [sys.executable, "-m", "longvu.cli"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*longvu, "serve", "--model", model, "--device", "cpu", "--port", str(port), "-q",
                               "--allowed-local-media-path", str(Path(video).resolve().parent)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health").close()
                break
            except OSError:
                time.sleep(0.5)
        local = [*longvu, "ask", video, QUESTION, "--model", model, "--device", "cpu", "--greedy",
                 "--max-new-tokens", "8", "-q", "--no-stream"]  # fmt: skip
        remote = [*longvu, "ask", video, QUESTION, "--server", url, "--greedy", "--max-new-tokens", "8", "-q",
                  "--no-stream"]  # fmt: skip
        wall(local, env), wall(remote, env)  # the feature caches (this process's and the server's) filled
        pairs = [(wall(local, env), wall(remote, env)) for _ in range(runs)]  # alternating, so load hits both
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"local": statistics.median(p[0] for p in pairs), "server": statistics.median(p[1] for p in pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(FIXTURES / "checkpoints" / "tiny-longvu-qwen2"))
    ap.add_argument("--video", default=str(FIXTURES / "videos" / "video1.mp4"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--server", action="store_true", help="also: local `longvu ask` against `ask --server`")
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
    if args.server:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "LONGVU_CACHE_DIR": cache, "TRANSFORMERS_OFFLINE": "1"}
            t = compare_server(args.model, args.video, args.runs, env)
        print(f"cached `longvu ask`, whole process, median of {args.runs} alternating pairs:")
        print(f"  loading the model here  {t['local']:6.2f} s")
        print(f"  --server (longvu serve) {t['server']:6.2f} s  ({t['local'] / t['server']:.1f}x faster)")


if __name__ == "__main__":
    main()
