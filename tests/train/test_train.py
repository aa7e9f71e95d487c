"""`longvu train` / `longvu merge` / `--adapter`: what trains, that it learns, and that its outputs load back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import LLAMA, QWEN
from safetensors.torch import load_file
from transformers import TrainerCallback

from longvu.cli.main import main
from longvu.errors import CheckpointError
from longvu.loading.adapter import merge_checkpoint
from longvu.model.compose import compose
from longvu.pipeline.api import LongVU
from longvu.train.data import load_examples
from longvu.train.loop import ConversationDataset, FeatureStore, LongVUForTraining, TrainConfig, mark_trainable, train
from longvu.train.synth import SynthSettings, generate

pytest.importorskip("peft")

SHORT = {"tokenizer_model_max_length": 600}  # 12-s videos then need selection and STC, and steps stay quick


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 12-second 64x64 videos, one question each."""
    out = tmp_path_factory.mktemp("train-data")
    generate(out, SynthSettings(seed=3, minutes=(0.2, 0.2), size=64), 3)
    return out


def config(data, out, **kw) -> TrainConfig:
    base = dict(model=str(QWEN), data=str(data), out=str(out), lora=True, max_steps=4, lr=1e-2, save_steps=2,
                device="cpu", overrides=SHORT, cache_dir=str(data / "cache"), progress=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def sample_logits(lv: LongVU, sample) -> torch.Tensor:
    """Teacher-forced logits of one tokenized example, through the inference composition."""
    with torch.no_grad():
        feats = lv.features(sample.video)
        comp = compose(lv.model, feats, sample.prompt_ids)
        rest = lv.model.embed(sample.rest_ids).unsqueeze(0)
        return lv.model.llm(inputs_embeds=torch.cat([comp.embeds, rest], 1)).logits[0].float()


class _Capture(TrainerCallback):
    """Keeps the logits of the model as training leaves it (its own forward: the sampler as trained)."""

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kw):
        self.sample = train_dataloader.dataset[0]
        with torch.no_grad():
            embeds, _ = model.sample_inputs(self.sample)
            self.logits = model.llm(inputs_embeds=embeds[None]).logits[0].float()


class _StopAt(TrainerCallback):
    """Stops training after ``step`` (the Trainer saves the checkpoint of that step first)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A 4-step LoRA + connector run, and the logits of the model it ends with."""
    out = tmp_path_factory.mktemp("run") / "lora"
    cap = _Capture()
    train(config(data, out), callbacks=[cap])
    return out, cap


def _load(model=QWEN, **kw) -> LongVU:
    return LongVU.from_pretrained(model, device="cpu", dtype="float32", overrides=SHORT, cache=False, **kw)


@pytest.mark.parametrize("parts,lora", [({"projector", "llm"}, True), ({"sva", "projector"}, False)])
def test_gradients_reach_only_the_parts_that_train(data, parts, lora):
    lv = _load()
    examples = load_examples(data)
    ds = ConversationDataset(lv, examples, data / "data.jsonl")
    mark_trainable(lv, parts, config(data, "unused", lora=lora))
    model = LongVUForTraining(lv, FeatureStore(lv, sva="sva" in parts))
    model(ds.samples[:2]).loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable  # every trained tensor gets a gradient, and nothing else does
    zero = {n for n in got if not model.get_parameter(n).grad.abs().sum() > 0}
    assert all(".lora_A." in n for n in zero)  # LoRA's B starts at zero, so A's first gradient is zero
    groups = {
        "lora": any(".lora_" in n for n in got),
        "llm": any(n.startswith("llm.") and ".lora_" not in n for n in got),
        "projector": any(n.startswith(("connector.mm_projector.", "connector.image_newline")) for n in got),
        "sva": any(
            n.startswith(("connector.vision_sampler_0", "connector.mm_projector_aux", "connector.vision_query"))
            for n in got
        ),  # fmt: skip
    }
    assert groups == {"lora": lora, "llm": False, "projector": True, "sva": "sva" in parts}


