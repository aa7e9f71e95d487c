"""The golden cases and a chat on a virtual device (``virtual_device.py``): no host/device
mixing, no float64 or numpy of device tensors, few host syncs, no re-uploads."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from conftest import FIXTURES, case_video, load_cases
from virtual_device import Record, VirtualDevice

import longvu.model.generation
from longvu import GenerationOptions, LongVU
from longvu.model.observe import ParityObserver

CASES = load_cases()
GREEDY16 = GenerationOptions(max_new_tokens=16, greedy=True)
# Host syncs allowed: per stage-1 window (its similarities; its features when frames are
# spilled), per SigLIP chunk, per compose (selection's top-k, stage 3's windows), per token.
SYNCS_PER_WINDOW = 2
SYNCS_PER_CHUNK = 0
SYNCS_PER_TOKEN = 3


def mark_model(lv: LongVU) -> None:
    m = lv.model
    for module in (m.llm, m.connector, m.siglip.model, m.dinov2.model):
        VirtualDevice.mark_module(module)


@contextlib.contextmanager
def virtual_device(monkeypatch):
    """The mode on this thread and on generation's thread."""
    vd = VirtualDevice()
    run = longvu.model.generation.TokenThread._run

    def run_on_virtual_device(self, work):
        with vd.child():
            run(self, work)

    monkeypatch.setattr(longvu.model.generation.TokenThread, "_run", run_on_virtual_device)
    with vd:
        yield vd.record


def production_syncs(record: Record) -> int:
    return record.sync_count(exclude=("observe.py",))  # the parity observer's own reads are not the product's


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case_on_a_virtual_device(case, monkeypatch):
    lv = LongVU.from_pretrained(FIXTURES / case["checkpoint"], device="cpu", dtype="float32",
                                overrides=case["config_overrides"], cache=False)  # fmt: skip
    mark_model(lv)
    obs = ParityObserver(arrays=True)
    with virtual_device(monkeypatch) as rec:
        feats = lv.features(case_video(case), observer=obs)
        encode_syncs = production_syncs(rec)
        conv = lv.conversation()
        conv.add_user(case["question"])
        stream = lv.generate(feats, conv, generation=GREEDY16, observer=obs)
        compose_syncs = production_syncs(rec) - encode_syncs
        list(stream)
        generate_syncs = production_syncs(rec) - encode_syncs - compose_syncs
    assert rec.violations == []
    t = stream.answer.trace.data
    gold = json.loads((FIXTURES / "golden" / case["name"] / "trace.json").read_text())
    assert t["dino"]["kept_indices"] == gold["dino"]["kept_indices"]
    assert t["counts"] == gold["counts"]
    assert t["generation"]["token_ids"] == gold["generation"]["token_ids"]
    windows = len(feats.window_sizes)
    chunks = math.ceil(len(feats.stored) / lv.config.encode_chunk)
    assert encode_syncs <= SYNCS_PER_WINDOW * windows + SYNCS_PER_CHUNK * chunks, rec.syncs
    stc_windows = len(t["stc"]["chunks"])
    assert compose_syncs <= 1 + stc_windows, rec.syncs
    assert generate_syncs <= SYNCS_PER_TOKEN * len(stream.answer.token_ids), rec.syncs


def test_chat_turns_keep_the_features_on_the_device(qwen_model, monkeypatch):
    video = FIXTURES / "videos" / "video1.mp4"
    feats = qwen_model.features(video)
    feats.sampled = feats.sampled.cpu().clone()  # as read from the feature cache: on the host
    frame_bytes = feats.sampled[0].numel() * feats.sampled.element_size()
    mark_model(qwen_model)
    session = qwen_model.chat(feats)
    opts = GenerationOptions(max_new_tokens=2, greedy=True)
    with virtual_device(monkeypatch) as rec:
        session.ask("What is shown?", opts)
        first = [b for _, b in rec.uploads if b >= frame_bytes]
        session.ask("And then?", opts)
        second = [b for _, b in rec.uploads if b >= frame_bytes][len(first) :]
    assert rec.violations == []
    assert sum(first) >= frame_bytes  # the first turn uploads the stored features once
    assert second == []  # later turns find them on the device


def test_virtual_device_catches_mixing_float64_numpy_and_counts_syncs():
    import torch

    with VirtualDevice() as vd:
        dev = torch.zeros(4, device=torch.device("cpu"))  # a device argument: on the device
        host = torch.zeros(4)
        _ = dev + host  # mixing
        _ = dev.double()  # float64 on the device
        _ = dev.cpu().double().numpy()  # fine: on the host
        _ = dev.sum().item()  # a sync
        _ = dev[dev > 0]  # a data-dependent size: a sync
        up = host.to(torch.device("cpu"))  # an upload
        _ = up + dev  # fine: both on the device
    assert len(vd.record.violations) == 2, vd.record.violations
    assert sum(vd.record.syncs.values()) == 3  # .cpu(), .item(), boolean index
    assert [b for _, b in vd.record.uploads] == [16]
