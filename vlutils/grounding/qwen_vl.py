"""Qwen-VL's own grounding round trip: ``draw_bbox_on_latest_picture`` on vlutils' ``draw``.

The original tokenizer turns an answer such as ``<ref>dog</ref><box>(120,300),(540,880)</box>``
into boxes, finds the latest picture of the conversation and draws them on it::

    boxes:   each <box>(x1,y1),(x2,y2)</box> in order; its ref is the <ref>...</ref> element
             right before it (no text between), stripped; a second box after the same ref has none
    picture: the last <img>...</img> of the answer, else of the history's queries, newest first
    pixels:  int(x / 1000 * W), int(y / 1000 * H)   (W, H: the picture as opened, no EXIF turn)

:func:`qwen_vl_boxes`, :func:`latest_picture` and :func:`pixel_boxes` reproduce those three
steps; :func:`draw_on_latest_picture` draws with :func:`vlutils.grounding.draw` (a colour per
label instead of the original's random matplotlib colours and SimSun font).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any, Sequence

from PIL import Image

from ..errors import InvalidMessageError, InvalidOptionError
from .drawing import draw

__all__ = ["qwen_vl_boxes", "latest_picture", "pixel_boxes", "draw_on_latest_picture", "box_item"]

logger = logging.getLogger(__name__)

_TAGS = {"<img>": "</img>", "<ref>": "</ref>", "<box>": "</box>", "<quad>": "</quad>"}
_START = re.compile("|".join(re.escape(tag) for tag in _TAGS))


def _elements(text: str) -> list[tuple[str, str]]:
    """The original ``to_list_format``: ``(kind, value)`` with kind image/ref/box/quad/text."""
    text = unicodedata.normalize("NFC", text)
    out, position = [], 0
    while (match := _START.search(text, position)) is not None:
        if match.start() > position:
            out.append(("text", text[position:match.start()]))
        end_tag = _TAGS[match.group()]
        end = text.find(end_tag, match.end())
        if end < 0:
            raise InvalidMessageError(f"unclosed {match.group()} tag in {text[match.start():match.start() + 60]!r}")
        out.append((match.group()[1:-1], text[match.end():end]))
        position = end + len(end_tag)
    if position < len(text):
        out.append(("text", text[position:]))
    return out


def qwen_vl_boxes(response: str) -> list[dict]:
    """Boxes of an answer in the model's 0-1000 frame: ``{"box": (x1, y1, x2, y2), "label": ref or None}``,
    as the original ``_fetch_all_box_with_ref`` finds them. A box whose content is not four
    integers is skipped with a warning (the original stops with an error)."""
    if not isinstance(response, str):
        raise InvalidOptionError(f"response must be a str, got {type(response).__name__}")
    elements = _elements(response)
    boxes = []
    for i, (kind, value) in enumerate(elements):
        if kind != "box":
            continue
        try:
            numbers = tuple(int(v) for v in value.replace("(", "").replace(")", "").split(","))
        except ValueError:
            numbers = ()
        if len(numbers) != 4:
            logger.warning("skipping a <box> that is not four integers: %r", value[:60])
            continue
        label = elements[i - 1][1].strip() if i > 0 and elements[i - 1][0] == "ref" else None
        boxes.append({"box": numbers, "label": label})
    return boxes


def latest_picture(response: str, history: Sequence[tuple[str, str | None]] | None = None) -> str | None:
    """The reference string of the latest ``<img>`` in the answer, else in the history's queries
    (newest first), as the original ``_fetch_latest_picture``; None when there is none."""
    for query, _ in [*(history or []), (response, None)][::-1]:
        for kind, value in _elements(query)[::-1]:
            if kind == "img":
                return value
    return None


def pixel_boxes(boxes: Sequence[dict], size: tuple[int, int]) -> list[dict]:
    """Boxes in the picture's pixels, ``int(v / 1000 * side)`` as the original draws them
    (``size`` = (width, height))."""
    width, height = size
    out = []
    for obj in boxes:
        x1, y1, x2, y2 = obj["box"]
        pixels = (int(x1 / 1000 * width), int(y1 / 1000 * height), int(x2 / 1000 * width), int(y2 / 1000 * height))
        out.append({**obj, "box": pixels})
    return out


def box_item(boxes: Sequence[Sequence[float]], image_size: tuple[int, int], ref: str | None = None) -> dict:
    """A message content item ``{"type": "box", "box": [...], "ref": ref}`` for boxes given in the
    pixels of an image of ``image_size`` (width, height): mapped to Qwen-VL's 0-999 grid by
    :func:`vlutils.grounding.to_model` (round, clamp), ready for ``build_inputs`` / ``from_list_format``."""
    from .conventions import to_model

    grid = to_model([{"box": box} for box in boxes], "qwen_vl", image_size=image_size)
    item = {"type": "box", "box": [list(obj["box"]) for obj in grid]}
    if ref is not None:
        item["ref"] = ref
    return item


def draw_on_latest_picture(
    response: str,
    history: Sequence[tuple[str, str | None]] | Sequence[dict] | None = None,
    *,
    image: Any = None,
    **draw_options: Any,
) -> Image.Image | None:
    """The latest picture with the answer's boxes drawn on it, or None (no picture or no box),
    like the original ``tokenizer.draw_bbox_on_latest_picture(response, history)``.

    ``history``: the original's ``(query, response)`` pairs, or vlutils messages (their last
    image item, or ``<img>`` written in a user text, is the picture). ``image`` overrides the
    picture (a path, URL, PIL image... any vlutils image source). The picture is opened as the
    original opens it: through vlutils' sources, no EXIF turn, ``convert("RGB")``.
    """
    from ..image_qwen_vl import load_qwen_vl_image

    boxes = qwen_vl_boxes(response)
    source = image if image is not None else _picture(response, history)
    if source is None or not boxes:
        return None
    picture = load_qwen_vl_image({"image": source}).convert("RGB")
    objects = pixel_boxes(boxes, picture.size)
    return draw(picture, objects, **draw_options)


def _picture(response: str, history: Any) -> Any:
    if history and isinstance(history[0], dict):  # vlutils messages
        from ..chat_qwen_vl import conversation_turns
        from ..image import image_source

        found = latest_picture(response)
        if found is not None:
            return found
        images = conversation_turns(list(history)).images
        return image_source(images[-1]) if images else None
    return latest_picture(response, history)
