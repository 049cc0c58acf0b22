"""Which frames to sample: the frame budget (``smart_nframes``), the ``video_start``/
``video_end`` window and the frame indices.

Constant-frame-rate video uses exactly the index formula of qwen-vl-utils 0.0.14
(``torch.linspace(start, end, n).round()``); variable-frame-rate video is sampled
evenly in *time* instead, because evenly spaced indices are unevenly spaced in time.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Any, Sequence

import torch

from ..constants import FPS, FPS_MAX_FRAMES, FPS_MIN_FRAMES, FRAME_FACTOR
from ..errors import DecodeError, InvalidOptionError
from ..resize import ceil_by_factor, check_number, floor_by_factor, round_by_factor

logger = logging.getLogger(__name__)

# A stream whose frame durations spread more than this (relative to the median) is
# treated as variable-frame-rate. 29.97 fps in a 1/1000 time base jitters 33/34 ms (3%).
VFR_TOLERANCE = 0.25


def smart_nframes(ele: dict[str, Any], total_frames: int, video_fps: float) -> int:
    """Number of frames to sample, as qwen-vl-utils 0.0.14 computes it.

    ``nframes`` (rounded to ``FRAME_FACTOR``) or ``fps`` with ``min_frames``/``max_frames``;
    the result must lie in ``[FRAME_FACTOR, total_frames]``.
    """
    source = ele.get("video")
    source = source if isinstance(source, str) else None
    if "fps" in ele and "nframes" in ele:
        raise InvalidOptionError("give either `fps` or `nframes`, not both", source)
    if "nframes" in ele:
        check_number("nframes", ele["nframes"], source=source)
        nframes = round_by_factor(ele["nframes"], FRAME_FACTOR)
    else:
        fps = check_number("fps", ele.get("fps", FPS), source=source)
        min_frames = ceil_by_factor(
            check_number("min_frames", ele.get("min_frames", FPS_MIN_FRAMES), source=source), FRAME_FACTOR
        )
        max_frames = floor_by_factor(
            check_number("max_frames", ele.get("max_frames", min(FPS_MAX_FRAMES, total_frames)), source=source),
            FRAME_FACTOR,
        )
        check_number("video fps", video_fps, source=source)
        wanted = total_frames / video_fps * fps
        if wanted > total_frames:
            logger.warning("smart_nframes: nframes[%s] > total_frames[%s]", wanted, total_frames)
        nframes = floor_by_factor(min(min(max(wanted, min_frames), max_frames), total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= nframes <= total_frames:
        raise InvalidOptionError(
            f"nframes should in interval [{FRAME_FACTOR}, {total_frames}], but got {nframes} "
            f"(the video segment has {total_frames} frame(s))",
            source,
        )
    return int(nframes)


def calculate_video_frame_range(ele: dict[str, Any], total_frames: int, video_fps: float) -> tuple[int, int, int]:
    """``(start_frame, end_frame, frame_count)`` for ``video_start``/``video_end`` (seconds),
    clamped to the video, with the rounding of qwen-vl-utils 0.0.14."""
    source = ele.get("video")
    source = source if isinstance(source, str) else None
    if not video_fps or video_fps <= 0 or not math.isfinite(video_fps):
        raise DecodeError(f"the video reports no usable frame rate ({video_fps!r})", source)
    if total_frames <= 0:
        raise DecodeError("the video has no frames", source)
    video_start = ele.get("video_start")
    video_end = ele.get("video_end")
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    start_frame, start_clamped = 0, 0.0
    if video_start is not None:
        check_number("video_start", video_start, positive=False, source=source)
        start_clamped = max(0.0, min(video_start, max_duration))
        start_frame = math.ceil(start_clamped * video_fps)
    end_frame, end_clamped = total_frames - 1, max_duration
    if video_end is not None:
        check_number("video_end", video_end, positive=False, source=source)
        end_clamped = max(0.0, min(video_end, max_duration))
        end_frame = min(math.floor(end_clamped * video_fps), total_frames - 1)
    if start_frame >= end_frame:
        raise InvalidOptionError(
            f"Invalid time range: Start frame {start_frame} (at {start_clamped}s) exceeds end frame "
            f"{end_frame} (at {end_clamped}s). Video duration: {max_duration:.2f}s "
            f"({total_frames} frames @ {video_fps}fps)",
            source,
        )
    return start_frame, end_frame, end_frame - start_frame + 1


def linspace_indices(start: int, end: int, nframes: int) -> list[int]:
    """The reference's indices: ``torch.linspace(start, end, n).round()`` (float32 arithmetic)."""
    return torch.linspace(start, end, nframes).round().long().tolist()


def is_variable_frame_rate(timestamps: Sequence[float] | None) -> bool:
    """True when frame durations differ by more than :data:`VFR_TOLERANCE` of the median."""
    if timestamps is None or len(timestamps) < 3:
        return False
    steps = sorted(b - a for a, b in zip(timestamps, timestamps[1:]))
    median = steps[len(steps) // 2]
    if median <= 0:
        return False
    return (steps[-1] - steps[0]) > VFR_TOLERANCE * median


def time_indices(timestamps: Sequence[float], start: int, end: int, nframes: int) -> list[int]:
    """Indices of the frames nearest to ``nframes`` instants evenly spaced in time between
    frame ``start`` and frame ``end`` (inclusive). ``timestamps`` are sorted seconds."""
    t0, t1 = timestamps[start], timestamps[end]
    if nframes == 1 or t1 <= t0:
        return linspace_indices(start, end, nframes)
    result = []
    for k in range(nframes):
        t = t0 + (t1 - t0) * k / (nframes - 1)
        i = bisect.bisect_left(timestamps, t, start, end + 1)
        if i > start and (i > end or t - timestamps[i - 1] <= timestamps[i] - t):
            i -= 1
        result.append(min(max(i, start), end))
    return result


def sample_indices(
    start: int, end: int, nframes: int, timestamps: Sequence[float] | None = None
) -> tuple[list[int], bool]:
    """Frame indices to decode and whether the time-based (VFR) rule was used."""
    if timestamps is not None and is_variable_frame_rate(timestamps[start : end + 1]):
        return time_indices(timestamps, start, end, nframes), True
    return linspace_indices(start, end, nframes), False