def test_answer_loss_is_the_lm_loss_without_full_logits():
    from longvu.train.loop import IGNORE_INDEX, answer_loss

    llm = _load().model.llm
    torch.manual_seed(0)
    embeds = torch.randn(2, 9, llm.config.hidden_size)
    labels = torch.randint(0, llm.config.vocab_size, (2, 9))
    labels[:, :4] = IGNORE_INDEX
    labels[1, 7:] = IGNORE_INDEX
    with torch.no_grad():
        want = llm(inputs_embeds=embeds, labels=labels).loss
        got = answer_loss(llm.model(inputs_embeds=embeds).last_hidden_state, labels, llm.lm_head)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_features_are_computed_once_per_video(data):
    lv = _load()
    store = FeatureStore(lv, sva=False)
    video = str(load_examples(data)[0].video)
    first = store.get(video).feats
    assert store.get(video).feats is first and store.encoded == 1  # the second epoch decodes nothing


def test_loss_falls_and_log(trained):
    out, _ = trained
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4]
    assert all(x["lr"] > 0 for x in log)
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    info = json.loads((out / "longvu_adapter.json").read_text())
    assert info["lora"] and info["trained"] == ["llm", "projector", "sva"]
    assert {"adapter_model.safetensors", "adapter_config.json", "connector.safetensors"} <= set(info["files"])


def test_adapter_and_merge_reproduce_the_trained_logits(trained, tmp_path):
    out, cap = trained
    loaded = _load(adapter=out)
    base = _load()
    torch.testing.assert_close(sample_logits(loaded, cap.sample), cap.logits, atol=1e-4, rtol=1e-4)
    before = sample_logits(base, cap.sample)  # training changed them (the selection too: another length)
    assert before.shape != cap.logits.shape or not torch.allclose(before, cap.logits, atol=1e-2)
    exact = merge_checkpoint(QWEN, out, tmp_path / "merged32", dtype="float32")
    torch.testing.assert_close(sample_logits(_load(exact), cap.sample), cap.logits, atol=1e-4, rtol=1e-4)
    merged = merge_checkpoint(QWEN, out, tmp_path / "merged")  # the base's dtype (bfloat16), as released
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    assert index == json.loads((QWEN / "model.safetensors.index.json").read_text())  # the released layout
    for shard in sorted(set(index["weight_map"].values())):
        a, b, c = (load_file(str(folder / shard)) for folder in (QWEN, merged, exact))
        assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
        assert all(torch.equal(b[k], c[k].to(b[k].dtype)) for k in b)  # the float32 merge, rounded
    assert (merged / "vision_towers" / "siglip" / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="trained on another base"):
        _load(merged, adapter=out)


def test_resumed_run_ends_where_an_uninterrupted_one_ends(data, trained, tmp_path):
    out, _ = trained
    cut = tmp_path / "cut"
    train(config(data, cut), callbacks=[_StopAt(2)])
    assert (cut / "checkpoints" / "checkpoint-2" / "longvu_complete").is_file()
    train(config(data, cut, resume=True))
    final = [load_file(str(o / "checkpoints" / "checkpoint-4" / "trainable.safetensors")) for o in (out, cut)]
    assert final[0].keys() == final[1].keys()
    for k in final[0]:
        torch.testing.assert_close(final[0][k], final[1][k], atol=1e-6, rtol=1e-5)
    logs = [[json.loads(x) for x in (o / "train_log.jsonl").read_text().splitlines()] for o in (out, cut)]
    assert [x["step"] for x in logs[1]] == [1, 2, 3, 4]
    assert [round(x["loss"], 4) for x in logs[0]] == [round(x["loss"], 4) for x in logs[1]]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    prog = f"longvu {argv[0]}"
    assert err.startswith(f"{prog}: error: ") and err.endswith(f" (see `{prog} --help`)") and "\n" not in err, err
    return err


