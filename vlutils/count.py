"""``count_tokens``: the vision grid and placeholder count of every item, from headers only.

Trainers need sample lengths before they decode anything (length filtering, packing,
budgets). The numbers here come from the same arithmetic fetching uses (``smart_resize``,
``smart_nframes``, ``video_target_size``) applied to what headers say: an image's size and
EXIF orientation, a video's frame count, fps and rotation (:mod:`vlutils.video.header`).
Pixels are never decoded, except the first frame of a video for its rotation.

A video given as a list of frames is fetched (each frame must be opened anyway).
"""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

from . import policy as _policy
from .errors import (
    DecodeError, InvalidMessageError, InvalidOptionError, SizeLimitError, UnsupportedSourceError, VisionInputError,
)
from .families import is_fixed_span
from .image import EXIF_ORIENTATION, image_source, resolve_image_size
from .messages import VisionItem, iter_vision_items
from .pool import is_url, run_parallel
from .processor import get_preset
from .sources import FetchSettings, resolve_source

__all__ = ["count_tokens"]

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter


def count_tokens(messages_or_batch: Any, model_type: str = "qwen2_vl", **options: Any) -> list[dict]:
    """One entry per visual item (message order, one list across a batch): ``kind``
    ("image"/"video"), ``grid_thw`` (t, h, w in patches), ``tokens`` (placeholders the model
    sees: t*h*w / merge_size**2), ``resized`` (height, width) and, for videos, ``nframes``.

    ``options``: preset overrides (``patch_size``, ``merge_size``, ``temporal_patch_size``)
    and ``fetch_settings`` (a :class:`~vlutils.sources.FetchSettings`). Equal to what
    ``process_vision_info(..., image_patch_size=patch_size)`` + ``patchify`` produce.
    """
    settings = options.pop("fetch_settings", None) or FetchSettings.from_env()
    if is_fixed_span(model_type):
        return _count_fixed_span(messages_or_batch, settings, options)
    preset = get_preset(model_type, **options)
    items = iter_vision_items(messages_or_batch)
    _policy.check_item_count(len(items))

    def one(item: VisionItem) -> dict:
        try:
            if item.is_video and ("video" in item.element or "video_url" in item.element):
                return _count_video(item.element, preset, settings)
            if "image" in item.element or "image_url" in item.element:
                return _count_image(item.element, preset, settings)
            raise InvalidMessageError(
                f"image, image_url or video should be in content (item of type {item.element.get('type')!r} has none)",
                item.element,
            )
        except VisionInputError as exc:
            raise exc.with_position(item.position)

    downloads = any(is_url(i.element.get("image") or i.element.get("video")) for i in items)
    return run_parallel(one, items, io_bound=downloads)


def _count_fixed_span(messages_or_batch: Any, settings: FetchSettings, options: dict) -> list[dict]:
    """Qwen-VL: every image is 256 positions at (S/14)^2 patches; headers are still read so a
    missing or broken image fails here, as it would when fetched."""
    from .inputs_qwen_vl import count_qwen_vl_tokens

    unknown = sorted(set(options) - {"image_size"})
    if unknown:
        raise InvalidOptionError(f"model_type='qwen_vl' takes image_size, not {unknown}")
    items = iter_vision_items(messages_or_batch)
    _policy.check_item_count(len(items))
    for item in items:
        try:
            if item.is_video:
                raise InvalidMessageError("Qwen-VL has no video input", item.element)
            value = image_source(item.element)
            if value is None:
                raise InvalidMessageError("image is None", value)
            _image_size(value, settings)
        except VisionInputError as exc:
            raise exc.with_position(item.position)
    return count_qwen_vl_tokens(items, **options)


