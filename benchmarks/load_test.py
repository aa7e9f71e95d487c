"""Load test of ``longvu serve`` on loopback: N concurrent clients for a bounded time.

    python -m benchmarks.load_test --clients 8 --seconds 30
    python -m benchmarks.load_test --clients 8 --seconds 30 --replicas 0 1 2   # plain, then Ray Serve 1 and 2

Starts ``longvu serve`` (tiny checkpoint, CPU) on a free 127.0.0.1 port, then N client
threads send chat completions about a fixture video (named by path under the allowed
media folder; the feature cache warms on the first request) until the time is up.  Each
client waits for its answer before sending the next request, and every request sent is
accounted for: a 200, a 503 (queue full, with Retry-After) or an error.  Reports p50/p95
latency, throughput and error counts as JSON (``--out``).

``--replicas 0 1 2`` runs ``longvu serve --replicas N`` (a local Ray cluster, one CPU and one
torch thread per replica; 0: the plain server) once per N, one after the other in the same
run, and reports each run and each throughput as a ratio to the 1-replica run's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "parity"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-requests", type=int, default=2000, help="stop after this many requests in all")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--queue-size", type=int, default=4)
    ap.add_argument("--stream", action="store_true", help="use stream: true")
    ap.add_argument("--model", default=str(FIXTURES / "checkpoints" / "tiny-longvu-qwen2"))
    ap.add_argument("--replicas", type=int, nargs="+", help="Ray Serve replica counts to run, in turn (0: no Ray)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/load_test[_ray].json)")
    args = ap.parse_args(argv)
    out = args.out or str(
        ROOT / "benchmarks" / "results" / ("load_test_ray.json" if args.replicas else "load_test.json")
    )
    command = "python -m benchmarks.load_test " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.replicas:
        result = {"command": command, **run_once(args, None)}
    else:
        runs = [{"replicas": n, **run_once(args, n or None)} for n in args.replicas]  # 0: the plain server
        base = next((r for r in runs if r["replicas"] == 1), runs[0])
        ratios = {f"{r['replicas']}/{base['replicas']}": round(r["throughput_rps"] / base["throughput_rps"], 3)
                  for r in runs if base["throughput_rps"]}  # fmt: skip
        result = {"command": command, "runs": runs, "throughput_ratios": ratios, "cpu_count": os.cpu_count()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    runs = result.get("runs", [result])
    return 0 if all(r["lost"] == 0 and r["errors"] == 0 for r in runs) else 1


def run_once(args, replicas: int | None) -> dict:
    """One server (``--replicas`` if given), the clients for ``args.seconds``; the counts and timings."""
    server, url = start_server(args, replicas)
    try:
        sent, records, elapsed = drive(url, args)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return summarize(args, sent, records, elapsed)


def start_server(args, replicas: int | None) -> tuple[subprocess.Popen, str]:
    """``longvu serve`` on a free loopback port, once its /health answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"longvu-load-cache-{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "longvu.cli", "serve", "--model", args.model, "--device", "cpu", "--host", "127.0.0.1",
         "--port", str(port), "--allowed-local-media-path", str(FIXTURES / "videos"), "--queue-size",
         str(args.queue_size), "--served-model-name", "tiny", "--cache-dir", str(cache), "--quiet",
         *(["--replicas", str(replicas)] if replicas else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + (300 if replicas else 120)
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise RuntimeError("the server did not start: " + server.stderr.read().decode()[-2000:])
        time.sleep(0.2)


def drive(url: str, args) -> tuple[int, list[dict], float]:
    """``args.clients`` threads asking in a loop until the time is up: (requests sent, records, seconds)."""
    lock = threading.Lock()
    sent = 0
    records: list[dict] = []
    stop_at = time.monotonic() + args.seconds

    def client(i: int) -> None:
        nonlocal sent
        with httpx.Client(base_url=url, timeout=300) as http:
            k = 0
            while time.monotonic() < stop_at:
                with lock:
                    if sent >= args.max_requests:
                        return
                    sent += 1
                k += 1
                status, dt, retry = one_request(http, args, f"Client {i}, question {k}: what happens?")
                with lock:
                    records.append({"status": status, "latency_s": dt})
                if status == 503:
                    time.sleep(retry / 10)

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent, records, time.perf_counter() - t_start


def one_request(http: httpx.Client, args, question: str) -> tuple[int, float, float]:
    """Status (-1: no answer, -2: a stream cut short), latency, and the Retry-After seconds."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "video3.mp4"}},
                                                  {"type": "text", "text": question}]}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": args.stream,
    }  # fmt: skip
    t0 = time.perf_counter()
    retry = 1.0
    try:
        r = http.post("/v1/chat/completions", json=body)
        status, retry = r.status_code, float(r.headers.get("Retry-After", "1"))
        if status == 200 and args.stream and not r.text.rstrip().endswith("data: [DONE]"):
            status = -2
    except httpx.HTTPError:
        status = -1
    return status, time.perf_counter() - t0, retry


def summarize(args, sent: int, records: list[dict], elapsed: float) -> dict:
    ok = [r["latency_s"] for r in records if r["status"] == 200]
    by_status: dict[str, int] = {}
    for r in records:
        by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
    return {
        "clients": args.clients,
        "seconds": round(elapsed, 2),
        "requests_sent": sent,
        "responses": len(records),
        "lost": sent - len(records),
        "status_counts": by_status,
        "ok": len(ok),
        "throughput_rps": round(len(ok) / elapsed, 3),
        "latency_p50_s": round(percentile(ok, 0.5), 3),
        "latency_p95_s": round(percentile(ok, 0.95), 3),
        "latency_mean_s": round(statistics.fmean(ok), 3) if ok else None,
        "errors": sum(v for k, v in by_status.items() if k not in ("200", "503")),
    }


if __name__ == "__main__":
    sys.exit(main())
