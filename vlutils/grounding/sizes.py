"""The two sizes grounding needs: the upright original, and (Qwen2.5-VL) what the model saw.

Everything is (width, height), as PIL's ``Image.size``.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image

from ..constants import SPATIAL_MERGE_SIZE
from ..errors import InvalidOptionError
from ..image import EXIF_ORIENTATION, resolve_image_size
from ..resize import check_number

_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height


def model_input_size(
    image_size: tuple[int, int], *, min_pixels: float | None = None, max_pixels: float | None = None,
    resized_width: float | None = None, resized_height: float | None = None, image_patch_size: int = 14,
) -> tuple[int, int]:
    """(width, height) that ``fetch_image`` / ``process_vision_info`` resize an image of
    ``image_size`` to, with the same options and defaults (``smart_resize`` with factor
    ``image_patch_size * 2``). Pass the options you put in the message's image item."""
    if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
        raise InvalidOptionError(f"image_size must be (width, height), got {image_size!r}")
    width = check_number("image width", image_size[0])
    height = check_number("image height", image_size[1])
    check_number("image_patch_size", image_patch_size, integer=True)
    options = {
        key: value
        for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels),
                           ("resized_width", resized_width), ("resized_height", resized_height))
        if value is not None
    }
    h, w = resolve_image_size(options, height, width, int(image_patch_size) * SPATIAL_MERGE_SIZE)
    return w, h


def resized_size_from_grid(image_grid_thw: Any, index: int = 0, patch_size: int = 14) -> tuple[int, int]:
    """(width, height) the model saw, from the processor's ``image_grid_thw`` (rows ``(t, h, w)``
    in patches): ``(w * patch_size, h * patch_size)``; ``index`` picks the image of a batch.
    Patch size 14 for Qwen2-VL / Qwen2.5-VL, 16 for Qwen3-VL."""
    check_number("patch_size", patch_size, integer=True)
    rows = image_grid_thw.tolist() if hasattr(image_grid_thw, "tolist") else image_grid_thw
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    try:
        _, grid_h, grid_w = rows[index]
        return int(grid_w) * int(patch_size), int(grid_h) * int(patch_size)
    except (TypeError, ValueError, IndexError):
        raise InvalidOptionError(f"image_grid_thw has no (t, h, w) row {index}: {image_grid_thw!r}") from None


def upright_size(source: Any) -> tuple[int, int]:
    """(width, height) of an image after EXIF orientation, as vlutils feeds it to the model
    (a phone portrait stored 4032x3024 with orientation 6 is 3024x4032). Reads only the header
    for a path, ``file://`` path, bytes or PIL image; any other source vlutils accepts (URL,
    data URI, base64) is loaded fully."""
    if isinstance(source, Image.Image):
        return _oriented(source)
    path = source[len("file://"):] if isinstance(source, str) and source.startswith("file://") else source
    if isinstance(path, (bytes, bytearray)):
        path = io.BytesIO(bytes(path))
    elif not (isinstance(path, os.PathLike) or (isinstance(path, str) and os.path.isfile(path))):
        from ..image import open_image

        return open_image(source).size  # already oriented
    try:
        with Image.open(path) as image:
            return _oriented(image)
    except (OSError, Image.DecompressionBombError) as exc:
        from ..errors import DecodeError

        raise DecodeError(f"cannot read the image size: {exc}", source) from None


def _oriented(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF: vlutils then leaves the image as stored, and so do we
        orientation = 1
    return (height, width) if orientation in _TRANSPOSED else (width, height)
