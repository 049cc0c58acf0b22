"""``process_vision_info``: every image and video of a message (or batch), fetched in parallel."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from . import policy as _policy
from .errors import InvalidMessageError, VisionInputError
from .image import fetch_image
from .messages import VisionItem, item_source, iter_vision_items
from .pool import is_url, run_parallel
from .resize import check_number

logger = logging.getLogger(__name__)


def fetch_one(
    item: VisionItem, image_patch_size: int, return_video_metadata: bool, frames_patch_grid: bool = False
) -> tuple[str, Any, Any]:
    """One vision item -> ``(kind, value, sample_fps)`` as :func:`assemble` takes them (shared
    with the async API); errors name the item's position."""
    try:
        element = item.element
        if not item.is_video and item.has_source:
            return "image", fetch_image(element, image_patch_size=image_patch_size), None
        if item.has_source:
            from .video import fetch_video

            video, sample_fps = fetch_video(
                element,
                image_patch_size=image_patch_size,
                return_video_sample_fps=True,
                return_video_metadata=return_video_metadata,
                frames_patch_grid=frames_patch_grid,
            )
            return "video", video, sample_fps
        raise InvalidMessageError(
            "image, image_url or video should be in content (item of type "
            f"{element.get('type')!r} has none)", element
        )
    except VisionInputError as exc:
        raise exc.with_position(item.position)


def _downloads(items: Sequence[VisionItem]) -> bool:
    """Whether any item is an http(s) URL (the pool then overlaps network waits)."""
    for item in items:
        try:
            value = item_source(item.element, "video" if item.is_video else "image")
        except VisionInputError:
            continue  # reported by fetch_one, in order
        if is_url(value):
            return True
    return False


def process_vision_info(
    conversations: list[dict] | list[list[dict]],
    return_video_kwargs: bool = False,
    return_video_metadata: bool = False,
    image_patch_size: int = 14,
    *,
    frames_patch_grid: bool = False,
):
    """Load every image and video referenced by ``conversations``.

    Returns ``(images, videos)`` or, with ``return_video_kwargs``, ``(images, videos,
    video_kwargs)`` exactly as qwen-vl-utils 0.0.14: images are resized RGB PIL images,
    videos are float32 ``(T, C, H, W)`` tensors (``(tensor, metadata)`` pairs with
    ``return_video_metadata``), ``None`` when there are none. Items are fetched in a
    bounded thread pool (one thread per core for local items, a few more when downloading);
    results keep input order. A failing item raises as soon as it fails, with its position in
    the conversation named. ``frames_patch_grid``: see ``fetch_video`` (off: the reference's
    frame-list resize).
    """
    check_number("image_patch_size", image_patch_size, integer=True)
    items = iter_vision_items(conversations)
    _policy.check_item_count(len(items))  # safe mode: bounded work per call
    results = run_parallel(
        lambda item: fetch_one(item, image_patch_size, return_video_metadata, frames_patch_grid), items,
        io_bound=_downloads(items),
    )
    return assemble(results, return_video_kwargs, return_video_metadata)


def assemble(results: list[tuple[str, Any, Any]], return_video_kwargs: bool, return_video_metadata: bool):
    """process_vision_info's return value from the per-item results (shared with the async API)."""
    image_inputs = [value for kind, value, _ in results if kind == "image"] or None
    video_inputs = [value for kind, value, _ in results if kind == "video"] or None
    sample_fps = [fps for kind, _, fps in results if kind == "video"]

    video_kwargs: dict[str, Any] = {"do_sample_frames": False}
    if not return_video_metadata:  # same backward-compatible shape as the reference
        video_kwargs["fps"] = sample_fps
    if return_video_kwargs:
        return image_inputs, video_inputs, video_kwargs
    return image_inputs, video_inputs


# The name this helper had before it was public (other modules used it); new code uses the public one.
_fetch_one = fetch_one
