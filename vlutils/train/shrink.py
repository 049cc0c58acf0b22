"""Smaller media for ``truncation="shrink"``: fewer pixels per image, then fewer frames per video.

Candidates are produced from the largest to the smallest, so the first that fits keeps the
most visual detail. Images are resized with ``smart_resize`` from their current size (sides
stay multiples of the factor, the aspect ratio is kept, never below the item's
``min_pixels``); once every image is at its minimum, videos lose frames, sampled evenly and
kept to a multiple of ``FRAME_FACTOR`` (at least ``min_frames``, default ``FPS_MIN_FRAMES``).
Video sides are not changed. Vision blocks are never split: an item is either shrunk whole
or kept.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import FPS_MIN_FRAMES, FRAME_FACTOR, IMAGE_MIN_TOKEN_NUM
from ..resize import ceil_by_factor, floor_by_factor, smart_resize

__all__ = ["Media", "Plan", "media_size", "shrink_candidates", "apply", "plan_shapes"]

STEP = 0.85  # each candidate keeps this share of the previous pixel / frame budget


class Media:
    """The media of one conversation: images, video frames, per-video metadata and fps."""

    def __init__(self, images: list, frames: list, metadata: list, fps: list[float] | None):
        self.images, self.frames, self.metadata, self.fps = images, frames, metadata, fps

    def videos(self) -> list | None:
        """Videos as build_inputs takes them (``(frames, metadata)`` pairs where metadata exists)."""
        if not self.frames:
            return None
        return [f if m is None else (f, m) for f, m in zip(self.frames, self.metadata)]


def media_size(item: Any, video: bool = False) -> tuple[int, int, int]:
    """(frames, height, width) of an image (PIL, HWC/CHW array or tensor) or a video."""
    if hasattr(item, "mode") and not hasattr(item, "shape"):  # PIL
        width, height = item.size
        return 1, height, width
    if video and isinstance(item, (list, tuple)):
        _, height, width = media_size(item[0])
        return len(item), height, width
    shape = tuple(item.shape)
    if video:
        n, a, b, c = shape
        return (n, b, c) if a == 3 else (n, a, b)
    a, b, c = shape
    return (1, b, c) if a == 3 else (1, a, b)


class Plan:
    """A shrink step: target (height, width) per image, kept frame indices per video."""

    def __init__(self, image_sizes: list[tuple[int, int]], picks: list[list[int]]):
        self.image_sizes, self.picks = image_sizes, picks


def shrink_candidates(media: Media, image_items: Sequence[dict], video_items: Sequence[dict], factor: int) -> Iterator[Plan]:
    """Ever smaller plans for ``media`` (images first, then video frames); see :func:`apply`."""
    sizes = [media_size(image)[1:] for image in media.images]
    counts = [media_size(video, video=True)[0] for video in media.frames]
    full = [list(range(n)) for n in counts]
    if len(image_items) != len(sizes):  # media not from these items: default limits
        image_items = [{}] * len(sizes)
    if len(video_items) != len(counts):
        video_items = [{}] * len(counts)
    floors = [_min_pixels(item, factor) for item in image_items]
    scale = 1.0
    current = list(sizes)
    while any(h * w > floor for (h, w), floor in zip(current, floors)):
        scale *= STEP
        targets = [_smaller(h, w, old, floor, scale, factor) for (h, w), old, floor in zip(sizes, current, floors)]
        if targets != current:
            current = targets
            yield Plan(current, full)
        elif all(h * w * scale < floor for (h, w), floor in zip(sizes, floors)):
            break

    floors = [min(n, _min_frames(item)) for n, item in zip(counts, video_items)]
    kept = list(counts)
    scale = 1.0
    while any(n > floor for n, floor in zip(kept, floors)):
        scale *= STEP
        targets = [max(floor, floor_by_factor(n * scale, FRAME_FACTOR)) if n > floor else n
                   for n, floor in zip(counts, floors)]
        if targets != kept:
            kept = targets
            yield Plan(current, [_even(n, t) for n, t in zip(counts, targets)])


def apply(media: Media, plan: Plan) -> Media:
    """``media`` resized and with frames taken as ``plan`` says (unchanged items are shared)."""
    counts = [media_size(video, video=True)[0] for video in media.frames]
    return Media(
        [_resize(img, t) for img, t in zip(media.images, plan.image_sizes)],
        [_take(video, pick) for video, pick in zip(media.frames, plan.picks)],
        [take_metadata(meta, pick) for meta, pick in zip(media.metadata, plan.picks)],
        None if media.fps is None else [f * len(p) / n for f, p, n in zip(media.fps, plan.picks, counts)],
    )


def plan_shapes(media: Media, plan: Plan) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(frames, height, width) of every image and video after ``plan``, without resizing."""
    images = [(1, h, w) for h, w in plan.image_sizes]
    videos = [(len(pick), *media_size(video, video=True)[1:]) for video, pick in zip(media.frames, plan.picks)]
    return images, videos


