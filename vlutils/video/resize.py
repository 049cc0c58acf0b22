"""Video target size (the per-frame pixel budget of qwen-vl-utils 0.0.14) and the
frame resize that reproduces its output bit for bit.

The reference resizes uint8 TCHW frames with torchvision bicubic + antialias and then
calls ``.float()``. torchvision computes that as float32 ``interpolate`` -> clamp to
[0, 255] -> round -> uint8, so resizing one frame at a time with the same steps and the
same (channels-last) memory layout gives identical values without ever holding the
full-resolution clip.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F

from ..constants import FRAME_FACTOR, MODEL_SEQ_LEN, SPATIAL_MERGE_SIZE, VIDEO_MAX_TOKEN_NUM, VIDEO_MIN_TOKEN_NUM
from .. import policy as _policy
from ..errors import SizeLimitError
from ..image import MAX_IMAGE_PIXELS
from ..resize import check_number, smart_resize

logger = logging.getLogger(__name__)


def video_target_size(
    ele: dict[str, Any], nframes: int, height: int, width: int, image_patch_size: int = 14
) -> tuple[int, int]:
    """``(resized_height, resized_width)`` for ``nframes`` frames of ``height x width``."""
    source = ele.get("video") if isinstance(ele.get("video"), str) else None
    factor = int(image_patch_size * SPATIAL_MERGE_SIZE)
    frame_min = VIDEO_MIN_TOKEN_NUM * factor * factor
    frame_max = VIDEO_MAX_TOKEN_NUM * factor * factor
    if "resized_height" in ele and "resized_width" in ele:
        check_number("resized_height", ele["resized_height"], source=source)
        check_number("resized_width", ele["resized_width"], source=source)
        return smart_resize(ele["resized_height"], ele["resized_width"], factor=factor)
    min_pixels = check_number("min_pixels", ele.get("min_pixels", frame_min), source=source)
    total_pixels = check_number(
        "total_pixels", ele.get("total_pixels", MODEL_SEQ_LEN * factor * factor * 0.9), source=source
    )
    max_pixels = max(min(frame_max, total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    wanted = check_number("max_pixels", ele.get("max_pixels", max_pixels), source=source)
    if wanted > max_pixels:
        logger.warning("The given max_pixels[%s] exceeds limit[%s].", wanted, max_pixels)
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=min(wanted, max_pixels))


def check_output_size(
    nframes: int, height: int, width: int, source: Any = None, frame_limit: int | None = None,
    total_limit: int | None = None,
) -> None:
    """Refuse outputs no sane request needs (min_pixels=1e12, or 1e8 over 24 frames = 29 GB):
    one bad sample must cost a clear error, not an out-of-memory kill of the worker.

    Per frame: the image pixel cap (lowered by safe mode). In all: ``VLUTILS_MAX_VIDEO_BYTES``
    of float32 output (default 16 GiB, above anything the default options produce). Pass
    ``frame_limit`` when calling from a thread that does not carry the caller's policy."""
    if frame_limit is None:
        frame_limit = int(_policy.limit("max_pixels", MAX_IMAGE_PIXELS))
    if height * width > frame_limit:
        raise SizeLimitError(f"requested frame size {width}x{height} is over the {frame_limit}-pixel limit", source)
    total = nframes * 3 * height * width * 4
    if total_limit is None:  # safe mode lowers it (SafetyPolicy.max_video_bytes)
        total_limit = max_video_bytes()
    if total > total_limit:
        raise SizeLimitError(
            f"output of {nframes} frames at {width}x{height} needs {total / 2**30:.1f} GiB, over the "
            f"{total_limit / 2**30:.1f} GiB limit (VLUTILS_MAX_VIDEO_BYTES)", source
        )


def max_video_bytes() -> int:
    """``VLUTILS_MAX_VIDEO_BYTES`` (default 16 GiB), lowered by the active safe-mode policy.
    Read it in the caller's thread: decode threads do not carry the policy."""
    return int(_policy.limit("max_video_bytes", float(os.environ.get("VLUTILS_MAX_VIDEO_BYTES", 16 * 2**30))))


def resize_exact(frames: torch.Tensor, height: int, width: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Bicubic + antialias resize of uint8 ``(N, C, H, W)`` frames, rounded like torchvision.

    Returns float32 holding integer values in [0, 255] (the layout of the input is kept),
    or writes them into ``out`` (float32, same shape; one pass fewer than copying).
    """
    if tuple(frames.shape[-2:]) == (height, width):
        result = frames.to(torch.float32)
        return out.copy_(result) if out is not None else result
    resized = F.interpolate(
        frames.to(torch.float32), size=[height, width], mode="bicubic", align_corners=False, antialias=True
    ).clamp_(0, 255)
    if out is not None:
        return torch.round(resized, out=out)
    return resized.round_()
