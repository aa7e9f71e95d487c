"""The one object every product wraps: :class:`LongVU` (with :class:`Answer` and :class:`ChatSession`),
the feature cache (``cache``) and the compression trace (``trace``).

The names are imported on first use, so ``longvu.pipeline.cache`` (``longvu cache info``) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Answer", "ChatSession", "LongVU"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'longvu.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(".api", __name__), name)
