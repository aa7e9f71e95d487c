"""benchmarks/ablation.py: its rows, when a stage counts as acting, its statistics, tables and docs block
(no model, no eval)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.ablation import (
    CONTEXT,
    KNOBS,
    OFF_THRESHOLD,
    SETTING_NAMES,
    Setting,
    acted,
    build_settings,
    cell,
    markdown,
    parse_args,
    run_key,
    stage_counts,
    table,
    write_docs,
)
from longvu.model.compress.spatial import spatial_token_compression
from longvu.model.compress.temporal import select_frames, window_similarity

ON = {"dino_threshold": 0.83, "drop_threshold": 0.8, "text_guided": True}  # the reference checkpoints' values


def test_each_row_adds_exactly_one_stage_to_the_row_above():
    settings = build_settings(ON, 256)
    assert [s.name for s in settings] == SETTING_NAMES == ["uniform", "frames", "text", "stc"]
    base = settings[0]
    assert base.uniform and base.knob is None
    assert base.overrides == {"dino_threshold": OFF_THRESHOLD, "drop_threshold": OFF_THRESHOLD, "text_guided": False,
                              CONTEXT: 256}  # fmt: skip
    for above, row in zip(settings, settings[1:]):
        changed = {k for k in row.overrides if row.overrides[k] != above.overrides[k]}
        assert changed == {row.knob} and row.overrides[row.knob] == ON[row.knob] and not row.uniform
        assert set(row.overrides) == set(KNOBS) | {CONTEXT} and row.overrides[CONTEXT] == 256
    assert settings[-1].overrides == {**ON, CONTEXT: 256}  # the last row is the full method


def test_a_stage_acts_only_where_its_counts_say_so():
    assert acted("text_guided", {"high_res_frames": 3, "frames_kept": 20})
    assert not acted("text_guided", {"high_res_frames": 20, "frames_kept": 20})  # all high-res: nothing to choose
    assert not acted("text_guided", {"high_res_frames": 0, "frames_kept": 20})
    assert acted("drop_threshold", {"stc_applied": True}) and not acted("drop_threshold", {"stc_applied": False})
    assert acted("dino_threshold", {"frames_kept": 40, "frames_sampled": 120})
    assert not acted("dino_threshold", {"frames_kept": 12, "frames_sampled": 12})
    assert acted(None, {})


def test_cell_statistics():
    def line(i, ok, fam):
        return {"qid": f"q{i}", "correct": ok, "category": fam, "stc_applied": i % 2 == 0, "frames_kept": 10}

    full = [line(i, True, ("word", "colour")[i % 2]) for i in range(30)]
    uniform = [line(i, i < 21, ("word", "colour")[i % 2]) for i in range(30)]
    c = cell(full, "drop_threshold", above=uniform, uniform=uniform)
    assert (c["right"], c["n"], c["accuracy"]) == (30, 30, 100.0)
    assert c["interval"] == [88.6, 100.0] and c["acted"] == 15
    assert c["vs_above"] == {"only_a": 9, "only_b": 0, "p": pytest.approx(2 / 2**9)}
    assert c["per_family"]["word"] == {"n": 15, "right": 15, "interval": [79.6, 100.0]}
    assert c["mean_frames_kept"] == 10.0
    assert "vs_above" not in cell(uniform, None, None, None)


def test_tables_mark_rows_whose_stage_cannot_act():
    settings = build_settings(ON, 256)
    base = {"n": 4, "right": 2, "accuracy": 50.0, "interval": [15.0, 85.0], "mean_frames_kept": 7.0,
            "mean_visual_tokens": 118.0, "per_family": {"word": {"n": 4, "right": 2, "interval": [15.0, 85.0]}}}  # fmt: skip
    test = {"only_a": 1, "only_b": 0, "p": 1.0}
    results = [
        {"setting": "uniform", "set": "short", **base},
        {"setting": "frames", "set": "short", **base, "vs_above": test, "vs_uniform": test},
        {"setting": "text", "set": "short", **base, "cannot_act": True, "vs_above": test},
    ]
    lines = table(settings, results, ["short"]).splitlines()
    assert lines[2] == "| uniform sampling (frames matched) | 2/4 = 50.0% [15.0, 85.0] | - | - | 7.0 / 118 |"
    assert lines[3] == "| + frame reduction (DINOv2) | 2/4 = 50.0% [15.0, 85.0] | p=1 (1:0) | p=1 (1:0) | 7.0 / 118 |"
    assert lines[4] == "| + text-guided selection | cannot act here (= row above) | - | - | 7.0 / 118 |"
    assert lines[5] == "| + STC (full method) | - | - | - | - |"


def test_docs_block_is_generated_from_the_reports(tmp_path):
    settings = build_settings(ON, 256)
    report = {"format": "ablation/2", "model": "m", "adapter": None, "device": "cpu", "context": 256,
              "command": "python -m benchmarks.ablation --model m", "checkpoint_values": ON,
              "sets": {"short": {"seeds": [1, 2], "minutes": [0.2, 0.4], "videos": 2, "families": ["word"]}},
              "settings": [s.__dict__ for s in settings],
              "results": [{"setting": "uniform", "set": "short", "n": 4, "right": 3, "accuracy": 75.0,
                           "interval": [30.1, 95.4], "mean_frames_kept": 5.0, "mean_visual_tokens": 90.0,
                           "per_family": {"word": {"n": 4, "right": 3, "interval": [30.1, 95.4]}}}]}  # fmt: skip
    (tmp_path / "res" / "ablation_ctx256").mkdir(parents=True)
    (tmp_path / "res" / "ablation_ctx256" / "ablation.json").write_text(json.dumps(report))
    docs = tmp_path / "page.md"
    docs.write_text("intro\n<!-- ablation:start -->\nstale table\n<!-- ablation:end -->\nafter\n")
    write_docs(tmp_path / "res", docs)
    text = docs.read_text()
    assert text.startswith("intro\n<!-- ablation:start") and text.endswith("<!-- ablation:end -->\nafter\n")
    assert "stale" not in text and markdown(report, [Setting(**s.__dict__) for s in settings]) in text
    assert "3/4 = 75.0% [30.1, 95.4]" in text
    docs.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        write_docs(tmp_path / "res", docs)


def test_off_threshold_keeps_identical_frames_and_tokens_that_1_0_may_drop():
    # 32 identical frames (two DINOv2 windows): their similarity is 1.0 up to float32 rounding.
    feats = torch.randn(1, 576, 1536, generator=torch.Generator().manual_seed(0)).repeat(32, 1, 1)
    sim = torch.cat([window_similarity(feats[:16]), window_similarity(feats[16:])])
    assert (sim - 1.0).abs().max() < 1e-4
    kept = select_frames(sim, [16, 16], max_frames=1, threshold=OFF_THRESHOLD, window=16, cap=400).kept
    assert kept == list(range(32))
    # STC on 16 identical frames of 10 tokens: every token is kept by the similarity rule.
    frames = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(1)).repeat(16, 1, 1)
    stc = spatial_token_compression(frames, max_visual_len=1000, drop_threshold=OFF_THRESHOLD, window=8)
    assert stc.reduced_len == 160 and stc.tokens.shape == (160, 64)
    assert spatial_token_compression(frames, max_visual_len=1000, drop_threshold=0.8, window=8).reduced_len == 20


def test_stage_counts_from_a_trace():
    trace = {
        "counts": {"sampled_frames": 25, "frames_after_dino": 4, "visual_tokens_after_stc_drop": 288,
                   "visual_tokens_final": 288, "sequence_length": 413},
        "frames": {"high_res": [2]}, "stc": {"applied": False},
    }  # fmt: skip
    assert stage_counts(trace) == {
        "frames_sampled": 25, "frames_kept": 4, "high_res_frames": 1, "tokens_after_stc_drop": 288,
        "visual_tokens": 288, "sequence_length": 413, "stc_applied": False,
    }  # fmt: skip


def test_defaults():
    args = parse_args(["--model", "ckpt"])
    assert (args.context, args.n, args.short_seeds, args.long_seeds) == (256, 34, [101, 201], [102, 202])
    assert (args.short_minutes, args.long_minutes) == ([0.2, 0.4], [2.0, 4.0])
    assert args.families == ["colour", "shape", "word"]
    assert parse_args(["--docs"]).docs
    with pytest.raises(SystemExit):
        parse_args([])


def test_a_model_retrained_in_place_gets_new_runs(tmp_path):
    # a re-run resumes its answers from runs/<run_key>: new weights at the same path must not reuse them
    ckpt = tmp_path / "ckpt"
    (ckpt / "vision_towers").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"a" * 100)
    (ckpt / "vision_towers" / "model.safetensors").write_bytes(b"t" * 100)
    args = parse_args(["--model", str(ckpt)])
    first = run_key(args)
    assert first.startswith("ckpt-ctx256-") and run_key(args) == first
    (ckpt / "vision_towers" / "model.safetensors").write_bytes(b"u" * 100)  # only a tower retrained
    second = run_key(args)
    assert second != first
    assert run_key(parse_args(["--model", str(ckpt), "--context", "512"])) not in (first, second)
    assert run_key(parse_args(["--model", "org/hub-name"])).startswith("hub-name-ctx256-")
