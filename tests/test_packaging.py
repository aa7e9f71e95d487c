"""The built wheel: what it holds (the web page's files included), and that it installs and runs.

The wheel is built from a copy of the sources (``python -m build --wheel --no-isolation``: the
setuptools already installed, no download).  It is installed with ``--no-deps`` into a fresh venv
made without pip, whose dependencies come from this interpreter's site-packages through a ``.pth``
line (a plain path: the editable install's own ``.pth`` hooks there are not run, so the only
``longvu`` that venv can import is the wheel's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from longvu.cli.common import TRAINED_QUESTION

ROOT = Path(__file__).resolve().parents[1]
STATIC = sorted(p.name for p in (ROOT / "src" / "longvu" / "serve" / "static").iterdir() if p.is_file())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the build frontend is not installed (it is in the dev extra)")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(src / "dist")],
                         cwd=src, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (built,) = (src / "dist").glob("longvu-*.whl")
    return built


def test_the_wheel_holds_the_package_the_page_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert STATIC and {f"longvu/serve/static/{n}" for n in STATIC} <= names  # index.html, app.js, style.css
    sources = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "longvu").rglob("*.py")}
    assert sources <= names
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "longvu = longvu.cli.main:main" in text


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel (no pip in it; dependencies from this interpreter's site-packages)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    (site / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return env_dir


def run_installed(env_dir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(env_dir / "bin" / "longvu"), *args], capture_output=True, text=True, env=env,
                          cwd=cwd or env_dir, timeout=600)  # fmt: skip


def test_the_installed_wheel_runs(installed):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.check_output([str(installed / "bin" / "python"), "-c", "import longvu; print(longvu.__file__)"],
                                    text=True, env=env, cwd=installed).strip()  # fmt: skip
    assert Path(where).is_relative_to(installed), where  # the wheel's copy, not a checkout
    page = Path(where).parent / "serve" / "static"
    assert sorted(p.name for p in page.iterdir()) == STATIC
    res = run_installed(installed, "--version")
    assert res.returncode == 0 and res.stdout.strip() == "longvu 0.1.0", res.stderr
    res = run_installed(installed, "ask", "--help")
    assert res.returncode == 0 and "examples:" in res.stdout, res.stderr


@pytest.mark.slow
def test_the_installed_wheel_answers(installed, tmp_path):
    """``longvu ask`` from the wheel names the word of a synth video (the trained model, on the CPU)."""
    res = run_installed(installed, "synth", "--out", str(tmp_path / "demo"), "--n", "1", "--seed", "5", "--cast", "1",
                        "--render", "plain", "-q")  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = run_installed(installed, "ask", str(tmp_path / "demo" / "videos" / "s5_000000.mp4"), TRAINED_QUESTION, "--model",
                        str(ROOT / "models" / "longvu-synth-tiny"), "--greedy", "--device", "cpu", "--no-cache")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "RIVER"