def test_malformed_data_is_refused_with_line_numbers(data, tmp_path, capsys):
    lines = (data / "data.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["conversations"] = bad["conversations"][:1]  # no answer to learn
    rel = json.loads(lines[0])["video"]
    good = json.loads(lines[0])
    good["video"] = str(data / rel)
    bad["video"] = str(data / rel)
    (tmp_path / "d.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n{not json\n")
    err = _one_line_error(capsys, ["train", "--model", str(QWEN), "--data", str(tmp_path / "d.jsonl"),
                                   "--out", str(tmp_path / "o"), "--device", "cpu"])  # fmt: skip
    assert "d.jsonl:2:" in err and "1 more line" in err
    assert not (tmp_path / "o").exists()


def test_weight_decay_reaches_the_trainer_and_a_bad_one_is_refused(data, tmp_path, capsys):
    from longvu.train.loop import training_arguments

    assert training_arguments(config(data, tmp_path / "o", weight_decay=0.05), tmp_path / "o",
                              torch.device("cpu")).weight_decay == 0.05  # fmt: skip
    err = _one_line_error(capsys, ["train", "--model", str(QWEN), "--data", str(data), "--out", str(tmp_path / "o"),
                                   "--weight-decay", "-0.1"])  # fmt: skip
    assert "--weight-decay must be in [0, 1)" in err and not (tmp_path / "o").exists()


def test_missing_video_is_one_line_before_training(data, tmp_path, capsys):
    rec = json.loads((data / "data.jsonl").read_text().splitlines()[0])
    rec["video"] = "nowhere.mp4"
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    err = _one_line_error(capsys, ["train", "--model", str(QWEN), "--data", str(tmp_path / "d.jsonl"),
                                   "--out", str(tmp_path / "o"), "--lora"])  # fmt: skip
    assert "d.jsonl:1:" in err and "nowhere.mp4 not found" in err
    assert not (tmp_path / "o").exists()


def test_adapter_errors_are_one_line(trained, data, tmp_path, capsys):
    out, _ = trained
    video = str(load_examples(data)[0].video)
    ask = ["ask", video, "what?", "--device", "cpu", "--no-cache", "-q", "--max-new-tokens", "2"]
    err = _one_line_error(capsys, ask + ["--model", str(LLAMA), "--adapter", str(out)])
    assert "incompatible" in err
    other = tmp_path / "other"
    shutil.copytree(QWEN, other)
    shard = sorted(other.glob("model-*.safetensors"))[0]
    tensors = load_file(str(shard))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    from safetensors.torch import save_file

    save_file(tensors, str(shard), metadata={"format": "pt"})
    err = _one_line_error(capsys, ask + ["--model", str(other), "--adapter", str(out)])
    assert "trained on another base" in err
    err = _one_line_error(capsys, ask + ["--model", str(QWEN), "--adapter", str(tmp_path)])
    assert "not an adapter folder" in err


@pytest.mark.parametrize("checkpoint", [QWEN, LLAMA])
def test_labels_are_the_answers_of_every_turn(checkpoint, tmp_path):
    from longvu.train.data import Example
    from longvu.train.loop import IGNORE_INDEX, example_tokens

    lv = _load(checkpoint)
    turns = [("human", "<image>\nWhat is shown?"), ("gpt", "A red circle."), ("human", "Then?"), ("gpt", "It moves.")]
    sample = example_tokens(lv, Example(1, "x", tmp_path / "v.mp4", turns))
    conv = lv.conversation(turns=[("user", "What is shown?")])
    assert sample.prompt_ids == lv.prompt_ids(conv)[0]  # the first question exactly as inference builds it
    learned = [t for t, lab in zip(sample.rest_ids, sample.rest_labels) if lab != IGNORE_INDEX]
    stop = conv.stop_str
    assert lv.tokenizer.decode(learned) == f"A red circle.{stop}It moves.{stop}"
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(sample.rest_ids, sample.rest_labels))
    conv.add_assistant("A red circle.")
    conv.add_user("Then?")
    whole = lv.tokenizer.decode([t for t in sample.prompt_ids if t >= 0] + sample.rest_ids)
    assert whole.startswith(lv.tokenizer.decode([t for t in lv.prompt_ids(conv)[0] if t >= 0]))


