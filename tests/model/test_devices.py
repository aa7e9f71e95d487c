"""Device placement, precision flags, CPU budgets and the device-dependent fast paths
(each checked to give the same numbers as the plain path)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from conftest import FIXTURES

import longvu.model.connector
import longvu.model.encode
import longvu.model.towers
from longvu.errors import ConfigError
from longvu.model import devices
from longvu.model.encode import _Spill, encode_video
from longvu.model.video import iter_frames

VIDEO = FIXTURES / "videos" / "video1.mp4"


def test_float32_on_cuda_turns_tf32_off():
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        devices.configure_precision(torch.device("cuda"), torch.bfloat16)  # half precision: flags untouched
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        devices.configure_precision(torch.device("cpu"), torch.float32)  # not CUDA: untouched
        assert torch.backends.cudnn.allow_tf32
        devices.configure_precision(torch.device("cuda"), torch.float32)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


@pytest.mark.parametrize(
    "device, version, host",
    [("mps", "2.4.1", True), ("mps", "2.5.0+cpu", True), ("mps", "2.6.0", False), ("mps", "2.13.0", False),
     ("cuda", "2.4.0", False), ("cpu", "2.4.0", False)],
)  # fmt: skip
def test_bicubic_runs_on_the_host_only_on_old_mps(device, version, host):
    assert devices.bicubic_on_host(torch.device(device), version) is host


def test_dinov2_position_grid_on_the_host_gives_the_same_features(qwen_model, monkeypatch):
    tower = qwen_model.model.dinov2
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 378, 378)).astype(np.float32))
    direct = tower(pixels)
    calls = []

    def on_host(device):
        calls.append(device)
        return True  # as on MPS before torch 2.6

    monkeypatch.setattr(longvu.model.towers, "bicubic_on_host", on_host)
    assert torch.equal(tower(pixels), direct) and calls


def test_sva_sampler_splits_large_batches_without_changing_a_number(qwen_model, monkeypatch):
    conn = qwen_model.model.connector
    g = torch.Generator().manual_seed(0)
    aux = [torch.randn(7, 576, qwen_model.config.vision_hidden_size, generator=g) for _ in range(2)]
    calls = []
    real = longvu.model.connector.VisionSampler.forward

    def spy(self, queries, *rest):
        calls.append(queries.shape[0])
        return real(self, queries, *rest)

    monkeypatch.setattr(longvu.model.connector.VisionSampler, "forward", spy)
    with torch.inference_mode():
        whole = conn.sample(aux, (360, 640), fix_orientation=False)
        monkeypatch.setattr(longvu.model.connector, "MAX_ATTENTION_BATCH", 3 * 144)  # as 65,535 is to encode_chunk 455
        split = conn.sample(aux, (360, 640), fix_orientation=False)
    assert calls == [7 * 144, 3 * 144, 3 * 144, 144]
    assert torch.equal(whole, split)


def test_several_windows_per_dinov2_forward_give_the_same_decisions(qwen_model, monkeypatch):
    m = qwen_model.model
    one = encode_video(m, VIDEO, keep_all_below=5)
    forwards = []
    real = longvu.model.encode._Stage1.flush

    def spy(self):
        forwards.append(len(self.pending))
        real(self)

    monkeypatch.setattr(longvu.model.encode, "dino_batch", lambda cfg: 3 * cfg.dino_window)
    monkeypatch.setattr(longvu.model.encode._Stage1, "flush", spy)
    several = encode_video(m, VIDEO, keep_all_below=5)
    assert [n for n in forwards if n] == [21]  # 21 frames: two windows (16 + 5) in one forward
    assert several.window_sizes == one.window_sizes == [16, 5]
    assert several.stored == one.stored  # the same decisions, window by window
    # Another batch shape moves the features by float noise (as any encode_chunk change does), no more.
    assert torch.allclose(several.similarity, one.similarity, rtol=0, atol=1e-6)
    assert torch.allclose(several.sampled, one.sampled, rtol=0, atol=1e-5)


def test_dino_batch_follows_encode_chunk(qwen_model):
    cfg = qwen_model.model.cfg
    assert longvu.model.encode.dino_batch(cfg) == 16  # the default: one window per forward
    assert longvu.model.encode.dino_batch(dataclasses.replace(cfg, encode_chunk=64)) == 64
    assert longvu.model.encode.dino_batch(dataclasses.replace(cfg, encode_chunk=40)) == 32
    assert longvu.model.encode.dino_batch(dataclasses.replace(cfg, encode_chunk=4)) == 16


def test_encode_chunk_must_be_positive(qwen_model):
    with pytest.raises(ConfigError, match="encode_chunk"):
        qwen_model.model.cfg.with_overrides({"encode_chunk": 0})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spill_keeps_the_model_dtype_bit_for_bit(tmp_path, dtype):
    feats = torch.randn(3, 576, 40).to(dtype)
    images = [(np.full((4, 6, 3), i, np.uint8), bool(i % 2)) for i in range(3)]
    with _Spill(str(tmp_path)) as spill:
        spill.put([(10 + i, images[i]) for i in range(3)], feats)
        for i in range(3):
            (image, resized), raw = spill.get(10 + i)
            assert np.array_equal(image, images[i][0]) and resized == images[i][1]
            assert torch.equal(torch.from_numpy(raw).view(spill.dtype), feats[i])
    assert os.path.getsize(tmp_path / "dino.bin") == 3 * 576 * 40 * (4 if dtype == torch.float32 else 2)


def test_host_batch_stacks_frames():
    arrays = [np.full((3, 5, 5), i, np.float32) for i in range(4)]
    batch = devices.host_batch(arrays, torch.device("cpu"))
    assert batch.shape == (4, 3, 5, 5) and batch.dtype == torch.float32 and not batch.is_pinned()
    assert np.array_equal(batch.numpy(), np.stack(arrays))
    assert devices.upload(batch, torch.device("cpu"), torch.bfloat16).dtype == torch.bfloat16


def test_threaded_decoding_gives_the_same_frames():
    slice_ = list(iter_frames(VIDEO, thread_type="SLICE"))
    auto = list(iter_frames(VIDEO, thread_type="AUTO"))
    assert [i for i, _, _ in auto] == [i for i, _, _ in slice_]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(auto, slice_))
    assert devices.decode_threads(torch.device("cpu")) == "SLICE"
    assert devices.decode_threads(torch.device("cuda")) == "AUTO"


def test_preprocessing_pool_follows_the_cpu_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert devices.cpu_budget() == 12
    assert devices.preprocess_workers(torch.device("cuda")) == 12  # every allowed core
    assert devices.preprocess_workers(torch.device("cpu")) == 3  # sharing torch's cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(200)), raising=False)
    assert devices.preprocess_workers(torch.device("cuda")) == devices.MAX_PREPROCESS_WORKERS


def test_cpu_shares_for_workers_and_ray_actors():
    assert devices.worker_threads(4, cores=16) == 4
    assert devices.worker_threads(3, cores=2) == 1
    nodes = [{"Alive": True, "Resources": {"CPU": 32.0, "GPU": 4.0}},
             {"Alive": True, "Resources": {"CPU": 96.0, "GPU": 8.0}},
             {"Alive": True, "Resources": {"CPU": 8.0}},  # a CPU-only node: no GPU actor lands there
             {"Alive": False, "Resources": {"CPU": 2.0, "GPU": 2.0}}]  # fmt: skip
    assert devices.ray_cpus_per_gpu(nodes) == 8
    assert devices.ray_cpus_per_gpu([]) == 1
