"""The HTTP layer under hostile clients: ``/health`` latency and the server's peak RSS (issue 21).

Starts ``longvu serve`` (the tiny checkpoint, CPU, 127.0.0.1) and, one after the other:
two connections each sending one endless header; 300 idle connections;
a 2 MB data: URL chat body sent by 6 clients at once, each trickling it.  During each,
``/health`` is asked ``--probes`` times; the figures are the slowest answer and the growth of
the server's peak RSS (``VmHWM``) over the phase.  Results in
``benchmarks/results/http_layer.json``.

    python -m benchmarks.http_layer [--probes 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from server_util import ServeProcess  # noqa: E402

QWEN = ROOT / "tests" / "fixtures" / "parity" / "checkpoints" / "tiny-longvu-qwen2"


def _probe(url: str, n: int) -> float:
    worst = 0.0
    for _ in range(n):
        t0 = time.monotonic()
        httpx.get(url + "/health", timeout=30).raise_for_status()
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.2)
    return worst


def _flood(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
            while not stop.is_set():
                s.sendall(b"a" * 4096)
        except OSError:
            pass


def _phase(srv, name: str, start, probes: int) -> dict:
    before = srv.peak_rss_mb()
    stop = threading.Event()
    held = start(stop)
    try:
        worst = _probe(srv.url, probes)
    finally:
        stop.set()
        for h in held:
            h.join() if isinstance(h, threading.Thread) else h.close()
    return {
        "phase": name,
        "worst_health_s": round(worst, 3),
        "peak_rss_growth_mb": round(srv.peak_rss_mb() - before, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=20)
    a = ap.parse_args()
    out = []
    with ServeProcess("--served-model-name", "tiny", model=QWEN) as srv:

        def floods(stop):
            ts = [threading.Thread(target=_flood, args=(srv.port, stop)) for _ in range(2)]
            for t in ts:
                t.start()
            return ts

        def idle(stop):
            return [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(300)]

        def trickles(stop):
            body = b'{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": ' \
                   b'"data:video/mp4;base64,' + b"A" * (2 << 20) + b'"}}]}]}'  # fmt: skip

            def send():
                with socket.create_connection(("127.0.0.1", srv.port)) as s:
                    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                              f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())  # fmt: skip
                    for i in range(0, len(body), 64 << 10):
                        if stop.wait(0.05):
                            return
                        s.sendall(body[i : i + (64 << 10)])

            ts = [threading.Thread(target=send) for _ in range(6)]
            for t in ts:
                t.start()
            return ts

        out.append(_phase(srv, "two endless headers", floods, a.probes))
        out.append(_phase(srv, "300 idle connections", idle, a.probes))
        out.append(_phase(srv, "6 trickled 2 MB bodies", trickles, a.probes))
        out.append({"phase": "server peak RSS overall", "peak_rss_mb": round(srv.peak_rss_mb(), 1)})
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "http_layer.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
