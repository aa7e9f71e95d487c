"""Refusals decided before any weight loads: one line on stderr, exit 2.

Each test makes loading impossible (``LongVU.from_pretrained`` raises), so a refusal that came
after the load started would show as that sentinel's internal error, not as the expected line.
"""

from __future__ import annotations

import socket

import pytest
import torch
from conftest import FIXTURES, QWEN

from longvu.cli.main import main
from longvu.pipeline.api import LongVU

VIDEO = str(FIXTURES / "videos" / "video3.mp4")


@pytest.fixture(autouse=True)
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(LongVU, "from_pretrained", classmethod(refuse))


def one_line_refusal(capsys, command: str, *argv: str) -> str:
    rc = main([command, *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"longvu {command}"), err
    assert ": error: " in lines[0], err
    assert "loading" not in err and "weights were loaded" not in err
    return lines[0]


def ask(capsys, *extra: str, model: str = str(QWEN)) -> str:
    return one_line_refusal(capsys, "ask", VIDEO, "What happens?", "--model", model, "--quiet", *extra)


def test_typo_in_a_local_folder_says_no_such_folder(capsys, tmp_path, monkeypatch):
    (tmp_path / "models" / "longvu-synth-tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    line = ask(capsys, model="models/longvu-synth")
    assert "models/longvu-synth: no such checkpoint folder" in line
    assert "did you mean models/longvu-synth-tiny?" in line
    assert "hub" not in line


@pytest.mark.parametrize("model", ["./missing-folder", "/no/such/place/ckpt", "a/b/c"])
def test_names_that_cannot_be_hub_ids_are_missing_folders(capsys, tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    line = ask(capsys, model=model)
    assert f"{model}: no such checkpoint folder" in line and "hub" not in line


def test_a_name_that_could_be_a_hub_id_names_both_readings(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder "some-org" here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = ask(capsys, model="some-org/some-model")
    assert "some-org/some-model: not a local folder, and not in the local Hugging Face hub cache" in line
    assert "HF_HUB_OFFLINE" in line


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_absent_device_is_refused_before_loading(capsys, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    line = ask(capsys, "--device", device)
    assert f"--device {device}: " in line and ("MPS is not available" in line or "no CUDA GPU" in line)


def test_absent_vision_device_is_refused_before_loading(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA GPU" in ask(capsys, "--vision-device", "cuda")


def test_serve_on_a_port_in_use_is_refused_before_loading(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_refusal(capsys, "serve", "--model", str(QWEN), "--device", "cpu", "--port", str(port), "-q")
    assert f"--port {port}: already in use" in line


def test_serve_on_a_foreign_address_is_refused_before_loading(capsys):
    line = one_line_refusal(capsys, "serve", "--model", str(QWEN), "--host", "192.0.2.1", "--port", "8000", "-q")
    assert "--host 192.0.2.1: not an address of this machine" in line


def test_model_with_server_is_refused(capsys):
    line = ask(capsys, "--server", "http://127.0.0.1:9")  # nothing listens there: refused before any request
    assert "--model: not with --server" in line and "the server decides its model" in line


def test_eval_on_an_absent_device_is_refused_before_loading(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "data").mkdir()
    line = one_line_refusal(capsys, "eval", "synthetic", "--data", str(tmp_path / "data"), "--out",
                            str(tmp_path / "out"), "--model", str(QWEN), "--device", "cuda", "-q")  # fmt: skip
    assert line.startswith("longvu eval synthetic: error: --device cuda: no CUDA GPU")
    assert not (tmp_path / "out").exists()
