"""Generation: sampling, cancellation, errors crossing threads, and no instrumentation when off."""

from __future__ import annotations

import threading

import pytest
from conftest import FIXTURES

from longvu import GenerationOptions, LongVU
from longvu.errors import Cancelled
from longvu.model.observe import ParityObserver
from longvu.pipeline.api import _Detokenizer

VIDEO = FIXTURES / "videos" / "video1.mp4"


@pytest.fixture(scope="module")
def feats(qwen_model):
    return qwen_model.features(VIDEO)


def answer(lv, feats, opts: GenerationOptions, **kw):
    conv = lv.conversation()
    conv.add_user("What is shown?")
    stream = lv.generate(feats, conv, generation=opts, **kw)
    pieces = list(stream)
    return stream.answer, pieces


def test_sampling_is_seeded_and_differs_from_greedy(qwen_model, feats):
    sampled = GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=7)
    a, _ = answer(qwen_model, feats, sampled)
    b, _ = answer(qwen_model, feats, sampled)
    c, _ = answer(qwen_model, feats, GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=8))
    g, _ = answer(qwen_model, feats, GenerationOptions(max_new_tokens=12, greedy=True))
    assert a.token_ids == b.token_ids  # same seed, same answer
    assert a.token_ids != c.token_ids and a.token_ids != g.token_ids


def test_an_error_in_generation_reaches_the_caller(qwen_model, feats, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(qwen_model.model.llm, "generate", boom)
    with pytest.raises(RuntimeError, match="caught fire"):
        answer(qwen_model, feats, GenerationOptions(max_new_tokens=4, greedy=True))


def test_production_path_keeps_no_logits_and_no_checksums(qwen_model, feats, monkeypatch):
    seen = {}
    real = qwen_model.model.llm.generate

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(qwen_model.model.llm, "generate", spy)
    plain, _ = answer(qwen_model, feats, GenerationOptions(max_new_tokens=4, greedy=True))
    assert seen["generation_config"].output_logits is False
    assert "logits_step0" not in plain.trace.data and set(plain.trace.data["inputs_embeds"]) == {"shape"}
    assert plain.arrays == {}
    obs = ParityObserver()
    traced, _ = answer(qwen_model, feats, GenerationOptions(max_new_tokens=4, greedy=True), observer=obs)
    assert seen["generation_config"].output_logits is True
    assert traced.token_ids == plain.token_ids
    assert traced.trace.data["logits_step0"]["argmax"] == traced.token_ids[0]
    assert {"sum", "abs_sum", "sq_sum", "first_row", "last_row"} <= set(traced.trace.data["inputs_embeds"])


def test_cancel_stops_generation(qwen_model, feats):
    cancel = threading.Event()
    conv = qwen_model.conversation()
    conv.add_user("What is shown?")
    stream = qwen_model.generate(feats, conv, generation=GenerationOptions(max_new_tokens=400, greedy=True),
                                 cancel=cancel)  # fmt: skip
    for _ in stream:
        cancel.set()
    assert stream.answer.trace.data["generation"]["stopped_by"] == "cancelled"
    assert len(stream.answer.token_ids) < 400


def test_leaving_the_loop_stops_and_joins_the_generation(qwen_model, feats):
    before = {t.name for t in threading.enumerate()}
    conv = qwen_model.conversation()
    conv.add_user("What is shown?")
    stream = qwen_model.generate(feats, conv, generation=GenerationOptions(max_new_tokens=400, greedy=True))
    it = iter(stream)
    next(it)
    it.close()  # what a `break` or Ctrl-C in the consumer does
    assert stream.answer is None
    assert "longvu-generate" not in {t.name for t in threading.enumerate()} - before


class CountdownEvent:
    """An event that reports itself set after ``n`` checks: cancels at a deterministic point."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_cancel_reaches_the_encoder(qwen_model):
    lv = LongVU(qwen_model.model, cache=None)  # no cache: the encoder runs
    with pytest.raises(Cancelled):
        lv.features(VIDEO, cancel=CountdownEvent(5))  # set while frames are streaming in
    with pytest.raises(Cancelled):
        lv.features(VIDEO, cancel=CountdownEvent(21))  # set between SigLIP chunks (21 frames, then chunks)
    assert len(lv.features(VIDEO, cancel=CountdownEvent(10**6))) == 21


def test_max_new_tokens_is_capped_by_the_llm_positions(qwen_model, feats, monkeypatch):
    first, _ = answer(qwen_model, feats, GenerationOptions(max_new_tokens=2, greedy=True))
    seq = first.trace.data["counts"]["sequence_length"]
    monkeypatch.setattr(qwen_model.model.llm.config, "max_position_embeddings", seq + 40)
    a, _ = answer(qwen_model, feats, GenerationOptions(max_new_tokens=1000, greedy=True))
    assert a.trace.data["generation"]["max_new_tokens"] == 40
    assert seq + len(a.token_ids) <= seq + 40


def test_incremental_detokenizer_equals_full_decode(qwen_model):
    tok = qwen_model.tokenizer
    text = "Café → naïve 🎬 frames: 1, 2, 3 — done."
    ids = tok(text, add_special_tokens=False).input_ids
    d = _Detokenizer(tok)
    pieces = [d.add([i]) for i in ids]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_cli_stderr_holds_only_our_own_lines(capsys):
    from conftest import QWEN

    from longvu.cli.main import main

    rc = main(["ask", str(VIDEO), "What is shown?", "--model", str(QWEN), "--device", "cpu", "--greedy",
               "--max-new-tokens", "3", "--no-stream"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0
    assert "transformers" not in err and "Warning" not in err, err
