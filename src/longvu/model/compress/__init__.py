"""The paper's three compression stages, as pure functions on tensors.

* :mod:`.temporal`  - stage 1, DINOv2-similarity frame reduction (Sec. 3.1)
* :mod:`.selection` - stage 2, text-guided high/low resolution choice (Sec. 3.2)
* :mod:`.spatial`   - stage 3, spatial token compression (Sec. 3.3)
"""

from .selection import Budget, TextGuidedResult, compute_budget, select_high_res, use_mixed_resolution
from .spatial import STCResult, spatial_token_compression
from .temporal import TemporalResult, cap_frames, select_frames, select_in_window, window_similarity

__all__ = [
    "Budget",
    "STCResult",
    "TemporalResult",
    "TextGuidedResult",
    "compute_budget",
    "select_high_res",
    "spatial_token_compression",
    "use_mixed_resolution",
    "cap_frames",
    "select_frames",
    "select_in_window",
    "window_similarity",
]