def _entry(kind: str, t: int, height: int, width: int, preset, **extra: Any) -> dict:
    grid = (int(t), height // preset.patch_size, width // preset.patch_size)
    tokens = grid[0] * grid[1] * grid[2] // preset.merge_size**2
    return {"kind": kind, "grid_thw": grid, "tokens": tokens, "resized": (height, width), **extra}


# --- images --------------------------------------------------------------------------


def _count_image(ele: dict, preset, settings: FetchSettings) -> dict:
    value = image_source(ele)
    if value is None:
        raise InvalidMessageError("image is None", value)
    width, height = _image_size(value, settings)
    resized_height, resized_width = _image_target(ele, value, height, width, preset.factor)
    return _entry("image", 1, resized_height, resized_width, preset)


def _image_target(ele: dict, value: Any, height: int, width: int, factor: int) -> tuple[int, int]:
    try:
        target = resolve_image_size(ele, height, width, factor)
    except VisionInputError as exc:
        raise type(exc)(exc.reason, value) from None
    if target[0] <= 0 or target[1] <= 0:
        raise InvalidOptionError(f"options give an empty target size {target[1]}x{target[0]}", value)
    return target


def _image_size(value: Any, settings: FetchSettings) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header."""
    source = resolve_source(value, settings)
    if source.kind == "object":
        obj = source.obj
        if isinstance(obj, Image.Image):
            return _oriented_size(obj)
        shape = getattr(obj, "shape", None)
        if shape is None:
            raise UnsupportedSourceError(f"unsupported image object {type(obj).__name__}", value)
        if type(obj).__module__.startswith("torch") and len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (3, 4):
            return int(shape[2]), int(shape[1])
        return int(shape[1]), int(shape[0])
    import io

    try:
        handle = io.BytesIO(source.data) if source.kind == "bytes" else open(source.path, "rb")
        with handle, Image.open(handle) as image:
            _policy.check_image_format(image.format, value)
            return _oriented_size(image)
    except Image.UnidentifiedImageError:
        raise DecodeError("not a recognised image format", value) from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise DecodeError(f"cannot read image header: {exc}", value) from None


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # as fetching: malformed EXIF means no orientation
        orientation = 1
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


# --- videos --------------------------------------------------------------------------


def _count_video(ele: dict, preset, settings: FetchSettings) -> dict:
    from .video.fetch import source_suffix, refuse_playlist, video_source
    from .video.header import read_video_header
    from .video.resize import video_target_size
    from .video.sampling import calculate_video_frame_range, smart_nframes
    from .sources import local_file

    value = video_source(ele)
    if "video" not in ele:
        ele = {**ele, "video": value}
    if isinstance(value, (list, tuple)):
        return _count_frame_list(ele, preset)
    if not isinstance(value, (str, bytes, bytearray, memoryview)):
        raise UnsupportedSourceError(f"unsupported video type {type(value).__name__}", value)
    if "fps" in ele and "nframes" in ele:
        raise InvalidOptionError("give either `fps` or `nframes`, not both", value if isinstance(value, str) else None)
    with local_file(value, settings, suffix=source_suffix(value)) as path:
        refuse_playlist(path, value)
        header = read_video_header(path, value)
    start, end, count = calculate_video_frame_range(ele, header.total_frames, header.fps)
    nframes = smart_nframes(ele, total_frames=count, video_fps=header.fps)
    max_frames = _policy.limit("max_frames", None)
    if max_frames is not None and nframes > max_frames:
        raise SizeLimitError(f"{nframes} frames requested, over the {int(max_frames)}-frame limit", value)
    height, width = video_target_size(ele, nframes, header.height, header.width, preset.patch_size)
    t = math.ceil(nframes / preset.temporal_patch_size)
    sample_fps = nframes / max(count, 1e-6) * header.fps
    return _entry("video", t, height, width, preset, nframes=nframes, sample_fps=sample_fps,
                  from_header=header.from_header)


def _count_frame_list(ele: dict, preset) -> dict:
    from .video import fetch_video

    video, sample_fps = fetch_video(ele, image_patch_size=preset.patch_size, return_video_sample_fps=True)
    nframes, _, height, width = video.shape
    t = math.ceil(nframes / preset.temporal_patch_size)
    return _entry("video", t, int(height), int(width), preset, nframes=int(nframes), sample_fps=sample_fps,
                  from_header=False)
