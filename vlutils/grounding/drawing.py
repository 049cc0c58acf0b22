"""Draw boxes, points and labels on a copy of an image, legible on any background.

A box's colour is edged on both sides by black (light colours) or white (dark ones), a point
is a coloured dot in white and black rings, and every label sits on a box filled with its
colour, with black or white text (whichever contrasts more), drawn after all shapes. Colours come
from the label (same label, same colour, in every run).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..errors import InvalidOptionError
from .conventions import object_geometry

# 16 well-separated saturated colours (after Sasha Trubetskoy's list of distinct colours).
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (128, 128, 0), (0, 0, 128), (255, 105, 180), (46, 139, 87),
)
_BLACK, _WHITE = (0, 0, 0), (255, 255, 255)


def label_color(label: str | None) -> tuple[int, int, int]:
    """The RGB colour ``draw`` uses for ``label`` (CRC-32 of its UTF-8 text picks a palette entry)."""
    key = "" if label is None else str(label)
    return PALETTE[zlib.crc32(key.encode("utf-8")) % len(PALETTE)]


def draw(
    image: Image.Image, objects: Sequence[Mapping], *, line_width: int | None = None,
    font: Any = None, font_size: int | None = None,
) -> Image.Image:
    """A copy of ``image`` with ``objects`` (in its pixels: ``to_image``'s output) drawn on it.

    The input is never modified. RGB and RGBA images keep their mode; other modes come back as
    RGB (RGBA if they had alpha) so that colours show. ``font``: a PIL font, or a path to a
    TrueType file (needed for labels outside Latin script); default: Pillow's built-in font.
    Line width and font size scale with the image unless given.
    """
    if not isinstance(image, Image.Image):
        raise InvalidOptionError(f"image must be a PIL image, got {type(image).__name__}")
    shapes = [(obj.get("label"),) + object_geometry(obj, i) for i, obj in enumerate(objects)]
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    out = image.convert("RGBA" if has_alpha else "RGB") if image.mode not in ("RGB", "RGBA") else image.copy()
    width, height = out.size
    lw = int(line_width) if line_width else max(2, round(min(width, height) / 250))
    font = _font(font, int(font_size) if font_size else max(14, round(min(width, height) / 32)))
    pen = ImageDraw.Draw(out)
    labels = []
    for label, kind, values in shapes:
        color = label_color(label)
        values = [_clamp(v, -4 * lw, (width if i % 2 == 0 else height) + 4 * lw) for i, v in enumerate(values)]
        if kind == "box":
            x1, y1, x2, y2 = min(values[0], values[2]), min(values[1], values[3]), max(values[0], values[2]), max(values[1], values[3])
            pen.rectangle([x1 - 1, y1 - 1, x2 + 1, y2 + 1], outline=_contrast(color), width=lw + 2)
            pen.rectangle([x1, y1, x2, y2], outline=color, width=lw)
            anchor = (x1, y1, True)
        else:
            x, y = values
            r = max(3, 2 * lw)
            pen.ellipse([x - r - 2, y - r - 2, x + r + 2, y + r + 2], fill=_BLACK)
            pen.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], fill=_WHITE)
            pen.ellipse([x - r, y - r, x + r, y + r], fill=color)
            anchor = (x + r + 3, y, False)
        if label:
            labels.append((str(label), color, anchor))
    for text, color, anchor in labels:  # after all shapes, so no shape hides a label
        _label(pen, text, color, anchor, font, width, height)
    return out


def _label(pen: ImageDraw.ImageDraw, text: str, color: tuple, anchor: tuple, font: Any, width: int, height: int) -> None:
    """``text`` on a filled box: above the box corner (inside when no room), right of a point."""
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    tw, th, pad = right - left, bottom - top, 2
    x, y, is_box = anchor
    bw, bh = tw + 2 * pad, th + 2 * pad
    if is_box:
        y = y - bh - 1 if y - bh - 1 >= 0 else y + 1
    else:
        y = y - bh / 2
    x = _clamp(x, 0, max(0, width - bw))
    y = _clamp(y, 0, max(0, height - bh))
    pen.rectangle([x, y, x + bw, y + bh], fill=color, outline=_BLACK)
    pen.text((x + pad - left, y + pad - top), text, fill=_contrast(color), font=font)


def _contrast(color: tuple) -> tuple:
    """Black for light colours, white for dark ones (ITU-R 601 luma)."""
    return _BLACK if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 128 else _WHITE


def _font(font: Any, size: int) -> Any:
    if font is None:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            return ImageFont.load_default()
    if isinstance(font, str):
        try:
            return ImageFont.truetype(font, size)
        except OSError as exc:
            raise InvalidOptionError(f"cannot load font {font!r}: {exc}") from None
    return font


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)
