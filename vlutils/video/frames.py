"""A video given as a list of frames (any image source), handled as qwen-vl-utils 0.0.14 does.

Each frame goes through ``fetch_image`` with ``image_patch_size = 2 * image_patch_size``
(the reference passes its image factor, 28, as the patch size), the list is padded to an
even length with the last frame, and the stack is then resized as a video.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..constants import FRAME_FACTOR, SPATIAL_MERGE_SIZE
from ..errors import InvalidMessageError, VisionInputError
from ..image import fetch_image
from ..pool import is_url, run_parallel
from ..resize import ceil_by_factor


def load_frame_list(ele: dict[str, Any], frames: list | tuple, image_patch_size: int) -> tuple[torch.Tensor, dict, float]:
    """``(uint8 TCHW tensor, metadata, sample_fps)`` for a list of frames."""
    if len(frames) == 0:
        raise InvalidMessageError("the video frame list is empty", ele.get("video"))
    image_factor = image_patch_size * SPATIAL_MERGE_SIZE
    info = {k: v for k, v in ele.items() if k not in ("type", "video", "video_url")}

    def fetch_frame(numbered: tuple[int, Any]) -> Any:
        position, frame = numbered
        try:
            return fetch_image({"image": frame, **info}, image_factor)
        except VisionInputError as exc:
            raise type(exc)(f"frame {position} of {len(frames)}: {exc.reason}", exc.source) from None

    images = run_parallel(fetch_frame, list(enumerate(frames)), io_bound=any(map(is_url, frames)))
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise InvalidMessageError(
            f"the frames resize to different sizes {sorted(sizes)}; all frames of a video must match",
            f"<list of {len(frames)} frames>",
        )
    nframes = ceil_by_factor(len(images), FRAME_FACTOR)
    images.extend([images[-1]] * (nframes - len(images)))
    sample_fps = ele.get("sample_fps", 2.0)
    raw_fps = ele.get("raw_fps", sample_fps)
    video = torch.stack([torch.from_numpy(np.array(image).transpose(2, 0, 1)) for image in images])
    metadata = dict(
        fps=raw_fps,
        frames_indices=list(range(len(video))),
        total_num_frames=(nframes / sample_fps) * raw_fps,
    )
    return video, metadata, sample_fps
