"""longvu: LongVU (Shen et al., ICML 2025) long-video question answering.

>>> from longvu import LongVU
>>> lv = LongVU.from_pretrained("Vision-CAIR/LongVU_Qwen2_7B")  # doctest: +SKIP
>>> print(lv.ask("video.mp4", "What is the person doing?").text)  # doctest: +SKIP

The public names are imported on first use (a module ``__getattr__``), so importing a
light submodule (``longvu.cli.main`` for ``longvu --help``, ``longvu.config``) does not
import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "Answer": "pipeline.api",
    "ChatSession": "pipeline.api",
    "GenerationOptions": "model.generation",
    "LongVU": "pipeline.api",
    "LongVUConfig": "config",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "LongVUError": "errors",
    "VideoError": "errors",
    "MediaLimits": "model.intake",
    "Sampling": "model.video",
    "Trace": "pipeline.trace",
    "VideoClip": "model.video",
    "load_video": "model.video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'longvu' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
