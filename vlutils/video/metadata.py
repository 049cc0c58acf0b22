"""Video metadata: the reference's dict, plus extra facts kept off the dict.

transformers builds ``VideoMetadata(**metadata)`` from this dict, so the keys must stay
exactly those of qwen-vl-utils (``fps``, ``frames_indices``, ``total_num_frames``,
``video_backend``). Extra information (sample fps, resized size, decoder, timings...)
lives in the ``info`` attribute.
"""

from __future__ import annotations

from typing import Any


class VideoMetadata(dict):
    """A plain ``dict`` (equal to the reference's) with an ``info`` dict of extras."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.info: dict[str, Any] = {}

    def __reduce__(self):  # keep ``info`` when pickled to DataLoader workers
        return (_rebuild, (dict(self), self.info))


def _rebuild(data: dict, info: dict) -> "VideoMetadata":
    metadata = VideoMetadata(data)
    metadata.info = info
    return metadata
