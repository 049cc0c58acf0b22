"""Read boxes and points out of whatever a Qwen-VL model printed, never raising on any string.

Recognised everywhere, in text order (coordinates are kept exactly as written, in the model's
own frame; reversed corners are kept too, ``to_image`` orders them):

- JSON objects with ``bbox_2d`` (4 numbers, or two [x, y] pairs) or ``point_2d`` (2 numbers),
  anywhere in the text: inside code fences or prose, several blocks, wrapped in other objects,
  or in a list cut off by ``max_new_tokens`` (every complete object is kept); Python-literal
  quoting (``{'bbox_2d': ...}``, read by the cookbooks' ``ast.literal_eval``) too. ``label`` becomes
  the label (None when absent); other keys are dropped (kept in ``extra`` with
  ``keep_extra=True``, e.g. Qwen2.5-VL's ``text_content``). An object whose numbers are not
  finite numbers is skipped, the others are kept.
- Qwen-VL ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>`` and Qwen2-VL
  ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``:
  every box that follows a reference with only spaces, newlines or commas between gets its
  label (an empty reference gives None); a box tag holding one (x,y) pair is a point (UI-TARS clicks); one holding 2k
  pairs is k boxes.
- Qwen2.5-VL XML points ``<points x1="..." y1="..." alt="label">phrase</points>``.
- For ``qwen_vl`` / ``qwen2_vl`` only, when the text has no box tag at all: bare
  ``(x1,y1),(x2,y2)`` pairs, which is what is left after decoding Qwen2-VL's answer with
  ``skip_special_tokens=True`` (label None). A box tag cut off before its end is dropped.

Reasoning models: only the text after the last ``</think>`` is read; an unfinished ``<think>``
block (no closing tag) is ignored.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
from typing import Any

from .conventions import get_convention

logger = logging.getLogger(__name__)

_NUM = r"[-+]?\d{1,30}(?:\.\d{1,30})?(?:[eE][-+]?\d{1,3})?"
_NUM_RE = re.compile(_NUM)
_TAG_RE = re.compile(
    r"<ref>(?P<ref>[^<]{0,500})</ref>"
    r"|<\|object_ref_start\|>(?P<ref2>[^<]{0,500})<\|object_ref_end\|>"
    r"|<box>(?P<box>[^<]{0,1000})</box>"
    r"|<\|box_start\|>(?P<box2>[^<]{0,1000})<\|box_end\|>",
)
_GAP_RE = re.compile(r"[\s,;，；、]*")
_POINTS_RE = re.compile(r"<points\b(?P<attrs>[^<>]{0,2000})>(?P<phrase>[^<]{0,1000})</points>")
_ATTR_RE = re.compile(r"""([A-Za-z_][\w-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_BARE_BOX_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_BOX_CONTENT_RE = re.compile(r"[\s\d.,()\[\]eE+\-]*")
_SEPARATORS_RE = re.compile(r"[\s,()\[\]]+")
_DECODER = json.JSONDecoder()
_OBJECT_START_RE = re.compile(r'\{(?=\s*["}])')
_WINDOW = 8192
_MAX_FAILURES = 2000  # real answers have a handful; a text made of '{"' must not take minutes
_MAX_DEPTH = 16


def parse(text: Any, model_type: str, *, keep_extra: bool = False) -> list[dict]:
    """Objects in ``text``: dicts with ``label`` (str or None) and ``box`` (x1, y1, x2, y2) or
    ``point`` (x, y) in the model's own coordinates; with ``keep_extra``, also ``extra`` (the
    object's other JSON keys) when it has any.

    ``model_type`` is checked (unknown -> ``InvalidOptionError``); any string gives a list,
    possibly empty. Bytes are decoded as UTF-8.
    """
    conv = get_convention(model_type)
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        from ..errors import InvalidOptionError

        raise InvalidOptionError(f"text must be a string, got {type(text).__name__}")
    try:
        objects = _parse(_final_answer(text), conv.model_type)
    except Exception:  # the promise is "never raises on any string": log a bug, return nothing
        logger.exception("grounding.parse failed on a %d-character text", len(text))
        return []
    if not keep_extra:
        for obj in objects:
            obj.pop("extra", None)
    return objects


def _final_answer(text: str) -> str:
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return text.split("<think>", 1)[0]
    return text


def _parse(text: str, model_type: str) -> list[dict]:
    found, spans = _json_objects(text)
    if not found and ("'bbox_2d'" in text or "'point_2d'" in text):  # a Python-literal answer
        found, spans = _json_objects(text.replace("'", '"'))  # same length: positions still hold
    found += _tag_objects(text, spans)
    found += _xml_points(text, spans)
    if not found and get_convention(model_type).syntax == "tags" and "<box>" not in text and "<|box_start|>" not in text:
        found = [(m.start(), _make("box", m.groups(), None)) for m in _BARE_BOX_RE.finditer(text)]
    found.sort(key=lambda item: item[0])
    return [obj for _, obj in found if obj is not None]


# ---------------------------------------------------------------- JSON
def _json_objects(text: str) -> tuple[list, list]:
    """Decode a JSON object at every '{' that can start one and is not inside an earlier one."""
    found, spans, end, failures = [], [], 0, 0
    for match in _OBJECT_START_RE.finditer(text):
        start = match.start()
        if start < end:
            continue
        decoded = _decode_at(text, start)
        if decoded is None:
            failures += 1
            if failures > _MAX_FAILURES:
                logger.warning("grounding.parse: gave up looking for JSON after %d undecodable objects "
                               "(the rest of the %d-character text from position %d is not read as JSON)",
                               failures, len(text), start)
                break
            continue
        value, end = decoded
        spans.append((start, end))
        found.extend((start, obj) for obj in _collect(value, 0))
    return found, spans


def _decode_at(text: str, start: int) -> tuple[Any, int] | None:
    """``raw_decode`` on a window from ``start``, widened only while the failure may be the
    window's own cut: a JSON error costs time in proportion to its position in the string
    decoded, so decoding the whole text at every '{' would be quadratic."""
    size = _WINDOW
    while True:
        window = text[start:start + size]
        try:
            value, stop = _DECODER.raw_decode(window)
            return value, start + stop
        except json.JSONDecodeError as exc:
            cut_by_window = start + size < len(text)
            if not cut_by_window or not (exc.msg.startswith("Unterminated string") or exc.pos >= len(window) - 16):
                return None
            size *= 4
        except (ValueError, RecursionError):  # int too long to convert, nested too deep
            return None


def _collect(value: Any, depth: int) -> list[dict]:
    if depth > _MAX_DEPTH:
        return []
    if isinstance(value, list):
        return [obj for item in value for obj in _collect(item, depth + 1)]
    if not isinstance(value, dict):
        return []
    if "bbox_2d" in value or "point_2d" in value:
        obj = _json_object(value)
        return [obj] if obj is not None else []
    return [obj for item in value.values() for obj in _collect(item, depth + 1)]


def _json_object(value: dict) -> dict | None:
    label = value.get("label")
    label = None if label is None else label if isinstance(label, str) else json.dumps(label, ensure_ascii=False)
    extra = {k: v for k, v in value.items() if k not in ("bbox_2d", "point_2d", "label")}
    if "bbox_2d" in value:
        obj = _make("box", _flatten(value["bbox_2d"]), label)
    else:
        obj = _make("point", _flatten(value["point_2d"]), label)
    if obj is not None and extra:
        obj["extra"] = extra
    return obj


def _flatten(value: Any) -> Any:
    """[[x1, y1], [x2, y2]] -> [x1, y1, x2, y2]; anything else unchanged."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [x for pair in value for x in pair]
    return value


# ---------------------------------------------------------------- tags
def _tag_objects(text: str, spans: list) -> list:
    found, label, label_end = [], None, None
    for match in _TAG_RE.finditer(text):
        if _inside(match.start(), spans):
            continue
        ref = match.group("ref") if match.group("ref") is not None else match.group("ref2")
        if ref is not None:
            label, label_end = ref.strip() or None, match.end()
            continue
        content = match.group("box") if match.group("box") is not None else match.group("box2")
        follows = label_end is not None and _GAP_RE.fullmatch(text, label_end, match.start()) is not None
        box_label = label if follows else None
        label_end = match.end() if follows else None
        found.extend((match.start(), obj) for obj in _box_content(content, box_label))
    return found


def _box_content(content: str, label: str | None) -> list[dict]:
    """"(x1,y1),(x2,y2)" -> one box; "(x,y)" -> a point; 2k pairs -> k boxes; else nothing."""
    if not _BOX_CONTENT_RE.fullmatch(content):
        return []
    tokens = [t for t in _SEPARATORS_RE.split(content) if t]
    if not tokens or not all(_NUM_RE.fullmatch(t) for t in tokens):
        return []
    if len(tokens) == 2:
        return [o for o in [_make("point", tokens, label)] if o is not None]
    if len(tokens) % 4:
        return []
    objs = [_make("box", tokens[i:i + 4], label) for i in range(0, len(tokens), 4)]
    return [o for o in objs if o is not None]


def _xml_points(text: str, spans: list) -> list:
    found = []
    for match in _POINTS_RE.finditer(text):
        if _inside(match.start(), spans):
            continue
        attrs = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
                 for m in _ATTR_RE.finditer(match.group("attrs"))}
        phrase = match.group("phrase").strip()
        label = attrs.get("alt") or phrase or None
        i = 1
        while f"x{i}" in attrs and f"y{i}" in attrs:
            obj = _make("point", [attrs[f"x{i}"].strip(), attrs[f"y{i}"].strip()], label)
            if obj is not None:
                found.append((match.start(), obj))
            i += 1
    return found


def _inside(position: int, spans: list) -> bool:
    """Whether ``position`` lies in one of the sorted, disjoint (start, stop) ``spans``."""
    i = bisect.bisect_right(spans, (position, math.inf)) - 1
    return i >= 0 and spans[i][0] <= position < spans[i][1]


# ---------------------------------------------------------------- numbers
def _make(kind: str, values: Any, label: str | None) -> dict | None:
    """{"label", kind: tuple} when ``values`` are the right count of finite numbers, else None."""
    count = 4 if kind == "box" else 2
    if not isinstance(values, (list, tuple)) or len(values) != count:
        return None
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return None
    return {"label": label, kind: tuple(numbers)}


def _number(value: Any) -> int | float | None:
    if isinstance(value, str):
        if not _NUM_RE.fullmatch(value):
            return None
        value = float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    # no image is 1e30 pixels wide: refusing such values keeps every later product finite
    return value if math.isfinite(value) and abs(value) < 1e30 else None
