"""Write objects as the text a model of each generation is trained to produce (SFT labels).

Objects are in the model's own coordinates (``to_model``'s output). ``parse(format(objs, t), t)``
gives back the same objects.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidOptionError
from .conventions import get_convention, object_geometry, tags



def format(objects: Sequence[Mapping], model_type: str, *, fence: bool = True) -> str:  # noqa: A001
    """The answer text for ``objects``.

    - ``qwen_vl`` / ``qwen2_vl``: ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>`` (Qwen2-VL's
      special tokens instead), consecutive objects with the same label under one reference, as
      Qwen-VL's ``from_list_format`` writes them (an empty reference ends a run before an
      unlabelled object). A point is written as a one-pair box
      ``(x,y)``: not an official Qwen convention (UI-TARS uses it); ``parse`` reads it back.
    - ``qwen2_5_vl``, ``qwen3_vl``, ``qwen3_5``: the JSON list of the official cookbooks,
      one ``{"bbox_2d": [...], "label": ...}`` or ``{"point_2d": [...], ...}`` per line, in a
      ```` ```json ```` fence unless ``fence=False``; ``extra`` keys follow the label.
    """
    conv = get_convention(model_type)
    items = [_item(obj, i) for i, obj in enumerate(objects)]
    if conv.syntax == "tags":
        return _tags(items, tags(conv.model_type))
    lines = []
    for label, kind, values, extra in items:
        entry: dict[str, Any] = {"bbox_2d" if kind == "box" else "point_2d": values}
        if label is not None:
            entry["label"] = label
        entry.update(extra)
        lines.append("\t" + json.dumps(entry, ensure_ascii=False))
    body = "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    return f"```json\n{body}\n```" if fence else body


def _tags(items: list, tags: tuple[str, str, str, str]) -> str:
    ref_open, ref_close, box_open, box_close = tags
    parts, previous = [], object()
    for label, kind, values, _ in items:
        if label is not None and label != previous:
            parts.append(f"{ref_open}{label}{ref_close}")
        elif label is None and isinstance(previous, str):
            parts.append(f"{ref_open}{ref_close}")  # else parse gives it the label before it
        previous = label
        pairs = [f"({_num(values[i])},{_num(values[i + 1])})" for i in range(0, len(values), 2)]
        parts.append(box_open + ",".join(pairs) + box_close)
    return "".join(parts)


def _item(obj: Any, index: int) -> tuple:
    """(label, kind, values, extra) of one object, validated."""
    kind, values = object_geometry(obj, index)
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise InvalidOptionError(f"object {index}: label must be a string or None, got {label!r}")
    extra = obj.get("extra") or {}
    if not isinstance(extra, Mapping):
        raise InvalidOptionError(f"object {index}: extra must be a dict, got {extra!r}")
    return label, kind, [_plain(v) for v in values], dict(extra)


def _plain(value: numbers.Real) -> int | float:
    """Integral values as int (what models write), others as float."""
    value = float(value) if not isinstance(value, int) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _num(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)
