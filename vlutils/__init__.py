"""vlutils: vision inputs for Qwen2-VL-family models, a drop-in for qwen-vl-utils 0.0.14.

Switch with one import change::

    from vlutils import process_vision_info
"""

import logging as _logging

from .constants import (
    FPS,
    FPS_MAX_FRAMES,
    FPS_MIN_FRAMES,
    FRAME_FACTOR,
    IMAGE_MAX_TOKEN_NUM,
    IMAGE_MIN_TOKEN_NUM,
    MAX_NUM_WORKERS_FETCH_VIDEO,
    MAX_RATIO,
    MODEL_SEQ_LEN,
    SPATIAL_MERGE_SIZE,
    VIDEO_MAX_TOKEN_NUM,
    VIDEO_MIN_TOKEN_NUM,
)
from .errors import VisionInputError
from .image import fetch_image, to_rgb
from .messages import extract_vision_info
from . import policy
from .policy import SafetyPolicy, set_policy
from .resize import ceil_by_factor, floor_by_factor, round_by_factor, smart_resize
from .sources import FetchSettings
from .vision_process import process_vision_info

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__version__ = "0.1.0"


def __getattr__(name: str):
    """Video names load lazily so that ``import vlutils`` stays light."""
    if name in {"fetch_video", "smart_nframes", "get_video_reader_backend", "VIDEO_READER_BACKENDS"}:
        from . import video

        return getattr(video, name)
    raise AttributeError(f"module 'vlutils' has no attribute {name!r}")
