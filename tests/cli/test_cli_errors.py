"""Bad input gets one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import FIXTURES, QWEN

from longvu.cli.main import main

VIDEO = FIXTURES / "videos" / "video3.mp4"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def ask(capsys, video, *extra, model=QWEN):
    return run_cli(capsys, "ask", str(video), "What happens?", "--model", str(model), "--device", "cpu",
                   "--max-new-tokens", "2", "--quiet", "--no-stream", *extra)  # fmt: skip


def assert_one_line_error(rc, err, needle):
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("longvu ask: error: ") and lines[0].endswith(" (see `longvu ask --help`)")
    assert needle in lines[0]
    assert "Traceback" not in err


def make_bad_videos(d: Path) -> dict[str, Path]:
    data = VIDEO.read_bytes()
    n = len(data)
    files = {
        "text": d / "notes.mp4",
        "empty": d / "empty.mp4",
        "head": d / "head.mp4",
        "tail": d / "tail.mp4",
        "corrupt": d / "corrupt.mp4",
        "audio": d / "audio.m4a",
    }
    files["text"].write_text("this is not a video\n")
    files["empty"].write_bytes(b"")
    files["head"].write_bytes(data[: n // 10])
    files["tail"].write_bytes(data[: int(n * 0.6)])
    files["corrupt"].write_bytes(b"\x00" * 64 + data[64:])
    with av.open(str(files["audio"]), "w") as out:
        s = out.add_stream("aac", rate=16000)
        for i in range(5):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return files


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    return make_bad_videos(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("text", "not a readable video file"),
        ("empty", "empty file"),
        ("head", "not a readable video file"),
        ("tail", "not a readable video file"),
        ("corrupt", "not a readable video file"),
        ("audio", "no video stream (audio-only file)"),
    ],
)
def test_bad_video(capsys, bad_videos, kind, needle):
    rc, out, err = ask(capsys, bad_videos[kind])
    assert_one_line_error(rc, err, needle)
    assert out == ""


def test_missing_video(capsys, tmp_path):
    rc, _, err = ask(capsys, tmp_path / "nope.mp4")
    assert_one_line_error(rc, err, "no such file")


def test_directory_as_video(capsys, tmp_path):
    rc, _, err = ask(capsys, tmp_path)
    assert_one_line_error(rc, err, "is a directory")


def test_bad_set(capsys):
    rc, _, err = ask(capsys, VIDEO, "--set", "no_such_knob=3")
    assert_one_line_error(rc, err, "unknown config key 'no_such_knob'")
    rc, _, err = ask(capsys, VIDEO, "--set", "dino_threshold=abc")
    assert_one_line_error(rc, err, "dino_threshold expects a number")
    rc, _, err = ask(capsys, VIDEO, "--set", "oops")
    assert_one_line_error(rc, err, "--set expects KEY=VALUE")


def test_time_range_outside_video(capsys, tmp_path):
    # checked against the header's duration before the model loads: a missing checkpoint is not reached
    rc, _, err = ask(capsys, VIDEO, "--start", "500", model=tmp_path / "no-checkpoint")
    assert_one_line_error(rc, err, "--start 500s (8:20) is past the end of the video (5.1s long)")


@pytest.fixture()
def ckpt_copy(tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(QWEN, dst)
    return dst


def test_missing_checkpoint_folder(capsys, tmp_path):
    rc, _, err = ask(capsys, VIDEO, model=tmp_path / "nothing")
    assert_one_line_error(rc, err, "no such checkpoint folder")


def test_checkpoint_without_config(capsys, ckpt_copy):
    (ckpt_copy / "config.json").unlink()
    rc, _, err = ask(capsys, VIDEO, model=ckpt_copy)
    assert_one_line_error(rc, err, "no config.json")


def test_checkpoint_missing_shard(capsys, ckpt_copy):
    (ckpt_copy / "model-00002-of-00002.safetensors").unlink()
    rc, _, err = ask(capsys, VIDEO, model=ckpt_copy)
    assert_one_line_error(rc, err, "missing weight shard(s) model-00002-of-00002.safetensors")


def test_checkpoint_missing_tokenizer(capsys, ckpt_copy):
    (ckpt_copy / "tokenizer_config.json").unlink()
    rc, _, err = ask(capsys, VIDEO, model=ckpt_copy)
    assert_one_line_error(rc, err, "no tokenizer_config.json")


def test_checkpoint_missing_tower(capsys, ckpt_copy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.rmtree(ckpt_copy / "vision_towers" / "dinov2")
    rc, _, err = ask(capsys, VIDEO, model=ckpt_copy)
    assert_one_line_error(rc, err, "pass --dinov2 PATH")


def test_unknown_model_type(capsys, ckpt_copy):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["model_type"] = "llava_next"
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    rc, _, err = ask(capsys, VIDEO, model=ckpt_copy)
    assert_one_line_error(rc, err, "unknown model_type 'llava_next'")


def _drop_tensor(folder: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = folder / index["weight_map"][name]
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize("name", ["model.layers.1.mlp.up_proj.weight", "model.vision_sampler_0.layers.2.norm.bias"])
def test_checkpoint_missing_tensor_is_named(capsys, ckpt_copy, name):
    _drop_tensor(ckpt_copy, name)
    rc, _, err = ask(capsys, VIDEO, model=ckpt_copy)
    assert_one_line_error(rc, err, name)


def test_unexpected_tensor_is_named(capsys, ckpt_copy):
    import torch
    from safetensors.torch import save_file

    save_file({"model.extra_head.weight": torch.zeros(2, 2)}, str(ckpt_copy / "extra.safetensors"))
    index_path = ckpt_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.extra_head.weight"] = "extra.safetensors"
    index_path.write_text(json.dumps(index))
    rc, _, err = ask(capsys, VIDEO, model=ckpt_copy)
    assert_one_line_error(rc, err, "model.extra_head.weight")


def test_hub_model_unavailable_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = ask(capsys, VIDEO, model="Vision-CAIR/LongVU_Qwen2_7B")
    assert_one_line_error(rc, err, "pass --model PATH to a local checkpoint folder")


@pytest.mark.parametrize("flag,env", [("", None), (" ", None), (None, ""), (None, "  \t")])
def test_an_empty_api_key_is_refused_before_the_model_loads(capsys, monkeypatch, flag, env):
    """``--api-key ''`` or ``LONGVU_API_KEY=''`` would turn authentication off without a word: exit 2, one line."""
    import longvu.cli.common as common

    monkeypatch.setattr(common, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    if env is None:
        monkeypatch.delenv("LONGVU_API_KEY", raising=False)
    else:
        monkeypatch.setenv("LONGVU_API_KEY", env)
    args = ["serve", "--model", str(QWEN), "--device", "cpu"] + ([] if flag is None else ["--api-key", flag])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is empty" in err
    assert ("--api-key" if flag is not None else "LONGVU_API_KEY") in err
