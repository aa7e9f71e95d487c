"""Run the FastAPI app on a real loopback port inside the test process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time


def local_client(app, **kw):
    """FastAPI's TestClient, sending ``Host: 127.0.0.1`` (the server's default allow-list has loopback names only)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1", **kw)


class LiveServer:
    def __init__(self, app) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ServeProcess:
    """``longvu serve`` in a process of its own (a real start-up, real signals), on a free loopback port.

    ``peak_rss_mb()`` is the process's peak RSS as the OS counts it (``VmHWM``, reset at exec,
    so it is the server's own and not that of the test process that started it).
    """

    def __init__(self, *args: str, model, cwd=None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "longvu.cli", "serve", "--model", str(model), "--device", "cpu",
                    "--port", str(self.port), "--quiet", *args]  # fmt: skip
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.stdout: str | None = None
        self.stderr: str | None = None

    def __enter__(self) -> ServeProcess:
        import tempfile

        import httpx

        # files, not pipes: uvicorn logs every request, and a full pipe would stall the server
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=self.out, stderr=self.err)
        deadline = time.time() + 120
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start: {self.stderr[-2000:]}")

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            line = next(ln for ln in f if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait (a SIGKILL past ``timeout``, reported as -9); the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(timeout=30)
        if self.proc is not None and self.stdout is None:
            self.stdout, self.stderr = (self._read(f) for f in (self.out, self.err))

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        text = f.read().decode(errors="replace")
        f.close()
        return text

    def __exit__(self, *exc) -> None:
        self.stop()
