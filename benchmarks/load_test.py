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

``--kill-replica-after S`` (runs with 2 or more replicas) kills one model replica S seconds in,
with SIGKILL, as a crash would: the replica that gave the latest answer (each answer names its
replica as ``host:pid``; the server runs on this machine).  The run's ``failover`` section
counts the requests sent, answered, answered after a retry on another replica, failed (by
status and error code) and lost (no answer), and how long until throughput recovered and
until Ray Serve's replacement replica answered::

    python -m benchmarks.load_test --clients 4 --seconds 20 --replicas 2 --kill-replica-after 8
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    ap.add_argument("--kill-replica-after", type=float, metavar="S",
                    help="kill one model replica S seconds into each run with 2+ replicas (a failover test)")  # fmt: skip
    ap.add_argument("--out", default=None,
                    help="results JSON (default benchmarks/results/load_test[_ray|_failover].json)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.kill_replica_after is not None and not any(n >= 2 for n in args.replicas or []):
        ap.error("--kill-replica-after needs --replicas with 2 or more (one must survive)")
    name = "load_test_ray" if args.replicas else "load_test"
    name = "load_test_failover" if args.kill_replica_after is not None else name
    out = args.out or str(ROOT / "benchmarks" / "results" / f"{name}.json")
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
    kill_after = args.kill_replica_after if replicas and replicas >= 2 else None
    try:
        sent, records, elapsed, kill = drive(url, args, kill_after)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    result = summarize(args, sent, records, elapsed)
    if kill_after is not None:
        result["failover"] = failover(sent, records, kill)
    return result


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


def drive(url: str, args, kill_after: float | None = None) -> tuple[int, list[dict], float, dict]:
    """``args.clients`` threads asking in a loop until the time is up (a replica killed ``kill_after``
    seconds in): (requests sent, records, seconds, what was killed when)."""
    lock = threading.Lock()
    sent = 0
    records: list[dict] = []
    kill: dict = {}
    t0 = time.monotonic()
    stop_at = t0 + args.seconds

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
                rec = one_request(http, args, f"Client {i}, question {k}: what happens?")
                rec["t_done"] = time.monotonic() - t0
                with lock:
                    records.append(rec)
                if rec["status"] == 503:
                    time.sleep(rec["retry_after"] / 10)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    if kill_after is not None:
        threads.append(threading.Thread(target=kill_replica, args=(records, lock, t0, kill_after, kill)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent, records, time.monotonic() - t0, kill


def kill_replica(records: list[dict], lock: threading.Lock, t0: float, after: float, kill: dict) -> None:
    """At ``after`` seconds, SIGKILL the replica process that gave the latest answer (``host:pid``)."""
    time.sleep(max(0.0, t0 + after - time.monotonic()))
    with lock:
        named = [r for r in records if r.get("replica")]
    if not named:  # a streamed answer does not name its replica: the failover test sends plain requests
        kill["error"] = f"no answer named its replica in the first {after:g}s (not with --stream): nothing killed"
        return
    host, pid = named[-1]["replica"].rsplit(":", 1)
    if host != os.uname().nodename:
        kill["error"] = f"the replica runs on {host}, not on this machine: nothing killed"
        return
    os.kill(int(pid), signal.SIGKILL)
    kill.update(replica=named[-1]["replica"], at_s=round(time.monotonic() - t0, 3))


def one_request(http: httpx.Client, args, question: str) -> dict:
    """A record: status (-1: no answer, -2: a stream cut short), latency, Retry-After seconds, the error
    code, and the replica that answered and how many replicas failed the job before it (Ray Serve)."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "video3.mp4"}},
                                                  {"type": "text", "text": question}]}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": args.stream,
    }  # fmt: skip
    t0 = time.perf_counter()
    try:
        r = http.post("/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return {"status": -1, "retry_after": 1.0, "latency_s": time.perf_counter() - t0}
    rec = {"status": r.status_code, "retry_after": float(r.headers.get("Retry-After", "1")),
           "latency_s": time.perf_counter() - t0}  # fmt: skip
    if r.status_code == 200 and args.stream:
        rec["status"] = 200 if r.text.rstrip().endswith("data: [DONE]") else -2
        return rec
    try:
        data = r.json()
    except ValueError:
        return {**rec, "status": -3 if r.status_code == 200 else r.status_code, "code": "not_json"}
    if r.status_code == 200:
        info = data.get("longvu", {})
        rec.update(replica=info.get("replica"), retries=info.get("replica_retries", 0))
    else:
        rec["code"] = (data.get("error") or {}).get("code")
    return rec


def failover(sent: int, records: list[dict], kill: dict) -> dict:
    """What killing a replica at ``kill["at_s"]`` cost: every request accounted for, and the recovery."""
    if "at_s" not in kill:
        return {"error": kill.get("error", "no replica was killed")}
    at = kill["at_s"]
    ok = [r for r in records if r["status"] == 200]
    in_flight = [r for r in records if r["t_done"] - r["latency_s"] < at <= r["t_done"]]
    failed: dict[str, int] = {}
    for r in records:
        if r["status"] not in (200, -1) and r.get("code") != "queue_full":
            key = f"{r['status']} {r.get('code') or ''}".strip()
            failed[key] = failed.get(key, 0) + 1
    before = {r["replica"] for r in ok if r["t_done"] < at}
    replacement = [r["t_done"] for r in ok if r["t_done"] > at and r.get("replica") not in before]
    end = max((r["t_done"] for r in records), default=at)
    return {
        "killed_replica": kill["replica"],
        "killed_at_s": at,
        "requests_sent": sent,
        "answered_200": len(ok),
        "answered_after_retry": sum(1 for r in ok if r.get("retries")),
        "in_flight_at_kill": len(in_flight),
        "in_flight_at_kill_answered_200": sum(r["status"] == 200 for r in in_flight),
        "failed": failed,
        "queue_full_503": sum(r.get("code") == "queue_full" for r in records),
        "lost": sent - len(records) + sum(r["status"] == -1 for r in records),
        **recovery([r["t_done"] for r in ok], at, end),
        "replacement_first_answer_after_s": round(min(replacement) - at, 2) if replacement else None,
    }


def recovery(done: list[float], at: float, end: float, window: float = 2.0) -> dict:
    """Throughput around ``at``: answers per second before it (its second half: the first is warm-up),
    answers in each second of the run, the lowest rate of a ``window``-second span after ``at``, and the
    seconds after ``at`` until the spans are back at 90% of the rate before, once one fell below (0: none did)."""
    rate = sum(at / 2 <= t < at for t in done) / (at / 2)
    spans = [at + 0.25 * i for i in range(int((end - at - window) / 0.25) + 1)]
    rates = [sum(t <= x < t + window for x in done) / window for t in spans]
    dip = next((i for i, r in enumerate(rates) if r < 0.9 * rate), None)
    back = 0.0 if dip is None else next((spans[i] - at for i in range(dip, len(spans)) if rates[i] >= 0.9 * rate),
                                        None)  # fmt: skip
    return {
        "answers_per_second": [sum(s <= t < s + 1 for t in done) for s in range(int(end) + 1)],
        "throughput_before_rps": round(rate, 3),
        "lowest_2s_throughput_after_rps": round(min(rates), 3) if rates else None,
        "throughput_recovered_after_s": round(back, 2) if back is not None else None,
    }


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
