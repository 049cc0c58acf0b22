"""Decode, orient, convert and resize one image exactly as qwen-vl-utils 0.0.14 does.

Deliberate differences from the reference (both documented in the README):
EXIF orientation is applied, and every alpha mode (not only RGBA) is composited
on white instead of having its alpha dropped.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

import numpy as np
from PIL import Image

from . import policy as _policy
from .constants import IMAGE_MAX_TOKEN_NUM, IMAGE_MIN_TOKEN_NUM, SPATIAL_MERGE_SIZE
from .errors import (
    DecodeError,
    InvalidMessageError,
    InvalidOptionError,
    SizeLimitError,
    UnsupportedSourceError,
    VisionInputError,
)
from .messages import item_source
from .resize import check_number, smart_resize
from .sources import FetchSettings, read_limited, resolve_source

logger = logging.getLogger(__name__)

# Same threshold at which Pillow raises DecompressionBombError (2x its warning limit).
MAX_IMAGE_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
EXIF_ORIENTATION = 0x0112
_EXIF_ORIENTATION = EXIF_ORIENTATION  # its name before it was public
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def image_source(ele: dict) -> Any:
    """The image value of a content item: ``image`` or ``image_url`` (string or ``{"url": ...}``)."""
    return item_source(ele, "image")


def open_image(
    value: Any, settings: FetchSettings | None = None, max_pixels: int = MAX_IMAGE_PIXELS, *,
    exif_orientation: bool = True,
) -> Image.Image:
    """Load any supported source into a fully decoded PIL image (file handles closed),
    EXIF orientation applied (unless ``exif_orientation=False``, as Qwen-VL's original loader);
    the mode is left as stored."""
    if value is None:
        raise InvalidMessageError("image is None", value)
    settings = settings or FetchSettings.from_env()
    max_pixels = int(_policy.limit("max_pixels", max_pixels))
    source = resolve_source(value, settings)
    if source.kind == "object":
        image = _from_object(source.obj, value)
    else:
        data = source.data if source.kind == "bytes" else read_limited(source.path, settings.max_bytes, value)
        image = _decode(data, value, max_pixels)
    return _apply_exif_orientation(image) if exif_orientation else image


def _decode(data: bytes, original: Any, max_pixels: int) -> Image.Image:
    if not data:
        raise DecodeError("empty file (0 bytes)", original)
    try:
        # Pillow reports corrupt EXIF and big images through `warnings`. catch_warnings is
        # process-global and not thread-safe (this runs in worker threads), so warnings are left
        # to the caller's filters; under -W error they arrive here as exceptions and become
        # typed errors below.
        image = Image.open(io.BytesIO(data))
        _policy.check_image_format(image.format, original)  # header parsed, pixels not yet decoded
        width, height = image.size
        if width * height > max_pixels:
            raise SizeLimitError(
                f"image is {width}x{height} = {width * height} pixels, over the {max_pixels}-pixel limit",
                original,
            )
        image.load()
    except Image.DecompressionBombWarning as exc:
        raise SizeLimitError(f"decompression bomb warning turned into an error: {exc}", original) from None
    except Warning as exc:
        raise DecodeError(f"warning turned into an error while decoding: {type(exc).__name__}: {exc}", original) from None
    except Image.DecompressionBombError as exc:
        raise SizeLimitError(f"decompression bomb: {exc}", original) from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not a recognised image format", original) from None
    except VisionInputError:  # ours, already typed (a ValueError: keep it out of the clause below)
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DecodeError(f"cannot decode image: {exc}", original) from None
    return image


def _load_lock(image: Image.Image) -> threading.Lock:
    """A lock of this image object's own. A lazily opened PIL image (Image.open without load)
    decodes on first use, which is not thread-safe: the same object in several items of one
    message, fetched in parallel, fails with random OSError/AssertionError. Different images
    still decode in parallel. (dict.setdefault is atomic under the GIL.)"""
    return image.__dict__.setdefault("_vlutils_load_lock", threading.Lock())


def _from_object(obj: Any, original: Any) -> Image.Image:
    if isinstance(obj, Image.Image):
        try:
            with _load_lock(obj):
                obj.load()  # a no-op for images already in memory
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # e.g. a truncated lazily opened file
            raise DecodeError(f"cannot decode image: {exc}", original) from None
        return obj
    array = obj
    if type(obj).__module__.startswith("torch"):
        tensor = obj.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (3, 4):
            tensor = tensor.permute(1, 2, 0)  # CHW -> HWC
        array = tensor.numpy()
    if not isinstance(array, np.ndarray):
        raise UnsupportedSourceError(f"unsupported image object {type(obj).__name__}", original)
    if array.dtype != np.uint8:
        raise UnsupportedSourceError(f"image array must be uint8, got {array.dtype}", original)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise UnsupportedSourceError(f"image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}", original)
    if array.size == 0:
        raise DecodeError(f"image array is empty, shape {array.shape}", original)
    return Image.fromarray(np.ascontiguousarray(array))


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says (the reference ignores it)."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF must not make an otherwise fine image unusable
        return image
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        from PIL import ImageOps

        return ImageOps.exif_transpose(image)
    return image


def to_rgb(pil_image: Image.Image) -> Image.Image:
    """RGB, compositing any alpha on white (the reference does so for RGBA only). The
    parameter is named as in qwen-vl-utils, so ``to_rgb(pil_image=...)`` works as there."""
    image = pil_image
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return image.convert("RGB")


def resolve_image_size(ele: dict, height: int, width: int, factor: int) -> tuple[int, int]:
    """Target (height, width) from the item's options, with the reference's defaults."""
    if "resized_height" in ele and "resized_width" in ele:
        rh = check_number("resized_height", ele["resized_height"])
        rw = check_number("resized_width", ele["resized_width"])
        return smart_resize(rh, rw, factor=factor)
    min_pixels = check_number("min_pixels", ele.get("min_pixels", IMAGE_MIN_TOKEN_NUM * factor**2))
    max_pixels = check_number("max_pixels", ele.get("max_pixels", IMAGE_MAX_TOKEN_NUM * factor**2))
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def fetch_image(ele: dict, image_patch_size: int = 14) -> Image.Image:
    """Load, orient, convert to RGB and resize the image of one content item.

    Same signature and result as ``qwen_vl_utils.fetch_image``: a PIL RGB image whose
    sides are multiples of ``image_patch_size * 2``.
    """
    from . import cache as _cache

    cache = _cache.current()
    key = _cache_key(ele, image_patch_size) if cache is not None else None
    if key is None:
        return load_image_item(ele, image_patch_size)[0]
    return cache.get_or_compute(
        key, lambda: load_image_item(ele, image_patch_size)[0],
        size=lambda image: image.width * image.height * len(image.getbands()), copy=lambda image: image.copy(),
    )


_SOURCE_FIELDS = ("type", "image", "image_url", "url", "path", "base64")


def _cache_key(ele: Any, image_patch_size: int) -> Any:
    """The media-cache key of an image item, or None (not cacheable, or let the fetch report
    what is wrong with it). Runs the safe-mode source checks."""
    from . import cache as _cache

    if not isinstance(ele, dict):
        return None
    try:
        value = image_source(ele)
    except VisionInputError:
        return None
    identity = _cache.source_identity(value)
    if identity is None:
        return None
    return ("image", identity, _cache.options_key(ele, _SOURCE_FIELDS), image_patch_size, _policy.current(),
            FetchSettings.from_env())


def load_image_item(ele: dict, image_patch_size: int = 14) -> tuple[Image.Image, tuple[int, int]]:
    """``fetch_image`` that also returns the original ``(width, height)`` (after EXIF orientation)."""
    if not isinstance(ele, dict):
        raise InvalidMessageError(f"content item must be a dict, got {type(ele).__name__}", ele)
    check_number("image_patch_size", image_patch_size, integer=True)
    value = image_source(ele)
    image = to_rgb(open_image(value))
    factor = int(image_patch_size * SPATIAL_MERGE_SIZE)
    width, height = image.size
    try:
        resized_height, resized_width = resolve_image_size(ele, height, width, factor)
    except (InvalidOptionError, SizeLimitError) as exc:
        raise type(exc)(exc.reason, value) from None
    if resized_height <= 0 or resized_width <= 0:
        raise InvalidOptionError(
            f"options give an empty target size {resized_width}x{resized_height} (max_pixels too small?)", value
        )
    limit = int(_policy.limit("max_pixels", MAX_IMAGE_PIXELS))
    if resized_height * resized_width > limit:
        # min_pixels=1e12 must cost one clear error, not an out-of-memory kill of the worker
        raise SizeLimitError(
            f"requested output {resized_width}x{resized_height} is over the {limit}-pixel limit", value
        )
    if (resized_width, resized_height) == image.size and image is not value:
        return image, (width, height)
    return image.resize((resized_width, resized_height)), (width, height)
