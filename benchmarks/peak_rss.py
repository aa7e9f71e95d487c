"""Peak RSS of a command, from the OS, undisturbed by the size of whoever starts it.

``wait4``'s ``ru_maxrss`` of a child counts the memory image the child had *before* it
exec'd: a fork of the parent, so a command started from a large process (a test run that
has loaded models, a Ray driver) reports at least that process's RSS.  A small launcher
process starts the command instead and reports the command's own ``ru_maxrss``, so the
figure is the command's alone (plus the launcher's few MB of Python, the same for every
run).

    from benchmarks.peak_rss import run_measured
    m = run_measured([sys.executable, "-m", "longvu.cli", "ask", ...], timeout=600)
    m.rc, m.stdout, m.stderr, m.max_rss_mb, m.wall_s
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

LAUNCHER = """
import json, os, subprocess, sys, time
cmd, report = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
p = subprocess.Popen(cmd)
_, status, usage = os.wait4(p.pid, 0)
with open(report, "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss,
               "wall_s": time.perf_counter() - t0}, f)
"""


@dataclass
class Measured:
    """A finished command: exit code, output, its own peak RSS (MiB) and wall time."""

    rc: int
    stdout: str
    stderr: str
    max_rss_mb: float
    wall_s: float


def run_measured(cmd: list[str], timeout: float, **popen) -> Measured:
    """Run ``cmd`` through the launcher; on timeout the whole process group is killed (rc -9)."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        report = os.path.join(tmp, "report.json")
        launcher = [sys.executable, "-c", LAUNCHER, json.dumps(cmd), report]
        p = subprocess.Popen(launcher, stdout=out, stderr=err, start_new_session=True, **popen)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        out.seek(0)
        err.seek(0)
        o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if not os.path.exists(report):
            return Measured(-9 if p.returncode == 0 else p.returncode, o, e, float("nan"), float(timeout))
        with open(report) as f:
            r = json.load(f)
        return Measured(r["rc"], o, e, r["maxrss_kb"] / 1024, r["wall_s"])
