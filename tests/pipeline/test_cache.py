"""The on-disk feature cache: hits, exactness, corruption, eviction, two processes."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, QWEN

from longvu import GenerationOptions, LongVU, Sampling
from longvu.cli.main import main
from longvu.config import LongVUConfig, feature_fields
from longvu.model.encode import VisualFeatures, encode_video
from longvu.pipeline import cache as cache_module
from longvu.pipeline.cache import FeatureCache, file_digest

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
    k1 = lv_cached._cache_key(VIDEO, Sampling())
    assert k1 == lv_cached._cache_key(VIDEO, Sampling())
    assert k1 != lv_cached._cache_key(VIDEO, Sampling(fps=2))
    for encoder in ({"dino_threshold": 0.5}, {"fix_unpad_orientation": True}, {"encode_chunk": 32}):
        assert k1 != lv_cached.with_overrides(encoder)._cache_key(VIDEO, Sampling())
    for question in ({"drop_threshold": 0.5}, {"frame_pos": True}, {"text_guided": False}):
        assert k1 == lv_cached.with_overrides(question)._cache_key(VIDEO, Sampling())


def test_key_covers_every_setting_the_encoder_reads(qwen_model):
    read: set[str] = set()

    class Recording(LongVUConfig):
        def __getattribute__(self, name: str):
            read.add(name)
            return super().__getattribute__(name)

    fields = {f.name for f in dataclasses.fields(LongVUConfig)}
    cfg = Recording(**{k: getattr(qwen_model.config, k) for k in fields})
    read.clear()
    encode_video(dataclasses.replace(qwen_model.model, cfg=cfg), VIDEO, keep_all_below=5)
    assert "fix_unpad_orientation" in read and "dino_threshold" in read
    assert read & fields <= set(feature_fields())


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
    size = len(__import__("longvu.pipeline.cache", fromlist=["_encode"])._encode(fake_features()))
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
sys.path[:0] = [{tests!r}, {tests!r} + '/..']
from test_cache import fake_features
from longvu.pipeline.cache import FeatureCache
cache = FeatureCache({root!r})
for i in range(25):
    key = f"k{{i % 5}}"
    cache.put(key, fake_features(fill=float(i % 5)))
    got = cache.get(key)
    assert got is None or float(got.sampled[0, 0, 0]) == float(i % 5), "mixed-up entry"
print("ok")
"""


@pytest.mark.parametrize("corrupt", [False, True])
def test_two_processes_share_the_cache(tmp_path, corrupt):
    root = tmp_path / "shared"
    if corrupt:  # both find it corrupt at once: one rebuilds, neither fails
        root.mkdir()
        (root / "index.sqlite").write_bytes(b"garbage" * 1000)
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
    out = capsys.readouterr().out
    assert "entries: 0" in out and f"folder:  {c} (does not exist yet)" in out
    assert not os.path.exists(c)  # info and clear create nothing
    assert main(["cache", "clear", "--cache-dir", c]) == 0
    assert capsys.readouterr().out == f"nothing to remove: no feature cache in {c}\n" and not os.path.exists(c)
    assert main(args) == 0
    assert main(["cache", "info", "--cache-dir", c]) == 0
    assert "entries: 1 (1 video)" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", c]) == 0
    assert "removed 1 entry from" in capsys.readouterr().out
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


# ---------------------------------------------------------------- safety
def damage_index(root: Path, how: str) -> None:
    index = root / "index.sqlite"
    if how == "garbage":
        index.write_bytes(b"this is not a database" * 100)
        return
    data = bytearray(index.read_bytes())  # a valid header, damaged pages
    assert len(data) >= 8192, len(data)
    data[4096:] = b"\xff" * (len(data) - 4096)
    index.write_bytes(bytes(data))


def filled_cache(root: Path, n: int = 3) -> FeatureCache:
    cache = FeatureCache(root)
    for i in range(n):
        cache.put(f"k{i}", fake_features(fill=float(i)), video=f"/videos/v{i}.mp4")
    import sqlite3

    with sqlite3.connect(root / "index.sqlite") as db:  # fold the WAL into the main file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return cache


