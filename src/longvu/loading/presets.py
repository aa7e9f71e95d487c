"""The released LongVU checkpoints' configurations, as data (no weights).

``longvu plan`` predicts memory for these without downloading anything, and
``scripts/make_random_checkpoint.py`` writes random-weight checkpoints of the same
shapes.  The decoder fields are the public configs of Qwen2-7B-Instruct and
Llama-3.2-3B-Instruct (the bases LongVU was fine-tuned from); the LongVU fields are
those of the parity fixtures' ``config.json`` (derived from the reference's training
code, see ``/work/shared/parity/README.md``), with the real widths.  The towers are
``google/siglip-so400m-patch14-384`` and ``facebook/dinov2-giant``.

``tokenizer_len`` is ``len(tokenizer)`` of the real tokenizers: the loader shrinks
the decoder's vocabulary to it (Qwen2 pads 151646 to 152064 rows).
"""

from __future__ import annotations

import copy
from typing import Any

# Fields every LongVU config.json carries besides the decoder's own (values of the reference).
_LONGVU_FIELDS: dict[str, Any] = {
    "connect_layer": 2,
    "connector_depth": 3,
    "connector_only": True,
    "dino_threshold": 0.83,
    "drop_threshold": 0.8,
    "frame_pos": False,
    "freeze_mm_mlp_adapter": False,
    "highres": True,
    "highres_connect": False,
    "image_aspect_ratio": "pad",
    "image_position": 91,
    "image_token_len": 144,
    "inference_max_length": 16,
    "is_image_newline": True,
    "is_st_sampler": False,
    "lowres_token": 8,
    "mm_patch_merge_type": "flat",
    "mm_projector_lr": None,
    "mm_projector_type": "sva",
    "mm_use_im_patch_token": False,
    "mm_use_im_start_end": False,
    "mm_vision_sampler_lr": None,
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower_aux_list": ["siglip/CLIP-ViT-SO400M-14-384", "facebook/dinov2-giant-res378"],
    "mm_vision_tower_aux_token_len_list": [576, 576],
    "mm_vision_tower_lr": None,
    "num_query_group": 1,
    "query_num_list": [144],
    "tokenizer_model_max_length": 8192,
    "tokenizer_padding_side": "right",
    "tune_mm_mlp_adapter": False,
    "unfreeze_mm_vision_tower": False,
    "use_cache": False,
    "use_mm_proj": True,
    "vision_hidden_size": 1024,
    "vision_tower_aux_token_len_list": [576, 576],
}

QWEN2_7B: dict[str, Any] = {
    "_name_or_path": "LongVU_Qwen2_7B",
    "architectures": ["CambrianQwenForCausalLM"],
    "model_type": "cambrian_qwen",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.4",
    "use_sliding_window": False,
    "vocab_size": 152064,
    **_LONGVU_FIELDS,
}

LLAMA32_3B: dict[str, Any] = {
    "_name_or_path": "LongVU_Llama3_2_3B",
    "architectures": ["CambrianLlamaForCausalLM"],
    "model_type": "cambrian_llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 24,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.44.2",
    "vocab_size": 128256,
    **_LONGVU_FIELDS,
}

# google/siglip-so400m-patch14-384: a full SiglipModel (the text half is stored, never loaded).
SIGLIP_SO400M: dict[str, Any] = {
    "architectures": ["SiglipModel"],
    "initializer_factor": 1.0,
    "model_type": "siglip",
    "text_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "max_position_embeddings": 64,
        "model_type": "siglip_text_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "vocab_size": 32000,
    },
    "torch_dtype": "float32",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 384,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
    },
}

# facebook/dinov2-giant: SwiGLU FFN (4096 hidden), layerscale, 518 px / patch 14 position grid.
DINOV2_GIANT: dict[str, Any] = {
    "apply_layernorm": True,
    "architectures": ["Dinov2Model"],
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 1536,
    "image_size": 518,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-06,
    "layerscale_value": 1.0,
    "mlp_ratio": 4,
    "model_type": "dinov2",
    "num_attention_heads": 24,
    "num_channels": 3,
    "num_hidden_layers": 40,
    "patch_size": 14,
    "qkv_bias": True,
    "torch_dtype": "float32",
    "use_swiglu_ffn": True,
}


PRESETS: dict[str, dict[str, Any]] = {
    "Vision-CAIR/LongVU_Qwen2_7B": {
        "like": "qwen2-7b",
        "config": QWEN2_7B,
        "tokenizer_len": 151646,
        "generation_config": {
            "bos_token_id": 151643,
            "do_sample": True,
            "eos_token_id": [151645, 151643],
            "pad_token_id": 151643,
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
        },
    },
    "Vision-CAIR/LongVU_Llama3_2_3B": {
        "like": "llama3.2-3b",
        "config": LLAMA32_3B,
        "tokenizer_len": 128256,
        "generation_config": {
            "bos_token_id": 128000,
            "do_sample": True,
            "eos_token_id": [128001, 128008, 128009],
            "temperature": 0.6,
            "top_p": 0.9,
        },
    },
}
ALIASES = {"qwen2-7b": "Vision-CAIR/LongVU_Qwen2_7B", "llama3.2-3b": "Vision-CAIR/LongVU_Llama3_2_3B"}
ALIASES.update({k.split("/")[1]: k for k in PRESETS})
TOWERS: dict[str, dict[str, Any]] = {"siglip": SIGLIP_SO400M, "dinov2": DINOV2_GIANT}


def preset(name: str) -> dict[str, Any] | None:
    """A deep copy of a released model's preset (by hub id, folder name or ``--like`` alias), or None."""
    key = ALIASES.get(name, name)
    return copy.deepcopy(PRESETS[key]) if key in PRESETS else None
