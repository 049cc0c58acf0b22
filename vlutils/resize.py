"""Target-size arithmetic shared by images and videos (same rounding as qwen-vl-utils 0.0.14)."""

from __future__ import annotations

import math
from typing import Any

from .constants import IMAGE_MAX_TOKEN_NUM, IMAGE_MIN_TOKEN_NUM, MAX_RATIO
from .errors import InvalidOptionError, SizeLimitError


def round_by_factor(number: float, factor: int) -> int:
    """The integer closest to ``number`` that is divisible by ``factor`` (Python rounding)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    """The smallest integer >= ``number`` that is divisible by ``factor``."""
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    """The largest integer <= ``number`` that is divisible by ``factor``."""
    return math.floor(number / factor) * factor


def check_number(name: str, value: Any, *, positive: bool = True, integer: bool = False, source: Any = None) -> float:
    """Validate a numeric option: a real number (not bool/NaN/inf), > 0 when ``positive``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not float(value).is_integer()
    ):
        kind = "an integer" if integer else "a number"
        raise InvalidOptionError(f"{name} must be {kind}, got {value!r}", source)
    if not math.isfinite(value):
        raise InvalidOptionError(f"{name} must be finite, got {value!r}", source)
    if positive and value <= 0:
        raise InvalidOptionError(f"{name} must be > 0, got {value!r}", source)
    return value


def smart_resize(
    height: int,
    width: int,
    factor: int,
    min_pixels: float | None = None,
    max_pixels: float | None = None,
) -> tuple[int, int]:
    """Return ``(height, width)`` both divisible by ``factor``, with ``min_pixels <= h*w <= max_pixels``
    and the aspect ratio kept as closely as possible.

    Bit-for-bit the arithmetic of qwen-vl-utils 0.0.14; bad arguments raise
    :class:`~vlutils.errors.InvalidOptionError` (a ``ValueError``) instead of asserting.
    """
    check_number("height", height)
    check_number("width", width)
    check_number("factor", factor, integer=True)
    max_pixels = max_pixels if max_pixels is not None else IMAGE_MAX_TOKEN_NUM * factor**2
    min_pixels = min_pixels if min_pixels is not None else IMAGE_MIN_TOKEN_NUM * factor**2
    check_number("max_pixels", max_pixels)
    check_number("min_pixels", min_pixels)
    if max_pixels < min_pixels:
        raise InvalidOptionError(
            f"max_pixels ({max_pixels}) must be greater than or equal to min_pixels ({min_pixels})"
        )
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise SizeLimitError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {ratio} ({width}x{height})")
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar
