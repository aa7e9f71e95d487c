"""The on-disk feature cache: hits, exactness, corruption, eviction, two processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, QWEN

from longvu import GenerationOptions, LongVU, Sampling
from longvu.cache import FeatureCache
from longvu.cli import main
from longvu.encode import VisualFeatures

VIDEO = FIXTURES / "videos" / "video1.mp4"
GREEDY = GenerationOptions(max_new_tokens=6, greedy=True)


@pytest.fixture()
def lv_cached(qwen_model, tmp_path):
    return LongVU(qwen_model.model, FeatureCache(tmp_path / "cache"))


def fake_features(n: int = 4, fill: float = 1.0) -> VisualFeatures:
    return VisualFeatures(
        path="v.mp4", source_indices=list(range(0, 10 * n, 10)), timestamps=[float(i) for i in range(n)],
        avg_fps=10.0, step=10, num_frames_total=10 * n, frame_hw=(36, 64),
        similarity=torch.linspace(0, 1, n), window_sizes=[n], stored=list(range(n)),
        sampled=torch.full((n, 144, 8), fill), all_frames=True,
    )  # fmt: skip


def test_second_question_reads_the_cache_and_matches(lv_cached):
    first = lv_cached.ask(VIDEO, "What is shown?", generation=GREEDY)
    assert "encode_total" in first.trace.data["timings"]
    again = lv_cached.ask(VIDEO, "What is shown?", generation=GREEDY)
    assert again.trace.data["timings"]["encode_cache_hit"] == 1.0
    # bit-exact round trip: same embeddings, same tokens
    assert again.trace.data["inputs_embeds"] == first.trace.data["inputs_embeds"]
    assert again.token_ids == first.token_ids
    other = lv_cached.ask(VIDEO, "Describe this video in detail.", generation=GREEDY)
    assert other.trace.data["timings"]["encode_cache_hit"] == 1.0
    assert lv_cached.cache.info()["entries"] == 1


def test_key_depends_on_sampling_and_stage1_settings(lv_cached):
    k1 = lv_cached.cache_key(VIDEO, Sampling())
    assert k1 == lv_cached.cache_key(VIDEO, Sampling())
    assert k1 != lv_cached.cache_key(VIDEO, Sampling(fps=2))
    other = LongVU(
        type(lv_cached.model)(
            **{**lv_cached.model.__dict__, "cfg": lv_cached.config.with_overrides({"dino_threshold": 0.5})}
        ),
        lv_cached.cache,
    )
    assert k1 != other.cache_key(VIDEO, Sampling())


def test_round_trip_exact(tmp_path):
    cache = FeatureCache(tmp_path)
    f = fake_features()
    cache.put("k", f)
    g = cache.get("k")
    assert torch.equal(g.sampled, f.sampled) and torch.equal(g.similarity, f.similarity)
    assert (g.stored, g.source_indices, g.timestamps, g.frame_hw, g.all_frames) == (
        f.stored, f.source_indices, f.timestamps, f.frame_hw, f.all_frames)  # fmt: skip


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_entry_is_detected_and_recomputed(lv_cached, damage, caplog):
    lv_cached.ask(VIDEO, "What is shown?", generation=GREEDY)
    blob = next((lv_cached.cache.root / "blobs").glob("*.safetensors"))
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data = bytearray(b"x" * len(data))
    blob.write_bytes(bytes(data))
    ans = lv_cached.ask(VIDEO, "What is shown?", generation=GREEDY)
    assert "encode_total" in ans.trace.data["timings"]  # recomputed, not read
    assert any("corrupt or truncated" in r.getMessage() for r in caplog.records if r.name == "longvu")
    # and the recomputed entry is whole again
    ans = lv_cached.ask(VIDEO, "What is shown?", generation=GREEDY)
    assert ans.trace.data["timings"]["encode_cache_hit"] == 1.0


def test_lru_eviction(tmp_path):
    size = len(__import__("longvu.cache", fromlist=["_encode"])._encode(fake_features()))
    cache = FeatureCache(tmp_path, max_bytes=int(size * 2.5))
    for key in ("a", "b"):
        cache.put(key, fake_features())
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", fake_features())
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.info()["entries"] == 2
    assert len(list((tmp_path / "blobs").glob("*.safetensors"))) == 2


def test_missing_blob_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("k", fake_features())
    next((tmp_path / "blobs").glob("*.safetensors")).unlink()
    assert cache.get("k") is None
    assert cache.info()["entries"] == 0


WORKER = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_cache import fake_features
from longvu.cache import FeatureCache
cache = FeatureCache({root!r})
for i in range(25):
    key = f"k{{i % 5}}"
    cache.put(key, fake_features(fill=float(i % 5)))
    got = cache.get(key)
    assert got is None or float(got.sampled[0, 0, 0]) == float(i % 5), "mixed-up entry"
print("ok")
"""


