"""Config loading and --set overrides."""

from __future__ import annotations

import pytest
from conftest import LLAMA, QWEN

from longvu.config import LongVUConfig, parse_set_options
from longvu.errors import ConfigError


def test_reads_checkpoint_fields():
    cfg = LongVUConfig.from_checkpoint(QWEN)
    assert cfg.model_type == "cambrian_qwen" and cfg.hidden_size == 64 and cfg.vision_hidden_size == 64
    assert cfg.drop_threshold == 0.8 and cfg.dino_threshold == 0.83 and cfg.tokenizer_model_max_length == 8192
    assert cfg.budget_pad_token_id == 151643
    assert LongVUConfig.from_checkpoint(LLAMA).budget_pad_token_id == 128002


def test_overrides_are_typed():
    cfg = LongVUConfig.from_checkpoint(QWEN)
    new = cfg.with_overrides(
        parse_set_options(["dino_threshold=0.9", "tokenizer_model_max_length=669", "frame_pos=true"])
    )
    assert new.dino_threshold == 0.9 and new.tokenizer_model_max_length == 669 and new.frame_pos is True
    assert cfg.tokenizer_model_max_length == 8192  # the original is unchanged


@pytest.mark.parametrize(
    "item,msg",
    [
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("tokenizer_model_max_length=abc", "expects an integer"),
        ("dino_threshold=high", "expects a number"),
        ("frame_pos=maybe", "expects true/false"),
    ],
)
def test_bad_overrides(item, msg):
    cfg = LongVUConfig.from_checkpoint(QWEN)
    with pytest.raises(ConfigError, match=msg):
        cfg.with_overrides(parse_set_options([item]))


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(["dino_threshold"])


def test_unknown_model_type():
    with pytest.raises(ConfigError, match="unknown model_type 'llava'"):
        LongVUConfig.from_dict({"model_type": "llava"})
