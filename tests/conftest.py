"""Shared test fixtures: the parity fixtures, tiny checkpoints and synthetic videos."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
QWEN = FIXTURES / "checkpoints" / "tiny-longvu-qwen2"
LLAMA = FIXTURES / "checkpoints" / "tiny-longvu-llama3_2"

torch.set_num_threads(2)


def load_cases() -> list[dict]:
    return json.loads((FIXTURES / "cases.json").read_text())["cases"]


def case_video(case: dict) -> Path:
    """cases.json paths are relative to shared/parity; ../videos/ lives in fixtures/videos/."""
    rel = case["video"]
    if rel.startswith("../videos/"):
        return FIXTURES / "videos" / rel.removeprefix("../videos/")
    return FIXTURES / rel


def write_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "mpeg4") -> Path:
    """Encode ``[N, H, W, 3]`` uint8 frames to a video file with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=Fraction(fps))
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            s.options = {"qscale": "2"}
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def scene_frames(n: int, h: int = 64, w: int = 96, scene_len: int = 10, seed: int = 0) -> np.ndarray:
    """Frames with a flat colour per scene and a small moving square."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, size=(n // scene_len + 1, 3))
    out = np.zeros((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = colours[i // scene_len]
        x = (i * 3) % (w - 8)
        out[i, 10:18, x : x + 8] = 255
    return out


@pytest.fixture(scope="session")
def synth_video(tmp_path_factory) -> Path:
    """A 6 s, 10 fps, 96x64 video with scene changes every second."""
    path = tmp_path_factory.mktemp("videos") / "synth.mp4"
    return write_video(path, scene_frames(60))


@pytest.fixture(scope="session")
def qwen_model():
    from longvu import LongVU

    return LongVU.from_pretrained(QWEN, device="cpu", dtype="float32")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never write to the user's cache from tests."""
    import os

    old = os.environ.get("LONGVU_CACHE_DIR")
    os.environ["LONGVU_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LONGVU_CACHE_DIR", None)
    else:
        os.environ["LONGVU_CACHE_DIR"] = old
