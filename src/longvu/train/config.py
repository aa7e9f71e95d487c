"""``longvu train``'s settings, kept apart from :mod:`longvu.train` so the CLI can show them without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

PARTS = ("projector", "sva", "connector", "llm", "towers")


@dataclass
class TrainConfig:
    """Everything ``longvu train`` takes; one default per knob.

    ``epochs`` counts passes over the data unless ``max_steps`` (optimizer steps) is set.
    ``precision`` is ``"no"``, ``"bf16"`` or ``"fp16"`` (autocast over float32 weights).
    """

    model: str
    data: str
    out: str
    lora: bool = False
    train: tuple[str, ...] = ("connector", "llm")
    max_steps: int = -1
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    resume: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "no"
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 500
    save_total_limit: int | None = 2
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: str | None = None
    no_cache: bool = False
    siglip: str | None = None
    dinov2: str | None = None
    overrides: dict = field(default_factory=dict)
    video_root: str | None = None
    progress: bool = True