def test_two_processes_share_the_cache(tmp_path):
    root = tmp_path / "shared"
    code = WORKER.format(tests=str(Path(__file__).parent), root=str(root))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        assert out.decode().strip() == "ok"
    cache = FeatureCache(root)
    assert cache.info()["entries"] == 5
    for i in range(5):
        assert float(cache.get(f"k{i}").sampled[0, 0, 0]) == float(i)
    assert not list((root / "blobs").glob(".*.tmp"))


def test_two_cli_processes_same_video(tmp_path):
    cmd = [sys.executable, "-m", "longvu.cli", "ask", str(VIDEO), "What?", "--model", str(QWEN), "--device", "cpu",
           "--greedy", "--max-new-tokens", "3", "--cache-dir", str(tmp_path / "c"), "--quiet", "--no-stream"]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
        outs.append(out)
    assert outs[0] == outs[1]
    assert FeatureCache(tmp_path / "c").info()["entries"] == 1


def test_cli_cache_commands_and_no_cache(tmp_path, capsys):
    c = str(tmp_path / "c")
    args = ["ask", str(VIDEO), "What?", "--model", str(QWEN), "--device", "cpu", "--greedy", "--max-new-tokens", "2",
            "--quiet", "--no-stream", "--cache-dir", c]  # fmt: skip
    assert main(args + ["--no-cache"]) == 0
    assert main(["cache", "info", "--cache-dir", c]) == 0
    assert "entries: 0" in capsys.readouterr().out
    assert main(args) == 0
    assert main(["cache", "info", "--cache-dir", c]) == 0
    assert "entries: 1 (1 videos)" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", c]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert FeatureCache(c).info()["entries"] == 0


def test_trace_from_cache_passes_parity(tmp_path):
    """A golden case answered twice, the second time from the cache: both traces match."""
    case = json.loads((FIXTURES / "golden" / "d_video1_stc_force" / "case.json").read_text())
    for i in range(2):
        trace = tmp_path / f"t{i}.json"
        assert main(["ask", str(VIDEO), case["case"]["question"], "--model", str(QWEN), "--device", "cpu",
                     "--dtype", "float32", "--greedy", "--max-new-tokens", "16", "--set",
                     "tokenizer_model_max_length=669", "--cache-dir", str(tmp_path / "c"), "--trace", str(trace),
                     "--quiet", "--no-stream"]) == 0  # fmt: skip
        res = subprocess.run([sys.executable, str(FIXTURES / "compare.py"), str(FIXTURES / "golden" / "d_video1_stc_force"),
                              str(trace), "--quiet"], capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stdout
    assert json.loads((tmp_path / "t1.json").read_text())["timings"]["encode_cache_hit"] == 1.0


def test_cache_hit_needs_no_vision_tower(tmp_path):
    from longvu import LongVU

    cache = FeatureCache(tmp_path / "c")
    LongVU.from_pretrained(QWEN, device="cpu", cache=cache).ask(VIDEO, "What?", generation=GREEDY)
    fresh = LongVU.from_pretrained(QWEN, device="cpu", cache=cache)
    ans = fresh.ask(VIDEO, "Describe it.", generation=GREEDY)
    assert ans.trace.data["timings"]["encode_cache_hit"] == 1.0
    assert not fresh.model.siglip_tower.loaded and not fresh.model.dinov2_tower.loaded
