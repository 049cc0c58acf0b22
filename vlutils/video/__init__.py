"""Video inputs: ``fetch_video`` and the sampling helpers of qwen-vl-utils 0.0.14.

Backends (``pyav`` default, ``decord``, ``torchcodec``, ``torchvision``) are imported
lazily: nothing here loads decord, torchcodec or torchvision at import time.
"""

from .backends import get_video_reader_backend
from .backends.pyav_index import FrameIndex, read_frame_index
from .fetch import fetch_video, video_source, video_timeout
from .metadata import VideoMetadata
from .readers import VIDEO_READER_BACKENDS
from .sampling import calculate_video_frame_range, smart_nframes

__all__ = [
    "fetch_video",
    "smart_nframes",
    "calculate_video_frame_range",
    "get_video_reader_backend",
    "VIDEO_READER_BACKENDS",
    "VideoMetadata",
    "video_source",
    "video_timeout",
    "read_frame_index",
    "FrameIndex",
]
