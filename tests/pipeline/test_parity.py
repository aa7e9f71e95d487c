"""Acceptance: every shared golden case through the CLI, checked with the reference's compare.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import FIXTURES, case_video, load_cases

from longvu.cli.main import main

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case_via_cli(case, tmp_path, capsys):
    trace, arrays = tmp_path / "t.json", tmp_path / "a.npz"
    argv = ["ask", str(case_video(case)), case["question"], "--model", str(FIXTURES / case["checkpoint"]),
            "--device", "cpu", "--dtype", "float32", "--greedy", "--max-new-tokens", "16",
            "--trace", str(trace), "--trace-arrays", str(arrays), "--no-stream"]  # fmt: skip
    for k, v in case["config_overrides"].items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    golden = FIXTURES / "golden" / case["name"]
    res = subprocess.run(
        [sys.executable, str(FIXTURES / "compare.py"), str(golden), str(trace), "--npz", str(arrays), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 mismatched/missing" in res.stdout
    import json

    gold = json.loads((golden / "trace.json").read_text())
    assert out.strip() == gold["generation"]["text"].strip()
