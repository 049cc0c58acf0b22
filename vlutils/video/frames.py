"""A video given as a list of frames (any image source), handled as qwen-vl-utils 0.0.14 does.

Each frame goes through ``fetch_image`` with ``image_patch_size = 2 * image_patch_size``
(the reference passes its image factor, 28, as the patch size), the list is padded to an
even length with the last frame, and the stack is then resized as a video.

Two additions, both opt-in so that the default stays the reference's:

* ``"timestamps": [seconds, ...]`` (one per frame, strictly increasing, finite): the sample
  fps becomes ``(n - 1) / (last - first)`` and the metadata's ``frames_indices`` are the
  timestamps times that fps, so ``frames_indices / fps`` (what transformers' Qwen3-VL
  processor turns into ``<t seconds>``) gives back the real times. Without them the
  reference invents ``sample_fps`` (2.0) and indices ``0..n-1``.
* ``patch_grid=True``: each frame is first resized on the patch-size grid
  (``image_patch_size``), as upstream qwen-vl-utils does since commit fe12058, instead of
  0.0.14's doubled factor.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch

from ..constants import FRAME_FACTOR, SPATIAL_MERGE_SIZE
from ..errors import InvalidMessageError, InvalidOptionError, VisionInputError
from ..pool import is_url, run_parallel
from ..resize import ceil_by_factor

# keys that name the video itself, not options for its frames
_SOURCE_KEYS = ("type", "video", "video_url", "url", "path", "base64", "timestamps")


def check_timestamps(timestamps: Any, count: int, label: Any = None) -> list[float]:
    """``timestamps`` as floats, or InvalidOptionError: one finite number per frame, strictly increasing."""
    if isinstance(timestamps, (str, bytes)) or not hasattr(timestamps, "__len__"):
        raise InvalidOptionError(f"timestamps must be a list of seconds, got {type(timestamps).__name__}", label)
    values = timestamps.tolist() if hasattr(timestamps, "tolist") else list(timestamps)
    if len(values) != count:
        raise InvalidOptionError(f"timestamps has {len(values)} value(s) for {count} frame(s)", label)
    for i, value in enumerate(values):
        if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
            raise InvalidOptionError(f"timestamps[{i}] must be a finite number of seconds, got {value!r}", label)
    for i in range(1, len(values)):
        if not values[i] > values[i - 1]:
            raise InvalidOptionError(
                f"timestamps must be strictly increasing: timestamps[{i}] = {values[i]!r} "
                f"after {values[i - 1]!r}", label,
            )
    return [float(v) for v in values]


def load_frame_list(
    ele: dict[str, Any], frames: list | tuple, image_patch_size: int, patch_grid: bool = False
) -> tuple[torch.Tensor, dict, float]:
    """``(uint8 TCHW tensor, metadata, sample_fps)`` for a list of frames."""
    from ..image import load_image_item  # uncached: the whole video is what a cache keeps

    label = f"<list of {len(frames)} frames>"
    if len(frames) == 0:
        raise InvalidMessageError("the video frame list is empty", ele.get("video"))
    timestamps = None
    if ele.get("timestamps") is not None:
        timestamps = check_timestamps(ele["timestamps"], len(frames), label)
    frame_patch_size = image_patch_size if patch_grid else image_patch_size * SPATIAL_MERGE_SIZE
    info = {k: v for k, v in ele.items() if k not in _SOURCE_KEYS}

    def fetch_frame(numbered: tuple[int, Any]) -> Any:
        position, frame = numbered
        try:
            return load_image_item({"image": frame, **info}, frame_patch_size)[0]
        except VisionInputError as exc:
            raise type(exc)(f"frame {position} of {len(frames)}: {exc.reason}", exc.source) from None

    images = run_parallel(fetch_frame, list(enumerate(frames)), io_bound=any(map(is_url, frames)))
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise InvalidMessageError(
            f"the frames resize to different sizes {sorted(sizes)}; all frames of a video must match", label
        )
    nframes = ceil_by_factor(len(images), FRAME_FACTOR)
    images.extend([images[-1]] * (nframes - len(images)))
    video = torch.stack([torch.from_numpy(np.array(image).transpose(2, 0, 1)) for image in images])
    if timestamps is not None:
        return video, *_timed_metadata(timestamps, nframes, ele)
    sample_fps = ele.get("sample_fps", 2.0)
    raw_fps = ele.get("raw_fps", sample_fps)
    metadata = dict(
        fps=raw_fps,
        frames_indices=list(range(len(video))),
        total_num_frames=(nframes / sample_fps) * raw_fps,
    )
    return video, metadata, sample_fps


def _timed_metadata(timestamps: list[float], nframes: int, ele: dict) -> tuple[dict, float]:
    """Metadata whose ``frames_indices / fps`` are the given times (padded like the frames,
    with the last one, as transformers pads indices)."""
    if len(timestamps) > 1:
        fps = (len(timestamps) - 1) / (timestamps[-1] - timestamps[0])
    else:  # one frame has no interval: the item's sample_fps, else the reference's 2.0
        fps = float(ele.get("sample_fps", 2.0))
    padded = timestamps + [timestamps[-1]] * (nframes - len(timestamps))
    indices: list[float] | list[int] = [t * fps for t in padded]
    if all(abs(i - round(i)) < 1e-9 for i in indices):
        indices = [int(round(i)) for i in indices]  # evenly spaced from a whole frame: plain frame numbers
    metadata = dict(fps=fps, frames_indices=indices, total_num_frames=nframes)
    metadata["timestamps"] = padded  # removed by the caller into md.info (transformers takes 4 keys)
    return metadata, fps
