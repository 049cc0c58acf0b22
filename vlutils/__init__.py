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
from . import cache, policy
from .cache import MediaCache, set_cache
from .policy import SafetyPolicy, set_policy
from .resize import ceil_by_factor, floor_by_factor, round_by_factor, smart_resize
from .sources import FetchSettings
from .vision_process import process_vision_info

__all__ = [
    "FPS", "FPS_MAX_FRAMES", "FPS_MIN_FRAMES", "FRAME_FACTOR", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM",
    "MAX_NUM_WORKERS_FETCH_VIDEO", "MAX_RATIO", "MODEL_SEQ_LEN", "SPATIAL_MERGE_SIZE", "VIDEO_MAX_TOKEN_NUM",
    "VIDEO_MIN_TOKEN_NUM", "VisionInputError", "fetch_image", "to_rgb", "extract_vision_info", "policy",
    "SafetyPolicy", "set_policy", "ceil_by_factor", "floor_by_factor", "round_by_factor", "smart_resize",
    "FetchSettings", "process_vision_info", "cache", "MediaCache", "set_cache",
]

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__version__ = "0.1.0"


# Names whose modules import torch (or video backends): loaded on first use so that
# ``import vlutils`` stays light (about 0.2 s, no torch).
_LAZY = {
    "video": (
        "fetch_video", "smart_nframes", "get_video_reader_backend", "VIDEO_READER_BACKENDS",
        "calculate_video_frame_range", "VideoMetadata",
    ),
    "inputs": ("build_inputs",),
    "rope": ("get_rope_index", "decode_position_ids"),
    "processor": ("patchify", "patchify_image", "patchify_video", "get_preset", "VisionPreset", "PRESETS"),
    "chat": ("format_chat", "expand_placeholders"),
    "grounding": ("grounding",),  # the module itself: vlutils.grounding.parse(...)
    "aio": ("aprocess_vision_info", "afetch_image", "afetch_video"),
    "hf_inputs": ("processor_inputs",),
    "count": ("count_tokens",),
    "tokenizer": ("load_tokenizer",),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}
__all__ += list(_LAZY_NAMES)


def __getattr__(name: str):
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'vlutils' has no attribute {name!r}")
    import importlib

    imported = importlib.import_module(f"{__name__}.{module}")
    value = imported if name == module else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))
