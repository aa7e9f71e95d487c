"""LongVU configuration: one dataclass, one default per knob, read from the checkpoint.

The released checkpoints store the LongVU fields in ``config.json`` next to the
language model's own fields (Qwen2 or Llama).  :class:`LongVUConfig` keeps the
fields the pipeline needs; everything else in the file stays in ``llm_config``
and is handed to the transformers decoder untouched.

Defaults are those of the reference code (``longvu/cambrian_arch.py`` @1b0be5c)
where the checkpoint does not say.  The ``fix_*`` switches each correct one
behaviour of the reference that looks like a bug; they are off by default because
the released weights were trained and evaluated with the bugs in place (see
``docs`` in the README, "Reference quirks").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError

SUPPORTED_MODEL_TYPES = ("cambrian_qwen", "cambrian_llama")
DEFAULT_MODEL = "Vision-CAIR/LongVU_Qwen2_7B"  # what `--model` and `from_pretrained` load by default

# The reference looks for these ids to find the end of the prompt when it works out
# the token budget (cambrian_arch.py L665-670, L940-945).  They are the real models'
# <|endoftext|> (Qwen2) and <|reserved_special_token_0|> (Llama-3) ids, hard-coded
# there; we keep them as data so the budget matches the reference exactly.
REFERENCE_BUDGET_PAD_IDS = {"cambrian_qwen": 151643, "cambrian_llama": 128002}


# Marks a run-time field that changes a video's question-independent encoding (stage 1's decisions, the
# sampler's key masks, the towers' batch shape): the feature cache keys on it (see :func:`feature_fields`).
CHANGES_FEATURES = {"changes_features": True}


@dataclass
class LongVUConfig:
    """Every knob of the LongVU inference pipeline.

    Stage 1 (temporal reduction), stage 2 (selection) and stage 3 (spatial token
    compression) read their thresholds and windows from here; the connector reads
    its sizes.  Build it with :meth:`from_checkpoint` and change fields with
    :meth:`with_overrides`.
    """

    model_type: str = "cambrian_qwen"
    hidden_size: int = 3584
    # --- connector (SVA) ---
    vision_hidden_size: int = 1024
    image_token_len: int = 144  # high-res tokens per frame: a 12x12 query grid
    lowres_token: int = 8  # side of the low-res grid: 8x8
    connector_depth: int = 3
    aux_token_len: int = 576  # each tower's features are resampled to 24x24
    sva_num_heads: int = 16  # hard-coded in the reference's VisionCrossAttentionLayer
    highres: bool = True
    frame_pos: bool = False
    # --- vision towers ---
    vision_tower_names: list[str] = field(
        default_factory=lambda: ["siglip/CLIP-ViT-SO400M-14-384", "facebook/dinov2-giant-res378"]
    )
    dino_image_size: int = 378  # the reference overrides DINOv2's processor to 378 px
    encode_chunk: int = field(
        default=16, metadata=CHANGES_FEATURES
    )  # frames per tower forward pass (the reference uses 64); see README "Precision and devices"
    # --- stage 1: DINOv2 temporal reduction ---
    dino_threshold: float = field(default=0.83, metadata=CHANGES_FEATURES)
    dino_window: int = field(default=16, metadata=CHANGES_FEATURES)
    max_frames_cap: int = field(
        default=400, metadata=CHANGES_FEATURES
    )  # cap after temporal reduction ("in case of OOM")
    # --- stage 2: text-guided selection ---
    text_guided: bool = True  # False: the high-res frames are spread evenly (the ablation baseline, not the paper)
    # --- stage 3: spatial token compression ---
    drop_threshold: float = 0.7  # the reference's getattr default; checkpoints set 0.8
    stc_window: int = 8
    # --- token budget ---
    tokenizer_model_max_length: int = 8192
    inference_max_length: int = 16
    budget_pad_token_id: int | None = None  # None: the reference's hard-coded id
    # --- context policy (see longvu/context.py) ---
    min_visual_tokens: int = 64  # a prompt must leave the video at least this (one 8x8 frame), or it fails
    max_history_share: float = 0.5  # earlier chat turns may take at most this share of the video's room
    # --- fixes of reference behaviour, all off by default ---
    fix_unpad_orientation: bool = field(default=False, metadata=CHANGES_FEATURES)
    fix_frame_pos: bool = False
    fix_dino_middle_frame: bool = field(default=False, metadata=CHANGES_FEATURES)
    # --- transformers' own config for the decoder ---
    llm_config: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"unknown model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.budget_pad_token_id is None:
            self.budget_pad_token_id = REFERENCE_BUDGET_PAD_IDS[self.model_type]
        side = int(round(self.image_token_len**0.5))
        if side * side != self.image_token_len:
            raise ConfigError(f"image_token_len must be a square, got {self.image_token_len}")
        if self.min_visual_tokens < 1:
            raise ConfigError(f"min_visual_tokens must be at least 1, got {self.min_visual_tokens}")
        if not 0 <= self.max_history_share <= 1:
            raise ConfigError(f"max_history_share must be in [0, 1], got {self.max_history_share}")
        if self.dino_window <= 0 or self.stc_window <= 0 or self.max_frames_cap <= 0 or self.encode_chunk <= 0:
            raise ConfigError("dino_window, stc_window, max_frames_cap and encode_chunk must be positive")

    def frame_budget(self, text_len: int = 0) -> int:
        """Frames stage 1 may keep for a prompt with ``text_len`` text tokens (0: an upper bound for every prompt)."""
        per_frame = self.lowres_token**2 if self.highres else self.image_token_len
        return frame_budget(self.tokenizer_model_max_length, self.inference_max_length, per_frame, text_len)

    # ------------------------------------------------------------------ derived
    @property
    def high_side(self) -> int:
        """Side of the high-res grid (12 for 144 tokens)."""
        return int(round(self.image_token_len**0.5))

    @property
    def aux_side(self) -> int:
        """Side of each tower's resampled feature map (24 for 576 tokens)."""
        return int(round(self.aux_token_len**0.5))

    @property
    def is_llama(self) -> bool:
        return self.model_type == "cambrian_llama"

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LongVUConfig:
        """Build from a checkpoint's ``config.json`` content."""
        if "model_type" not in raw:
            raise CheckpointError("config.json has no model_type")
        kw: dict[str, Any] = {"llm_config": dict(raw), "model_type": raw["model_type"]}
        direct = [
            "hidden_size", "vision_hidden_size", "image_token_len", "lowres_token",
            "connector_depth", "highres", "frame_pos", "dino_threshold", "drop_threshold",
            "tokenizer_model_max_length", "inference_max_length", "dino_image_size",
        ]  # fmt: skip
        for name in direct:
            if raw.get(name) is not None:
                kw[name] = raw[name]
        if raw.get("mm_vision_tower_aux_list"):
            kw["vision_tower_names"] = list(raw["mm_vision_tower_aux_list"])
        token_lens = raw.get("mm_vision_tower_aux_token_len_list")
        if token_lens:
            if len(set(token_lens)) != 1:
                raise ConfigError(f"towers with different token lengths are not supported: {token_lens}")
            kw["aux_token_len"] = token_lens[0]
        if raw.get("mm_projector_type", "sva") != "sva":
            raise CheckpointError(f"mm_projector_type {raw.get('mm_projector_type')!r} is not supported (only 'sva')")
        queries = raw.get("query_num_list")
        if queries is not None and list(queries) != [kw.get("image_token_len", cls.image_token_len)]:
            raise CheckpointError(f"query_num_list {queries} is not supported (one group of image_token_len queries)")
        if raw.get("num_query_group", 1) != 1:
            raise CheckpointError(f"num_query_group {raw.get('num_query_group')} is not supported (only 1)")
        return cls(**kw)

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> LongVUConfig:
        path = Path(folder) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{folder}: no config.json (is this a LongVU checkpoint folder?)") from None
        except ValueError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(raw)

    # ---------------------------------------------------------------- overrides
    @classmethod
    def settable_fields(cls) -> dict[str, Any]:
        """Fields that ``--set KEY=VALUE`` may change, with their types."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.name in ("llm_config", "model_type", "hidden_size", "vision_tower_names"):
                continue
            out[f.name] = f.type
        return out

    @classmethod
    def coerce_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """Check ``overrides`` keys and convert their values to the fields' types."""
        allowed = cls.settable_fields()
        out = {}
        for key, value in overrides.items():
            if key not in allowed:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(allowed))}")
            out[key] = _coerce(key, value, allowed[key])
        return out

    def with_overrides(self, overrides: dict[str, Any]) -> LongVUConfig:
        """A copy with ``overrides`` applied; values may be strings (from the CLI)."""
        new = dataclasses.replace(self, **self.coerce_overrides(overrides))
        new.llm_config = dict(self.llm_config)
        return new


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Convert ``value`` to the type of field ``key`` or raise a ConfigError."""
    ann = str(annotation)
    if ann.startswith("bool"):
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} expects true/false, got {value!r}")
    if ann.startswith("int"):
        if ann == "int | None" and (value is None or str(value).lower() in ("none", "null")):
            return None
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key} expects an integer, got {value!r}") from None
    if ann.startswith("float"):
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number, got {value!r}") from None
    return value


# ``--set`` on the command line changes run-time knobs only.  These fields are the checkpoint's
# architecture (the weights' shapes, or the grids and inputs the weights were trained on): a
# different value breaks loading or feeds the LLM tokens it never saw.
ARCHITECTURE_FIELDS: dict[str, str] = {
    "model_type": "the checkpoint's language model family",
    "hidden_size": "the LLM's width, fixed by its weights",
    "vision_hidden_size": "the connector's width, fixed by its weights",
    "image_token_len": "the connector's 12x12 query grid, fixed by its weights",
    "lowres_token": "the 8x8 low-resolution grid the model was trained with",
    "connector_depth": "the connector's layer count, fixed by its weights",
    "aux_token_len": "the towers' 24x24 feature grid the connector was trained with",
    "sva_num_heads": "the connector's attention heads, fixed by the reference",
    "dino_image_size": "the DINOv2 input size the connector was trained with",
    "vision_tower_names": "the checkpoint's vision towers (use --siglip / --dinov2 for local folders)",
    "llm_config": "the decoder's own config",
}

# The values that make sense for each run-time knob, as inclusive (low, high) bounds (None: open).
# Thresholds compare cosine similarities; windows, caps and lengths count frames or tokens.
# A threshold of 1.01 (THRESHOLD_OFF) turns its stage off: no float32 cosine reaches it, while 1.0 still
# drops exact repeats (identical frames or tokens score up to ~1.00002).
THRESHOLD_OFF = 1.01
RUNTIME_RANGES: dict[str, tuple[float | None, float | None]] = {
    "dino_threshold": (0.0, THRESHOLD_OFF),
    "drop_threshold": (0.0, THRESHOLD_OFF),
    "max_history_share": (0.0, 1.0),
    "dino_window": (1, None),
    "stc_window": (1, None),
    "max_frames_cap": (1, None),
    "encode_chunk": (1, None),
    "tokenizer_model_max_length": (1, None),
    "inference_max_length": (0, None),
    "min_visual_tokens": (1, None),
    "budget_pad_token_id": (0, None),
}


def runtime_fields() -> dict[str, Any]:
    """The fields ``--set`` may change on the command line, with their types."""
    return {k: v for k, v in LongVUConfig.settable_fields().items() if k not in ARCHITECTURE_FIELDS}


def feature_fields() -> tuple[str, ...]:
    """Config fields whose values change a video's encoded features (the feature cache keys on them):
    those marked :data:`CHANGES_FEATURES` beside their declaration, and every architecture field.

    ``llm_config`` is left to the model's weight fingerprint, which hashes it.  The other run-time
    fields act on each question only (budgets, selection, STC, frame positions, the prompt), apart from
    the frames kept for any budget, which the cache keys on through their count (``keep_all_below``).
    """
    marked = {f.name for f in dataclasses.fields(LongVUConfig) if f.metadata.get("changes_features")}
    return tuple(sorted((marked | set(ARCHITECTURE_FIELDS)) - {"llm_config"}))


def check_set_options(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` items from the command line, checked: run-time keys only, typed, in range.

    Raises :class:`ConfigError` with one line: an architecture key says why it cannot change, an
    unknown key suggests the nearest known one.
    """
    return check_overrides(parse_set_options(items))


