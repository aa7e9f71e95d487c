"""longvu: LongVU (Shen et al., ICML 2025) long-video question answering.

>>> from longvu import LongVU
>>> lv = LongVU.from_pretrained("Vision-CAIR/LongVU_Qwen2_7B")  # doctest: +SKIP
>>> print(lv.ask("video.mp4", "What is the person doing?").text)  # doctest: +SKIP
"""

from .config import LongVUConfig
from .errors import CheckpointError, ConfigError, LongVUError, VideoError
from .pipeline import Answer, GenerationOptions, LongVU
from .trace import Trace
from .video import Sampling, VideoClip, load_video

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "CheckpointError",
    "ConfigError",
    "GenerationOptions",
    "LongVU",
    "LongVUConfig",
    "LongVUError",
    "Sampling",
    "Trace",
    "VideoClip",
    "VideoError",
    "load_video",
]