@pytest.mark.parametrize("how", ["garbage", "pages"])
def test_corrupt_index_is_moved_aside_and_rebuilt(tmp_path, how, caplog):
    filled_cache(tmp_path)
    damage_index(tmp_path, how)
    cache = FeatureCache(tmp_path)
    assert cache.get("k0") is None  # a miss, not an error
    assert cache.info()["entries"] == 0
    assert any("index was corrupt" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.glob("index.sqlite.corrupt-*"))
    assert not list((tmp_path / "blobs").glob("*.safetensors"))  # orphans of the lost index are gone
    cache.put("k", fake_features())
    assert cache.get("k") is not None and FeatureCache(tmp_path).info()["entries"] == 1


def test_corruption_found_later_is_repaired_on_the_spot(tmp_path):
    cache = filled_cache(tmp_path)
    damage_index(tmp_path, "garbage")  # while the cache object is in use
    assert cache.get("k1") is None
    cache.put("k1", fake_features(fill=5.0))
    assert float(cache.get("k1").sampled[0, 0, 0]) == 5.0


def test_cli_cache_commands_work_on_a_corrupt_index(tmp_path, capsys):
    filled_cache(tmp_path / "c")
    damage_index(tmp_path / "c", "garbage")
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "entries: 0" in capsys.readouterr().out
    damage_index(tmp_path / "c", "garbage")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "c")]) == 0
    assert not list((tmp_path / "c").glob("index.sqlite.corrupt-*"))  # clear removes those too
    damage_index(tmp_path / "c", "garbage")
    args = ["ask", str(VIDEO), "What?", "--model", str(QWEN), "--device", "cpu", "--greedy", "--max-new-tokens", "2",
            "--quiet", "--no-stream", "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    assert main(args) == 0
    assert FeatureCache(tmp_path / "c").info()["entries"] == 1


def test_a_file_replaced_with_the_same_size_and_mtime_is_hashed_again(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"a" * 1000)
    first = cache.video_digest(video)
    st = video.stat()
    assert cache.video_digest(video) == first
    with open(video, "r+b") as f:  # rewritten in place: same inode, size and mtime
        f.write(b"b" * 1000)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert video.stat().st_size == st.st_size and video.stat().st_mtime_ns == st.st_mtime_ns
    second = cache.video_digest(video)
    assert second != first and second == file_digest(video)
    other = tmp_path / "w.mp4"  # replaced by a rename: same size and mtime, new inode
    other.write_bytes(b"c" * 1000)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, video)
    assert cache.video_digest(video) == file_digest(video) != second


def test_cache_files_are_private_and_hold_no_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "umask", os.umask)  # restore whatever the test changes
    old = os.umask(0o022)
    try:
        root = tmp_path / "new" / "cache"
        cache = FeatureCache(root)
        video = tmp_path / "secret-folder" / "holiday.mp4"
        video.parent.mkdir()
        video.write_bytes(b"v" * 100)
        cache.video_digest(video)
        cache.put("k", fake_features(), video=str(video))
    finally:
        os.umask(old)
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert b"secret-folder" not in data and b"holiday" not in data and str(tmp_path).encode() not in data, p
    assert cache.get("k", video=video).path == str(video)  # the path comes from the caller


def test_old_index_is_migrated_without_clear_text_paths(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "index.sqlite") as db:  # schema 1, as the previous release wrote it
        db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, file TEXT NOT NULL, size INTEGER NOT NULL,"
                   " sha256 TEXT NOT NULL, video TEXT, created REAL NOT NULL, last_access REAL NOT NULL)")  # fmt: skip
        db.execute("CREATE TABLE video_hashes (path TEXT, size INTEGER, mtime_ns INTEGER, sha256 TEXT)")
        db.execute("INSERT INTO entries VALUES ('a', 'a.safetensors', 1, 'x', '/home/me/private.mp4', 0, 0)")
        db.execute("INSERT INTO video_hashes VALUES ('/home/me/private.mp4', 1, 1, 'x')")
    cache = FeatureCache(tmp_path)
    assert cache.info()["videos"] == 1
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        db.execute("VACUUM")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "video_hashes" not in tables
    assert b"private.mp4" not in (tmp_path / "index.sqlite").read_bytes()