def check_overrides(overrides: dict[str, Any], source: str = "--set") -> dict[str, Any]:
    """Config ``overrides`` (values typed or strings), checked as ``--set`` checks them.

    Run-time keys only, typed, in range; ``source`` names the caller in the one-line
    :class:`ConfigError` (``"--set"``, ``"with_overrides"``).
    """
    allowed = runtime_fields()
    return {key: _check_override(key, raw, allowed, source) for key, raw in overrides.items()}


def _check_override(key: str, raw: Any, allowed: dict[str, Any], source: str) -> Any:

    if key in ARCHITECTURE_FIELDS:
        raise ConfigError(f"{source} {key}: {ARCHITECTURE_FIELDS[key]}; only run-time settings can be set")
    if key not in allowed:
        near = difflib.get_close_matches(key, list(allowed) + list(ARCHITECTURE_FIELDS), n=1)
        hint = f" (did you mean {near[0]}?)" if near else f"; run-time keys: {', '.join(sorted(allowed))}"
        raise ConfigError(f"unknown config key {key!r}{hint}")
    value = _coerce(key, raw, allowed[key])
    low, high = RUNTIME_RANGES.get(key, (None, None))
    if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
        span = f"in [{low:g}, {high:g}]" if high is not None else f"at least {low:g}"
        raise ConfigError(f"{source} {key}={raw}: must be {span}")
    return value


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """Parse ``["KEY=VALUE", ...]`` from the CLI; the values stay strings."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def frame_budget(max_length: int, inference_max_length: int, tokens_per_frame: int, text_len: int = 0) -> int:
    """The one frame-budget rule (the reference's ``max_frames_dino``): how many frames of
    ``tokens_per_frame`` tokens fit beside ``text_len`` text tokens and the answer's reserve, at least 1.

    Used by stage 2's budgets (:func:`longvu.model.compress.selection.compute_budget`), by the encoder
    (every frame is kept below it) and by the memory planner.
    """
    return max(1, (max_length - text_len - inference_max_length) // tokens_per_frame)