def _smaller(height: int, width: int, current: tuple[int, int], floor: int, scale: float, factor: int) -> tuple[int, int]:
    """smart_resize of the original size to ``scale`` of its pixels; the current size when that
    would go below ``floor`` (smart_resize's max branch can round under min_pixels)."""
    if height * width <= floor:
        return current
    target = smart_resize(height, width, factor, min_pixels=floor, max_pixels=max(floor, height * width * scale))
    return target if target[0] * target[1] >= floor else current


def _min_pixels(item: dict, factor: int) -> int:
    value = item.get("min_pixels", IMAGE_MIN_TOKEN_NUM * factor**2) if isinstance(item, dict) else None
    return int(value) if isinstance(value, (int, float)) and value > 0 else IMAGE_MIN_TOKEN_NUM * factor**2


def _min_frames(item: dict) -> int:
    value = item.get("min_frames", FPS_MIN_FRAMES) if isinstance(item, dict) else FPS_MIN_FRAMES
    value = value if isinstance(value, (int, float)) and value > 0 else FPS_MIN_FRAMES
    return ceil_by_factor(value, FRAME_FACTOR)


def _even(n: int, keep: int) -> list[int]:
    """``keep`` indices spread evenly over ``range(n)``, first and last included."""
    if keep >= n:
        return list(range(n))
    return np.linspace(0, n - 1, keep).round().astype(int).tolist()


def _take(video: Any, pick: list[int]) -> Any:
    if len(pick) == media_size(video, video=True)[0]:
        return video
    if isinstance(video, (list, tuple)):
        return [video[i] for i in pick]
    return video[torch.as_tensor(pick)] if isinstance(video, torch.Tensor) else video[np.asarray(pick)]


def take_metadata(meta: Any, pick: list[int]) -> Any:
    """A video's metadata after keeping only the sampled frames at positions ``pick``."""
    if meta is None:
        return None
    out = type(meta)(meta)
    if hasattr(meta, "info"):
        out.info = dict(meta.info)
    indices = meta.get("frames_indices")
    if indices is not None:
        indices = indices.tolist() if hasattr(indices, "tolist") else list(indices)
        out["frames_indices"] = [indices[i] for i in pick]
    return out


def _resize(image: Any, target: tuple[int, int]) -> Any:
    """``image`` at ``target`` (height, width): PIL with bicubic (as fetch_image), arrays and
    tensors with antialiased bicubic, rounded back to their 0..255 range."""
    _, height, width = media_size(image)
    if (height, width) == tuple(target):
        return image
    if hasattr(image, "resize") and hasattr(image, "mode"):
        return image.resize((target[1], target[0]))
    tensor = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    chw = tensor.shape[0] == 3
    x = (tensor if chw else tensor.permute(2, 0, 1)).unsqueeze(0).float()
    y = F.interpolate(x, size=tuple(target), mode="bicubic", antialias=True, align_corners=False)
    y = y.clamp(0, 255).round().to(tensor.dtype)[0]
    return y if chw else y.permute(1, 2, 0).contiguous()



# The name this helper had before it was public (other modules used it); new code uses the public one.
_take_metadata = take_metadata
