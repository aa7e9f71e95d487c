"""Fuzz: damaged variants of the example videos through the decoder and through ``longvu ask``.

Every variant must end in success or a one-line :class:`VideoError` (``longvu ask: error:``
and exit 2 on the CLI): no other exception, no traceback, no crash, and the process
stays under a fixed memory bound.  The default run takes a few hundred variants through
the decoding functions and a handful through the CLI; ``-m slow`` runs thousands, and a
real ``python -m longvu.cli`` process per CLI sample.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import QWEN
from media_fuzz import media_variants, run_measured, seed_videos

TESTS = str(Path(__file__).parents[1])
DECODE_RSS_MB = 1024  # the child imports torch (~250 MB); decoding these clips needs little more
CLI_RSS_MB = 1536  # torch, the tiny model, encoding

DECODE_CHILD = """
import collections, json, sys, traceback
from pathlib import Path
sys.path.insert(0, {tests!r})
from media_fuzz import media_variants, seed_videos
from longvu.errors import VideoError
from longvu.model.intake import MediaLimits, probe_video
from longvu.model.video import Sampling, count_frames, iter_frames

work = Path({work!r})
limits = MediaLimits(max_seconds=0.5, max_frames=24, max_pixels=568 * 320)
calls = {{
    "probe": lambda p: probe_video(p),
    "decode": lambda p: sum(1 for _ in iter_frames(p, Sampling(fps=2))),
    "limited": lambda p: sum(1 for _ in iter_frames(p, Sampling(), limits=limits)),
    "count": lambda p: count_frames(p, limits),
}}
outcomes, failures = collections.Counter(), []
for name, data in media_variants(seed_videos(work / "seeds"), {count}, {seed}):
    path = work / "variant.bin"
    path.write_bytes(data)
    for call, fn in calls.items():
        try:
            fn(path)
            outcomes[call + ": ok"] += 1
        except VideoError as e:
            outcomes[call + ": " + type(e).__name__] += 1
            if "\\n" in str(e) or str(work) in e.public_message:
                failures.append([name, call, "bad message: " + repr(str(e))])
        except BaseException:
            failures.append([name, call, traceback.format_exc(limit=6)])
print(json.dumps({{"outcomes": outcomes, "failures": failures}}))
"""

CLI_CHILD = """
import contextlib, io, json, sys
from longvu.cli.main import main

results = []
for path in sys.argv[2:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["ask", path, "What is shown?", "--model", {qwen!r}, "--device", "cpu", "--greedy",
                   "--max-new-tokens", "2", "--quiet", "--no-stream", "--cache-dir", sys.argv[1]])
    results.append({{"path": path, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}})
print(json.dumps(results))
"""


def run_decode_fuzz(work: Path, count: int, seed: int) -> dict:
    code = DECODE_CHILD.format(tests=TESTS, work=str(work), count=count, seed=seed)
    child = run_measured([sys.executable, "-c", code], timeout=1800)
    assert child.rc == 0, child.stderr[-3000:]
    assert "Traceback" not in child.stderr
    assert child.max_rss_mb < DECODE_RSS_MB, f"peak RSS {child.max_rss_mb:.0f} MB"
    report = json.loads(child.stdout)
    assert report["failures"] == [], json.dumps(report["failures"][:5], indent=1)
    return report["outcomes"]


def check_cli_result(r: dict) -> bool:
    """True if the video was answered; else it must be a one-line refusal with exit 2."""
    assert "Traceback" not in r["stderr"], r
    if r["rc"] == 0:
        assert r["stdout"].strip(), r
        return True
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
    assert r["rc"] == 2 and len(lines) == 1 and lines[0].startswith("longvu ask: error: "), r
    return False


def cli_sample(work: Path, count: int, every: int, seed: int) -> list[Path]:
    paths = []
    for i, (name, data) in enumerate(media_variants(seed_videos(work / "seeds"), count, seed)):
        if i % every == 0:
            paths.append(work / f"{name}.video")
            paths[-1].write_bytes(data)
    return paths


def test_fuzz_decoding(tmp_path):
    outcomes = run_decode_fuzz(tmp_path, count=200, seed=0)
    assert sum(outcomes.values()) == 800
    # the corpus is meaningful: plenty of variants decode, plenty are refused
    assert outcomes["decode: ok"] > 40 and outcomes["decode: VideoError"] > 10
    assert outcomes["limited: MediaLimitError"] > 40


def test_fuzz_cli(tmp_path):
    paths = cli_sample(tmp_path, count=63, every=9, seed=1)  # one variant of each kind of damage
    playlist = tmp_path / "playlist.mp4"
    playlist.write_text(f"#EXTM3U\n#EXTINF:10,\n{paths[0]}\n")
    paths = [tmp_path / "seeds" / "video1.mp4", playlist, *paths]  # one sure to be answered, one sure to be refused
    code = CLI_CHILD.format(qwen=str(QWEN))
    child = run_measured([sys.executable, "-c", code, str(tmp_path / "cache"), *map(str, paths)], timeout=900)
    assert child.rc == 0, child.stderr[-3000:]
    assert child.max_rss_mb < CLI_RSS_MB, f"peak RSS {child.max_rss_mb:.0f} MB"
    answered = [check_cli_result(r) for r in json.loads(child.stdout)]
    assert len(answered) == 9 and answered[:2] == [True, False]


@pytest.mark.slow
def test_fuzz_decoding_long(tmp_path):
    outcomes = run_decode_fuzz(tmp_path, count=3000, seed=7)
    assert sum(outcomes.values()) == 12000


@pytest.mark.slow
def test_fuzz_cli_processes_long(tmp_path):
    """A real ``python -m longvu.cli ask`` per variant, each under the memory bound."""
    answered = []
    for path in cli_sample(tmp_path, count=400, every=10, seed=11):
        cmd = [sys.executable, "-m", "longvu.cli", "ask", str(path), "What is shown?", "--model", str(QWEN),
               "--device", "cpu", "--greedy", "--max-new-tokens", "2", "--quiet", "--no-stream",
               "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
        child = run_measured(cmd, timeout=600)
        assert child.max_rss_mb < CLI_RSS_MB, f"{path.name}: peak RSS {child.max_rss_mb:.0f} MB"
        answered.append(check_cli_result({"rc": child.rc, "stdout": child.stdout, "stderr": child.stderr}))
    assert 0 < sum(answered) < len(answered)
