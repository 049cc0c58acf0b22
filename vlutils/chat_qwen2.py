"""ChatML prompts as the Qwen2-VL / Qwen2.5-VL / Qwen3-VL chat templates write them, without Jinja.

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\\n
    <|im_start|>assistant\\n

The system prompt reaches these functions already chosen (Qwen2-VL and Qwen2.5-VL default to
"You are a helpful assistant.", Qwen3-VL to none: the families say which, and
:func:`vlutils.chat.format_chat` applies it). Unknown content items render nothing, as in the
templates.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import InvalidMessageError

__all__ = [
    "DEFAULT_SYSTEM_PROMPT", "IMAGE_PAD", "VIDEO_PAD", "VISION_START", "VISION_END", "IMAGE_BLOCK", "VIDEO_BLOCK",
    "format_qwen2", "format_qwen2_with_spans", "item_kind",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
IMAGE_BLOCK = VISION_START + IMAGE_PAD + VISION_END
VIDEO_BLOCK = VISION_START + VIDEO_PAD + VISION_END


def format_qwen2(
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    system_prompt: str | None = None,
    add_vision_id: bool = False,
    enable_thinking: bool = True,
) -> str:
    """One conversation as ChatML text with one vision block per image / video item.

    ``system_prompt`` is added when the first message is not a system message (None: no
    system turn). ``enable_thinking`` is accepted for a uniform signature and has no effect."""
    if not isinstance(messages, (list, tuple)):
        raise InvalidMessageError(f"messages must be a list of dicts, got {type(messages).__name__}")
    parts: list[str] = []
    counts = {"image": 0, "video": 0}
    for m, message in enumerate(messages):
        where = f"message {m}"
        if not isinstance(message, dict):
            raise InvalidMessageError(f"a message must be a dict, got {type(message).__name__}", position=where)
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidMessageError("a message needs a 'role' string", position=where)
        if m == 0 and role != "system" and system_prompt is not None:
            parts.append(f"{IM_START}system\n{system_prompt}{IM_END}\n")
        parts.append(f"{IM_START}{role}\n")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, (list, tuple)):
            for i, item in enumerate(content):
                parts.append(_render_item(item, counts, add_vision_id, f"{where}, item {i}"))
        else:
            raise InvalidMessageError(
                f"'content' must be a string or a list of items, got {type(content).__name__}", position=where
            )
        parts.append(f"{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def format_qwen2_with_spans(
    messages: Sequence[dict], *, system_prompt: str | None = None, add_vision_id: bool = False
) -> tuple[str, list[tuple[int, int, int]]]:
    """``format_qwen2(messages, add_generation_prompt=False)`` and where each reply is.

    Returns ``(text, spans)``: one ``(message_index, start, end)`` per assistant message, the
    characters ``text[start:end]`` being its rendered content followed by ``<|im_end|>``
    (the header ``<|im_start|>assistant\\n`` and the newline after ``<|im_end|>`` are outside).
    The boundaries come from rendering: message ``m`` is the text the formatter adds between
    the first ``m`` and ``m + 1`` messages, so they follow the formatter exactly.
    """
    options = {"add_generation_prompt": False, "system_prompt": system_prompt, "add_vision_id": add_vision_id}
    text = format_qwen2(messages, **options)
    spans: list[tuple[int, int, int]] = []
    end = 0
    for m, message in enumerate(messages):
        prefix = format_qwen2(messages[: m + 1], **options)
        if not text.startswith(prefix):  # a later message changed how earlier ones render
            raise InvalidMessageError("the chat format is not prefix-consistent; cannot locate replies")
        start, end = end, len(prefix)
        if message.get("role") != "assistant":
            continue
        if m == 0:  # skip a default system prompt rendered before the first message
            start = end - len(format_qwen2(messages[:1], **{**options, "system_prompt": None}))
        header, footer = f"{IM_START}assistant\n", f"{IM_END}\n"
        if not (text.startswith(header, start) and text.startswith(footer, end - len(footer))):
            raise InvalidMessageError("assistant message does not render as a ChatML turn", position=f"message {m}")
        spans.append((m, start + len(header), end - 1))
    return text, spans


def _render_item(item: Any, counts: dict, add_vision_id: bool, where: str) -> str:
    if not isinstance(item, dict):
        raise InvalidMessageError(f"a content item must be a dict, got {type(item).__name__}", position=where)
    kind = item_kind(item)
    if kind == "image":
        counts["image"] += 1
        return (f"Picture {counts['image']}: " if add_vision_id else "") + IMAGE_BLOCK
    if kind == "video":
        counts["video"] += 1
        return (f"Video {counts['video']}: " if add_vision_id else "") + VIDEO_BLOCK
    if kind == "text":
        text = item["text"]
        if not isinstance(text, str):
            raise InvalidMessageError(f"'text' must be a string, got {type(text).__name__}", position=where)
        return text
    return ""  # unknown items render nothing, as in the template


def item_kind(item: dict) -> str | None:
    """'image', 'video', 'text' or None, with the precedence of the chat template (and of
    process_vision_info, which also counts ``video_url`` items as videos)."""
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind in ("video", "video_url") or "video" in item or "video_url" in item:
        return "video"
    if "text" in item:
        return "text"
    return None
