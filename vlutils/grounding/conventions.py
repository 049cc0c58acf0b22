"""Coordinate frames of each Qwen-VL generation and the exact maps between them and image pixels.

Relative generations (``qwen_vl``, ``qwen2_vl``, ``qwen3_vl``, ``qwen3_5``) write integers on a
0-1000 grid; ``qwen2_5_vl`` writes absolute pixels of the smart-resized image the model saw.
``to_image`` is exact (floats, no rounding); ``to_model`` rounds to the integers a model of that
generation is trained to write (Python ``round``, as the official ``process_bbox`` tool does) and
clamps into the range, so ``to_image(to_model(p))`` is within half a quantisation step of ``p``
(one step where clamping bites).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError
from ..families import FAMILIES, Family, get_family


@dataclass(frozen=True)
class Convention:
    """How one generation writes coordinates: ``scale`` = 1000 (relative) or None (resized pixels)."""

    model_type: str
    syntax: str  # "tags" (Qwen-VL / Qwen2-VL special tokens) or "json"
    scale: int | None
    max_value: int | None  # largest integer ``to_model`` writes on the relative grid


def _convention(family: Family) -> Convention:
    style = family.grounding
    return Convention(family.inputs_model_type, style.syntax, style.scale, style.max_value)


# One convention per generation that grounds (a MoE variant is its dense family's: an alias).
CONVENTIONS = {name: _convention(f) for name, f in FAMILIES.items()
               if f.grounding is not None and f.shares_inputs_with is None}
MODEL_TYPES = tuple(CONVENTIONS)


def get_convention(model_type: Any) -> Convention:
    """The convention of ``model_type``; spelling is forgiving (``Qwen2.5-VL`` = ``qwen2_5_vl``)."""
    if isinstance(model_type, str) and model_type.strip().lower().replace("-", "_").replace(".", "_") in FAMILIES:
        return _convention(get_family(model_type, "grounding", loose=True))
    raise InvalidOptionError(f"unknown model_type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")


def tags(model_type: str) -> tuple[str, str, str, str]:
    """The (ref open, ref close, box open, box close) tags of a "tags" generation."""
    family = get_family(model_type, "grounding", loose=True)
    if family.grounding.tags is None:
        raise InvalidOptionError(f"{family.title} writes boxes as JSON, not tags")
    return family.grounding.tags


def _check_size(name: str, size: Any) -> tuple[float, float]:
    """A (width, height) pair of positive finite numbers."""
    ok = hasattr(size, "__len__") and not isinstance(size, (str, bytes)) and len(size) == 2
    if ok:
        ok = all(_is_number(v) and v > 0 for v in size)
    if not ok:
        raise InvalidOptionError(f"{name} must be (width, height) with positive numbers, got {size!r}")
    return float(size[0]), float(size[1])


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _frame(conv: Convention, image_size: Any, resized_size: Any) -> tuple[float, float, float, float]:
    """(image width, image height, model-frame width, model-frame height)."""
    width, height = _check_size("image_size", image_size)
    if conv.scale is not None:
        return width, height, float(conv.scale), float(conv.scale)
    if resized_size is None:
        raise InvalidOptionError(
            f"{conv.model_type} writes pixels of the resized image: pass resized_size=(width, height) "
            "(images[i].size from process_vision_info, resized_size_from_grid(image_grid_thw), "
            "or model_input_size(image_size, ...))"
        )
    rw, rh = _check_size("resized_size", resized_size)
    return width, height, rw, rh


def object_geometry(obj: Any, index: int) -> tuple[str, list[float]]:
    """("box", [x1, y1, x2, y2]) or ("point", [x, y]) of one object, validated."""
    if isinstance(obj, Mapping):
        if obj.get("box") is not None and obj.get("point") is not None:
            raise InvalidOptionError(f"object {index}: has both 'box' and 'point'; give one per object")
        for key, count in (("box", 4), ("point", 2)):
            value = obj.get(key)
            if value is None:
                continue
            values = list(value) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else None
            if values is not None and len(values) == count and all(_is_number(v) for v in values):
                return key, values
            raise InvalidOptionError(f"object {index}: {key!r} must be {count} finite numbers, got {value!r}")
    raise InvalidOptionError(f"object {index}: expected a dict with 'box' (x1, y1, x2, y2) or 'point' (x, y), got {obj!r}")


def _ordered(kind: str, values: list) -> list:
    """Boxes with x1 <= x2 and y1 <= y2 (the cookbooks swap reversed corners the same way)."""
    if kind == "box":
        x1, y1, x2, y2 = values
        return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    return values


def _with(obj: Mapping, kind: str, values: list) -> dict:
    out = dict(obj)
    out[kind] = tuple(values)
    return out


def to_image(
    objects: Sequence[Mapping], model_type: str, image_size: Sequence[float],
    resized_size: Sequence[float] | None = None, *, clip: bool = False,
) -> list[dict]:
    """Objects from ``parse`` in pixels of the original image (exact floats, corners ordered).

    ``image_size`` is the (width, height) of the image as vlutils fed it: EXIF-upright (see
    ``upright_size``). Relative generations: ``x_px = x / 1000 * width``. ``qwen2_5_vl``:
    ``x_px = x / resized_width * width``. ``clip`` clamps into [0, width] x [0, height].
    """
    conv = get_convention(model_type)
    width, height, fw, fh = _frame(conv, image_size, resized_size)
    out = []
    for i, obj in enumerate(objects):
        kind, values = object_geometry(obj, i)
        # the cookbooks' own expression, v / 1000 * W (not v * W / 1000), so that their int()
        # of the same float is never a whole pixel away
        pixels = [v / (fw if j % 2 == 0 else fh) * (width if j % 2 == 0 else height) for j, v in enumerate(values)]
        if clip:
            pixels = [min(max(p, 0.0), width if j % 2 == 0 else height) for j, p in enumerate(pixels)]
        out.append(_with(obj, kind, _ordered(kind, pixels)))
    return out


def to_model(
    objects: Sequence[Mapping], model_type: str, image_size: Sequence[float],
    resized_size: Sequence[float] | None = None,
) -> list[dict]:
    """The inverse of ``to_image``: pixels of the original image -> the integers the model writes.

    Relative generations: ``round(x_px / width * 1000)`` clamped to [0, 1000] ([0, 999] for
    ``qwen_vl``, whose paper says [0, 1000)). ``qwen2_5_vl``: ``round(x_px / width *
    resized_width)`` clamped to [0, resized_width - 1]. Corners are ordered.
    """
    conv = get_convention(model_type)
    width, height, fw, fh = _frame(conv, image_size, resized_size)
    out = []
    for i, obj in enumerate(objects):
        kind, values = object_geometry(obj, i)
        model = []
        for j, v in enumerate(values):
            side, frame = (width, fw) if j % 2 == 0 else (height, fh)
            top = conv.max_value if conv.max_value is not None else int(frame) - 1
            scaled = min(max(v / side * frame, -1.0), top + 1.0)  # clamp first: round(inf) raises
            model.append(min(max(round(scaled), 0), top))
        out.append(_with(obj, kind, _ordered(kind, model)))
    return out


def quantisation_step(
    model_type: str, image_size: Sequence[float], resized_size: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Size in original-image pixels of one model unit along (x, y): what ``to_model`` can lose."""
    conv = get_convention(model_type)
    width, height, fw, fh = _frame(conv, image_size, resized_size)
    return width / fw, height / fh