def test_text_only_lines_train_through_the_same_composition(data, tmp_path):
    """A line with no video (LLaVA-style text-only SFT) is its prompt's text embeddings plus the answers."""
    from longvu.train.data import Example
    from longvu.train.loop import IGNORE_INDEX, example_tokens

    lv = _load()
    turns = [("human", "Which is larger, 3 or 4?"), ("gpt", "4")]
    sample = example_tokens(lv, Example(1, "t", None, turns))
    conv = lv.conversation(turns=[("user", "Which is larger, 3 or 4?")], video=False)
    assert sample.video is None and sample.prompt_ids == lv.prompt_ids(conv)[0] and -200 not in sample.prompt_ids
    store = FeatureStore(lv, sva=False)
    embeds, labels = LongVUForTraining(lv, store).sample_inputs(sample)
    ids = sample.prompt_ids + sample.rest_ids
    assert torch.equal(embeds, lv.model.embed(ids)) and store.encoded == 0
    assert labels == [IGNORE_INDEX] * len(sample.prompt_ids) + sample.rest_labels
    mixed = tmp_path / "mixed.jsonl"
    lines = (data / "data.jsonl").read_text().splitlines()[:1]
    lines.append(json.dumps({"id": "t", "conversations": [{"from": "human", "value": "Say A."},
                                                           {"from": "gpt", "value": "A"}]}))  # fmt: skip
    mixed.write_text("\n".join(lines) + "\n")
    cfg = config(data, tmp_path / "run", max_steps=2, save_steps=5, video_root=str(data))
    cfg.data = str(mixed)
    out = train(cfg)
    assert [x["step"] for x in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())] == [1, 2]


def test_full_llm_training_writes_loadable_weights(data, tmp_path):
    cfg = config(data, tmp_path / "full", lora=False, train=("llm", "projector"), max_steps=1, save_steps=5,
                 gradient_checkpointing=True)  # fmt: skip
    out = train(cfg)
    info = json.loads((out / "longvu_adapter.json").read_text())
    assert not info["lora"] and set(info["files"]) == {"llm.safetensors", "connector.safetensors"}
    trained = load_file(str(out / "llm.safetensors"))
    lv = _load(adapter=out)
    for name, value in lv.model.llm.state_dict().items():
        assert torch.equal(value, trained[name]), name
    assert not (out / "connector.safetensors").exists() or all(
        k.startswith(("model.mm_projector.", "model.image_newline"))
        for k in load_file(str(out / "connector.safetensors"))
    )


def test_train_command_prints_only_its_result(data, tmp_path):
    """Fresh `longvu train --lora` and `longvu ask --adapter` processes: no library notes on stderr (torchao's missing CUDA kernels,
    peft's deprecated-property warning), one line on stdout."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "longvu.cli", "train", "--model", str(QWEN), "--data", str(data), "--out", str(out),
           "--lora", "--max-steps", "1", "--device", "cpu", "--no-cache", "-q",
           "--set", "tokenizer_model_max_length=600"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert res.stdout.strip() == f"trained: {out} (log {out / 'train_log.jsonl'})"
    video = next((data / "videos").iterdir())
    ask = [sys.executable, "-m", "longvu.cli", "ask", str(video), "What colour?", "--model", str(QWEN),
           "--adapter", str(out), "--max-new-tokens", "2", "--device", "cpu", "--no-cache", "-q"]  # fmt: skip
    res = subprocess.run(ask, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stderr == "", res.stderr  # loading the LoRA adapter is quiet too