def test_a_failed_put_is_a_warning(tmp_path, monkeypatch, caplog):
    cache = FeatureCache(tmp_path)

    def disk_full(path, data):
        Path(path).write_bytes(data[:10])  # a partial write, then the error
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_module, "_write_private", disk_full)
    cache.put("k", fake_features())  # no exception
    assert any("No space left on device" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert cache.get("k") is None and cache.info()["entries"] == 0
    assert not list((tmp_path / "blobs").iterdir())  # no partial or temporary file left


def test_a_failed_put_does_not_fail_the_answer(lv_cached, monkeypatch, caplog):
    def disk_full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_module, "_write_private", disk_full)
    ans = lv_cached.ask(VIDEO, "What is shown?", generation=GREEDY)
    assert ans.token_ids and "encode_total" in ans.trace.data["timings"]
    assert any("could not store" in r.getMessage() for r in caplog.records)


FSIZE_CHILD = """
import resource, sys
sys.path[:0] = [{tests!r}, {tests!r} + '/..']
from test_cache import fake_features
from longvu.pipeline.cache import FeatureCache
cache = FeatureCache({root!r})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # as `ulimit -f 4`: any larger write fails
cache.put("big", fake_features(n=64))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("entries", cache.info()["entries"])
"""


def test_a_put_over_the_file_size_limit_is_a_warning(tmp_path):
    code = FSIZE_CHILD.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "entries 0"
    assert "could not store" in res.stderr and "File too large" in res.stderr and "Traceback" not in res.stderr
    assert not list((tmp_path / "blobs").iterdir())


def test_an_index_that_is_a_folder_is_moved_aside(tmp_path):
    (tmp_path / "index.sqlite").mkdir()
    (tmp_path / "index.sqlite" / "junk").write_text("x")
    cache = FeatureCache(tmp_path)
    cache.put("k", fake_features())
    assert cache.get("k") is not None
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert not list(tmp_path.glob("index.sqlite.corrupt-*"))


def _dead_tag() -> str:
    """The owner tag of a process that has exited (as a writer killed mid-write leaves behind)."""
    code = "from longvu.files import owner_tag; print(owner_tag())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_a_killed_writers_blobs_are_counted_then_removed(tmp_path, capsys):
    """Half-written blobs of a dead process: counted by ``cache info``, removed at start and by ``cache clear``;
    a live writer's blob (this process's) is left alone, an untagged one of an older longvu goes with clear."""
    from longvu.files import owner_tag

    cache = FeatureCache(tmp_path / "c")
    cache.put("k1", fake_features())
    dead = [cache.blobs / f".k{i}.{_dead_tag()}-{os.urandom(16).hex()}.tmp" for i in range(3)]
    live = cache.blobs / f".k9.{owner_tag()}-{os.urandom(16).hex()}.tmp"
    old = cache.blobs / f".k8.{os.urandom(16).hex()}.tmp"
    for p in [*dead, live, old]:
        p.write_bytes(b"x" * (1 << 20))
    info = FeatureCache(tmp_path / "c", sweep=False).info()
    assert info["orphans"] == 4 and info["orphan_bytes"] >= 4 << 20 and info["on_disk"] >= 5 << 20
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "4 orphan blob(s)" in capsys.readouterr().out
    FeatureCache(tmp_path / "c")  # a start: the dead writers' blobs go
    assert not any(p.exists() for p in dead) and live.exists() and old.exists()
    assert FeatureCache(tmp_path / "c").clear() == 1
    assert live.exists() and not old.exists()
    assert FeatureCache(tmp_path / "c", sweep=False).info()["orphans"] == 0
