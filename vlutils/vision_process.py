"""``process_vision_info``: every image and video of a message (or batch), fetched in parallel."""

from __future__ import annotations

import contextvars
import logging
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence, TypeVar

from . import policy as _policy
from .errors import InvalidMessageError, VisionInputError
from .image import fetch_image
from .messages import VisionItem, iter_vision_items
from .resize import check_number

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_FETCH_WORKERS = int(os.environ.get("VLUTILS_FETCH_WORKERS", 8))


def _fetch_one(item: VisionItem, image_patch_size: int, return_video_metadata: bool) -> tuple[str, Any, Any]:
    try:
        element = item.element
        if "image" in element or "image_url" in element:
            return "image", fetch_image(element, image_patch_size=image_patch_size), None
        if item.is_video and ("video" in element or "video_url" in element):
            from .video import fetch_video

            video, sample_fps = fetch_video(
                element,
                image_patch_size=image_patch_size,
                return_video_sample_fps=True,
                return_video_metadata=return_video_metadata,
            )
            return "video", video, sample_fps
        raise InvalidMessageError(
            "image, image_url or video should be in content (item of type "
            f"{element.get('type')!r} has none)", element
        )
    except VisionInputError as exc:
        raise exc.with_position(item.position)


def _cores() -> int:
    """CPUs this process may run on (affinity-aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _workers(count: int, io_bound: bool = True) -> int:
    """Pool size: decoding and resizing are CPU-bound (Pillow and FFmpeg release the GIL), so
    more threads than cores only add page-fault contention; downloads overlap their waiting."""
    limit = _cores() + 2 if io_bound else _cores()
    return max(1, min(count, MAX_FETCH_WORKERS, limit))


def _is_remote(item: Any) -> bool:
    element = getattr(item, "element", None)
    if not isinstance(element, dict):
        return True
    value = next((element[k] for k in ("image", "image_url", "video", "video_url") if k in element), None)
    if isinstance(value, dict):
        value = value.get("url")
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def run_parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(item) for item in items]`` in a bounded thread pool, results in input order.

    Each task runs in a copy of the caller's context, so a ``vlutils.policy.use(...)`` block
    (a contextvar) reaches the worker threads. As soon as one item fails, the earliest (in
    input order) of the items that have failed by then raises: siblings still downloading are not waited for (each is bounded by its own
    timeouts and ends in the background) and queued ones are cancelled.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    io_bound = any(_is_remote(item) for item in items)
    pool = ThreadPoolExecutor(max_workers=_workers(len(items), io_bound), thread_name_prefix="vlutils-fetch")
    try:
        futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def process_vision_info(
    conversations: list[dict] | list[list[dict]],
    return_video_kwargs: bool = False,
    return_video_metadata: bool = False,
    image_patch_size: int = 14,
):
    """Load every image and video referenced by ``conversations``.

    Returns ``(images, videos)`` or, with ``return_video_kwargs``, ``(images, videos,
    video_kwargs)`` exactly as qwen-vl-utils 0.0.14: images are resized RGB PIL images,
    videos are float32 ``(T, C, H, W)`` tensors (``(tensor, metadata)`` pairs with
    ``return_video_metadata``), ``None`` when there are none. Items are fetched in a
    bounded thread pool (one thread per core for local items, a few more when downloading);
    results keep input order. A failing item raises as soon as it fails, with its position in
    the conversation named.
    """
    check_number("image_patch_size", image_patch_size, integer=True)
    items = iter_vision_items(conversations)
    _policy.check_item_count(len(items))  # safe mode: bounded work per call
    results = run_parallel(lambda item: _fetch_one(item, image_patch_size, return_video_metadata), items)

    image_inputs = [value for kind, value, _ in results if kind == "image"] or None
    video_inputs = [value for kind, value, _ in results if kind == "video"] or None
    sample_fps = [fps for kind, _, fps in results if kind == "video"]

    video_kwargs: dict[str, Any] = {"do_sample_frames": False}
    if not return_video_metadata:  # same backward-compatible shape as the reference
        video_kwargs["fps"] = sample_fps
    if return_video_kwargs:
        return image_inputs, video_inputs, video_kwargs
    return image_inputs, video_inputs
