"""Qwen-VL / Qwen-VL-Chat prompts, token for token as the original remote code builds them.

Three builders, each equal to its original:

* :func:`from_list_format` = ``QWenTokenizer.from_list_format``: ``[{"image": ref}, {"text": t},
  {"ref": r, "box": [(x1, y1, x2, y2), ...]}]`` -> ``"Picture 1: <img>ref</img>\\nt<ref>r</ref><box>(x1,y1),(x2,y2)</box>"``;
* :func:`make_context` = ``qwen_generation_utils.make_context`` (what ``model.chat`` feeds the
  model): ChatML with a system prompt, the ``history`` of ``(query, response)`` pairs (oldest
  dropped first past ``max_window_size`` tokens) and the query, each piece tokenized on its
  own (role, ``"\\n"``, content), so BPE never merges across the pieces;
* :func:`training_pieces` = Qwen-VL's ``finetune.py`` ``preprocess``: the same layout ending in
  ``<|im_end|>\\n`` after every turn, with its training targets.

:func:`conversation_turns` turns vlutils messages (``{"role", "content"}`` with content items
``{"type": "image", "image": ...}``, ``{"type": "text", ...}``, ``{"type": "box", "box": [...],
"ref": ...}`` on the model's 0-1000 grid; :func:`vlutils.grounding.qwen_vl.box_item` makes one
from pixel boxes) into the original's ``system``, ``history`` and ``query`` strings.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import InvalidMessageError, InvalidOptionError
from .tiktoken_qwen import IM_END, IM_START, VL_TAGS, QwenTiktokenTokenizer

__all__ = [
    "DEFAULT_SYSTEM_PROMPT", "MAX_WINDOW_SIZE", "IGNORE_INDEX", "Turns", "from_list_format", "make_context",
    "conversation_turns", "training_pieces", "image_reference", "format_qwen_vl", "format_qwen_vl_with_spans",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # model.chat's default ``system``
MAX_WINDOW_SIZE = 6144  # Qwen-VL-Chat's generation_config.max_window_size
IGNORE_INDEX = -100
_ROLES = ("user", "assistant")
# An image span written into text, as the tokenizer finds it (<img> then the next </img>).
_INLINE_IMAGE = re.compile(r"<img>(.*?)</img>", re.DOTALL)


def from_list_format(items: Sequence[dict]) -> str:
    """A query string from list items, as ``QWenTokenizer.from_list_format`` writes it.

    ``{"image": ref}`` -> ``Picture N: <img>ref</img>\\n`` (N counts the list's images from 1);
    ``{"text": t}`` -> ``t``; ``{"box": [(x1, y1, x2, y2), ...], "ref": r}`` -> ``<ref>r</ref>``
    (when ``ref`` is given) then one ``<box>(x1,y1),(x2,y2)</box>`` per box, coordinates
    written with ``%d`` (0-1000 grid). One flat ``[x1, y1, x2, y2]`` is also taken as one box.
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InvalidMessageError(f"from_list_format takes a list of dicts, got {type(items).__name__}")
    text, images = "", 0
    for index, item in enumerate(items):
        where = f"item {index}"
        if not isinstance(item, dict):
            raise InvalidMessageError(f"a list item must be a dict, got {type(item).__name__}", position=where)
        if "image" in item:
            images += 1
            text += f"Picture {images}: <img>{_string(item['image'], 'image', where)}</img>\n"
        elif "text" in item:
            text += _string(item["text"], "text", where)
        elif "box" in item:
            if "ref" in item:
                text += f"<ref>{_string(item['ref'], 'ref', where)}</ref>"
            for box in _boxes(item["box"], where):
                text += "<box>(%d,%d),(%d,%d)</box>" % tuple(box)
        else:
            raise InvalidMessageError(f"unsupported item with keys {sorted(item)} (image, text or box)", position=where)
    return text


def make_context(
    tokenizer: QwenTiktokenTokenizer,
    query: str,
    history: Sequence[tuple[str, str | None]] | None = None,
    system: str = "",
    max_window_size: int = MAX_WINDOW_SIZE,
) -> tuple[str, list[int]]:
    """``(raw_text, ids)`` exactly as the original ``make_context(..., chat_format="chatml")``.

    ``model.chat`` passes ``system="You are a helpful assistant."`` (:data:`DEFAULT_SYSTEM_PROMPT`)
    and ``max_window_size=6144``. History turns are added newest first while the total stays
    under ``max_window_size`` tokens; the first that does not fit drops it and all older ones.
    """
    history = list(history or [])
    nl = tokenizer.encode("\n")
    system_text, system_part = _role_piece(tokenizer, "system", system, nl)
    system_ids = [tokenizer.im_start_id, *system_part, tokenizer.im_end_id]
    raw_text, context = "", []
    for turn, pair in enumerate(reversed(history)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InvalidMessageError("a history entry must be a (query, response) pair",
                                      position=f"history {len(history) - 1 - turn}")
        turn_query, turn_response = pair
        query_text, query_part = _role_piece(tokenizer, "user", turn_query, nl)
        query_ids = [tokenizer.im_start_id, *query_part, tokenizer.im_end_id]
        if turn_response is not None:
            response_text, response_part = _role_piece(tokenizer, "assistant", turn_response, nl)
            response_ids = [tokenizer.im_start_id, *response_part, tokenizer.im_end_id]
            next_ids = nl + query_ids + nl + response_ids
            previous = f"\n{IM_START}{query_text}{IM_END}\n{IM_START}{response_text}{IM_END}"
        else:
            next_ids = nl + query_ids + nl
            previous = f"\n{IM_START}{query_text}{IM_END}\n"
        if len(system_ids) + len(next_ids) + len(context) >= max_window_size:
            break
        context = next_ids + context
        raw_text = previous + raw_text
    ids = system_ids + context
    ids += nl + [tokenizer.im_start_id] + _role_piece(tokenizer, "user", query, nl)[1] + [tokenizer.im_end_id]
    ids += nl + [tokenizer.im_start_id] + tokenizer.encode("assistant") + nl
    raw_text = f"{IM_START}{system_text}{IM_END}" + raw_text
    raw_text += f"\n{IM_START}user\n{query}{IM_END}\n{IM_START}assistant\n"
    return raw_text, ids


def _role_piece(tokenizer: QwenTiktokenTokenizer, role: str, content: Any, nl: list[int]) -> tuple[str, list[int]]:
    """``role\\ncontent`` and its ids: role, newline and content encoded separately; only the
    Qwen-VL tags are special inside (``allowed_special=set(IMAGE_ST)``)."""
    if not isinstance(content, str):
        raise InvalidMessageError(f"{role} text must be a str, got {type(content).__name__}")
    ids = tokenizer.encode(role, allowed_special=VL_TAGS) + nl + tokenizer.encode(content, allowed_special=VL_TAGS)
    return f"{role}\n{content}", ids


@dataclass
class Turns:
    """A conversation in the original's terms: ``system`` prompt, the ``turns`` as
    ``(role, text)`` in order (user / assistant alternating from a user turn), and the
    images in prompt order (``images``: the image items, and ``{"image": ref}`` for each
    ``<img>ref</img>`` written directly in a text, which the original model loads from ``ref``)."""

    system: str
    turns: list[tuple[str, str]]
    images: list[dict]

    def history_and_query(self) -> tuple[list[tuple[str, str | None]], str]:
        """``(history, query)`` for :func:`make_context`: the conversation must end with a user turn."""
        if not self.turns or self.turns[-1][0] != "user":
            raise InvalidMessageError("a generation prompt needs the conversation to end with a user message")
        texts = [text for _, text in self.turns]
        history = [(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2)]
        return history, texts[-1]


def conversation_turns(messages: Sequence[dict], system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> Turns:
    """vlutils messages as the original's strings (see the module docstring).

    A leading ``system`` message gives the system prompt, else ``system_prompt`` (default:
    "You are a helpful assistant.", what ``model.chat`` uses; None: an empty system turn, as
    the original always writes one). Then user and assistant
    messages must alternate, starting with a user one. List contents go through
    :func:`from_list_format` (one per message, so pictures are numbered per message, as each
    original query is built); an image's reference string is :func:`image_reference`.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidMessageError("messages must be a non-empty list of dicts")
    system = "" if system_prompt is None else system_prompt
    if not isinstance(system, str):
        raise InvalidOptionError(f"system_prompt must be a str or None, got {type(system).__name__}")
    turns: list[tuple[str, str]] = []
    images: list[dict] = []
    for m, message in enumerate(messages):
        where = f"message {m}"
        if not isinstance(message, dict):
            raise InvalidMessageError(f"a message must be a dict, got {type(message).__name__}", position=where)
        role, content = message.get("role"), message.get("content")
        if role == "system":
            if m != 0:
                raise InvalidMessageError("a system message must be the first message", position=where)
            system = _content_text(content, images, where, system=True)
            continue
        expected = _ROLES[len(turns) % 2]
        if role != expected:
            raise InvalidMessageError(f"expected a {expected} message here (user and assistant alternate, "
                                      f"starting with user), got role {role!r}", position=where)
        turns.append((role, _content_text(content, images, where)))
    if not turns:
        raise InvalidMessageError("the conversation has no user message")
    return Turns(system, turns, images)


def _content_text(content: Any, images: list[dict], where: str, system: bool = False) -> str:
    if isinstance(content, str):
        _inline_images(content, images, where, system)
        return content
    if not isinstance(content, (list, tuple)):
        raise InvalidMessageError(f"'content' must be a string or a list of items, got {type(content).__name__}",
                                  position=where)
    items = []
    for i, item in enumerate(content):
        at = f"{where}, item {i}"
        if not isinstance(item, dict):
            raise InvalidMessageError(f"a content item must be a dict, got {type(item).__name__}", position=at)
        kind = _item_kind(item)
        if kind == "image":
            if system:
                raise InvalidMessageError("a system message cannot hold an image", position=at)
            if item.get("type") == "video" or "video" in item:
                raise InvalidMessageError("Qwen-VL has no video input", position=at)
            images.append(item)
            items.append({"image": image_reference(item)})
        elif kind == "video":
            raise InvalidMessageError("Qwen-VL has no video input", position=at)
        elif kind == "text":
            _inline_images(item["text"], images, at, system)
            items.append({"text": item["text"]})
        elif kind == "box":
            items.append({k: item[k] for k in ("ref", "box") if k in item})
        else:
            raise InvalidMessageError(f"unsupported content item with keys {sorted(item)} "
                                      "(image, text or box items)", position=at)
    try:
        return from_list_format(items)
    except InvalidMessageError as exc:
        raise InvalidMessageError(exc.reason, position=f"{where}, {exc.position}") from None


def _inline_images(text: Any, images: list[dict], where: str, system: bool) -> None:
    """Register each ``<img>ref</img>`` written in a text as an image whose source is ``ref``."""
    if not isinstance(text, str):
        return  # from_list_format reports the type
    for match in _INLINE_IMAGE.finditer(unicodedata.normalize("NFC", text)):
        if system:
            raise InvalidMessageError("a system message cannot hold an image", position=where)
        images.append({"image": match.group(1)})


def _item_kind(item: dict) -> str | None:
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind in ("video", "video_url") or "video" in item or "video_url" in item:
        return "video"
    if kind == "box" or "box" in item:
        return "box"
    if kind == "text" or "text" in item:
        return "text" if "text" in item else None
    return None


def image_reference(item: dict) -> str:
    """The string written inside ``<img>...</img>`` for an image item: the source as given when
    it is a string (a path, URL, ``file://`` or data URI) of at most 256 UTF-8 bytes, the
    original's limit; otherwise (a PIL image, an array, bytes, a longer string) the empty
    string. The model reads the pixels from ``pixel_values``, never from this string."""
    from .image import image_source

    value = image_source(item)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and len(value.encode("utf-8")) <= 256 and "<" not in value:
        return value
    return ""


def training_pieces(
    tokenizer: QwenTiktokenTokenizer, turns: Turns, label_style: str = "original"
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a whole conversation as Qwen-VL's ``finetune.py`` builds them.

    Layout: ``<|im_start|>system\\n{system}<|im_end|>\\n`` then ``<|im_start|>{role}\\n{text}<|im_end|>\\n``
    per turn; role, newline and text are tokenized separately, the text with every special token
    allowed. ``label_style="original"``: finetune.py's targets, which train ``<|im_start|>``,
    ``<|im_end|>`` and the closing ``\\n`` of every turn (system and user too) and the assistant
    text; ``"assistant"``: vlutils' rule, only each assistant text and its ``<|im_end|>``.
    """
    if label_style not in ("original", "assistant"):
        raise InvalidOptionError(f"label_style must be 'original' or 'assistant', got {label_style!r}")
    nl = tokenizer.encode("\n")
    im_start, im_end = tokenizer.im_start_id, tokenizer.im_end_id
    original = label_style == "original"
    system_ids = [im_start, *tokenizer.encode("system"), *nl, *tokenizer.encode(turns.system), im_end, *nl]
    ids = list(system_ids)
    labels = [im_start, *[IGNORE_INDEX] * (len(system_ids) - 3), im_end, *nl] if original else [IGNORE_INDEX] * len(ids)
    for role, text in turns.turns:
        role_ids = tokenizer.encode(role)
        text_ids = tokenizer.encode(text)
        ids += [im_start, *role_ids, *nl, *text_ids, im_end, *nl]
        if role == "assistant":
            head = [im_start if original else IGNORE_INDEX, *[IGNORE_INDEX] * (len(role_ids) + len(nl))]
            tail = [im_end, *(nl if original else [IGNORE_INDEX] * len(nl))]
            labels += head + text_ids + tail
        elif original:
            labels += [im_start, *[IGNORE_INDEX] * (len(role_ids) + len(nl) + len(text_ids)), im_end, *nl]
        else:
            labels += [IGNORE_INDEX] * (len(role_ids) + len(nl) + len(text_ids) + 3)
    return ids, labels


def _string(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidMessageError(f"'{name}' must be a str, got {type(value).__name__}", position=where)
    return value


def _boxes(value: Any, where: str) -> list[list[float]]:
    """A list of ``(x1, y1, x2, y2)`` boxes (or one flat box) as numbers."""
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidMessageError("'box' must be a list of (x1, y1, x2, y2) boxes", position=where)
    for box in value:
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise InvalidMessageError(f"a box must be 4 numbers (x1, y1, x2, y2), got {box!r}", position=where)
    return [list(box) for box in value]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_qwen_vl(
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    add_vision_id: bool = False,
    enable_thinking: bool = True,
) -> str:
    """The prompt text (``format_chat(..., model_type="qwen_vl")``): ``make_context``'s
    ``raw_text`` with a generation prompt (no ``max_window_size`` cut: that needs the
    tokenizer), else the ``finetune.py`` text. Pictures are always numbered ("Picture N: ");
    ``add_vision_id`` and ``enable_thinking`` have no effect. The model's ids are not this text
    tokenized in one piece (see :func:`make_context`)."""
    turns = conversation_turns(messages, system_prompt)
    text = f"{IM_START}system\n{turns.system}{IM_END}"
    if add_generation_prompt:
        history, query = turns.history_and_query()
        for turn_query, turn_response in history:
            text += f"\n{IM_START}user\n{turn_query}{IM_END}\n{IM_START}assistant\n{turn_response}{IM_END}"
        return text + f"\n{IM_START}user\n{query}{IM_END}\n{IM_START}assistant\n"
    return text + "\n" + "".join(f"{IM_START}{role}\n{body}{IM_END}\n" for role, body in turns.turns)


def format_qwen_vl_with_spans(
    messages: Sequence[dict], *, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, add_vision_id: bool = False
) -> tuple[str, list[tuple[int, int, int]]]:
    """The ``finetune.py`` text and each assistant reply's ``(message_index, start, end)``
    characters (its text and ``<|im_end|>``), like the other families' formatters."""
    turns = conversation_turns(messages, system_prompt)
    text = f"{IM_START}system\n{turns.system}{IM_END}\n"
    offset = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
    spans = []
    for index, (role, body) in enumerate(turns.turns):
        text += f"{IM_START}{role}\n"
        if role == "assistant":
            spans.append((index + offset, len(text), len(text) + len(body) + len(IM_END)))
        text += f"{body}{IM_END}\n"
    return text, spans
