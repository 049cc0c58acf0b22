"""ChatML prompts as the Qwen3.5 / Qwen3.5-MoE chat template writes them, without Jinja.

What differs from the Qwen2-VL template (:mod:`vlutils.chat`):

* no default system prompt, and a system message must come first and hold no images/videos;
* every message's rendered content is stripped of surrounding whitespace;
* assistant turns after the last real user query carry their reasoning as
  ``<think>\\n{reasoning}\\n</think>\\n\\n{reply}`` (from ``reasoning_content``, or split off a
  ``<think>...</think>`` prefix in the content); earlier turns keep the reply only;
* ``tool_calls`` render as ``<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\n...`` blocks, and
  ``tool`` messages as ``<tool_response>`` blocks inside one user turn;
* the generation prompt opens a thinking block: ``<|im_start|>assistant\\n<think>\\n``, or
  with ``enable_thinking=False`` an empty, closed one ``<think>\\n\\n</think>\\n\\n``;
* items the template does not know are an error, not silently dropped.

Vision blocks and their placeholder expansion (timestamped frames) are Qwen3-VL's: the
Qwen3.5 processor is transformers' Qwen3VLProcessor.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .errors import InvalidMessageError

__all__ = [
    "format_qwen35", "format_qwen35_parts", "format_qwen35_with_spans", "format_qwen35_chat",
    "format_qwen35_chat_with_spans",
]

_IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
_VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"


def format_qwen35(
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    add_vision_id: bool = False,
    enable_thinking: bool = True,
) -> str:
    """One conversation as the Qwen3.5 chat template renders it."""
    parts = format_qwen35_parts(
        messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id,
        enable_thinking=enable_thinking,
    )
    return "".join(text for text, _ in parts)


def format_qwen35_chat(
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    system_prompt: str | None = None,
    add_vision_id: bool = False,
    enable_thinking: bool = True,
) -> str:
    """:func:`format_qwen35` with the families' formatter signature: a ``system_prompt``
    string is prepended as a system message when the first message is not one."""
    if isinstance(system_prompt, str) and messages and isinstance(messages, (list, tuple)) and (
        not isinstance(messages[0], dict) or messages[0].get("role") != "system"
    ):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return format_qwen35(
        messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id,
        enable_thinking=enable_thinking,
    )


def format_qwen35_chat_with_spans(
    messages: Sequence[dict], *, system_prompt: str | None = None, add_vision_id: bool = False
) -> tuple[str, list[tuple[int, int, int]]]:
    """:func:`format_qwen35_with_spans` with the families' signature: a ``system_prompt`` string
    is prepended as a system message (the spans keep the caller's message indices)."""
    prepend = isinstance(system_prompt, str) and not (
        messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"
    )
    full = [{"role": "system", "content": system_prompt}, *messages] if prepend else list(messages)
    text, spans = format_qwen35_with_spans(full, add_vision_id=add_vision_id)
    return text, [(m - prepend, a, b) for m, a, b in spans]


def format_qwen35_parts(
    messages: Sequence[dict],
    *,
    add_generation_prompt: bool = True,
    add_vision_id: bool = False,
    enable_thinking: bool = True,
) -> list[tuple[str, bool]]:
    """The same text as ``(piece, is_reply)`` pieces; ``is_reply`` marks each assistant turn's
    output (its thinking block, reply, tool calls and closing ``<|im_end|>``), e.g. for labels."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidMessageError("messages must be a non-empty list of dicts")
    for m, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidMessageError(f"a message must be a dict, got {type(message).__name__}", position=f"message {m}")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise InvalidMessageError("a message needs a 'role' string", position=f"message {m}")
    counts = {"image": 0, "video": 0}
    parts: list[tuple[str, bool]] = []
    if messages[0]["role"] == "system":
        system = _render(messages[0].get("content"), None, add_vision_id, "message 0", system=True).strip()
        parts.append((f"<|im_start|>system\n{system}<|im_end|>\n", False))
    last_query = _last_user_query(messages, add_vision_id)
    for m, message in enumerate(messages):
        where, role = f"message {m}", message["role"]
        content = _render(message.get("content"), counts, add_vision_id, where).strip()
        if role == "system":
            if m != 0:
                raise InvalidMessageError("a system message must be the first message", position=where)
        elif role == "user":
            parts.append((f"<|im_start|>user\n{content}<|im_end|>\n", False))
        elif role == "assistant":
            parts.append(("<|im_start|>assistant\n", False))
            parts.append((_assistant_body(message, content, m > last_query, where) + "<|im_end|>\n", True))
        elif role == "tool":
            previous = messages[m - 1]["role"] if m > 0 else None
            opening = "<|im_start|>user" if previous is not None and previous != "tool" else ""
            nxt = messages[m + 1]["role"] if m + 1 < len(messages) else None
            closing = "<|im_end|>\n" if nxt != "tool" else ""
            parts.append((f"{opening}\n<tool_response>\n{content}\n</tool_response>{closing}", False))
        else:
            raise InvalidMessageError(f"unexpected role {role!r} (system, user, assistant or tool)", position=where)
    if add_generation_prompt:
        think = "<think>\n" if enable_thinking else "<think>\n\n</think>\n\n"
        parts.append(("<|im_start|>assistant\n" + think, False))
    return parts


def format_qwen35_with_spans(
    messages: Sequence[dict], *, add_vision_id: bool = False
) -> tuple[str, list[tuple[int, int, int]]]:
    """``format_qwen35(messages, add_generation_prompt=False)`` and where each assistant turn's
    output is, as ``(message_index, start, end)`` like :func:`vlutils.chat.format_chat_with_spans`.

    ``text[start:end]`` is the turn's ``is_reply`` piece (thinking block when rendered, reply,
    tool calls) through its ``<|im_end|>``; the newline after it is outside. Taken from the
    pieces of the whole conversation, not from prefixes: this template renders an earlier
    assistant turn differently (without its reasoning) once a later user query follows.
    """
    parts = format_qwen35_parts(messages, add_generation_prompt=False, add_vision_id=add_vision_id)
    assistants = iter(m for m, message in enumerate(messages) if message["role"] == "assistant")
    text, spans = "", []
    for piece, is_reply in parts:
        if is_reply:
            if not piece.endswith("<|im_end|>\n"):
                raise InvalidMessageError("an assistant turn does not end with <|im_end|>")
            spans.append((next(assistants), len(text), len(text) + len(piece) - 1))
        text += piece
    return text, spans


def _last_user_query(messages: Sequence[dict], add_vision_id: bool) -> int:
    """Index of the last user message that is not a bare tool response."""
    for m in range(len(messages) - 1, -1, -1):
        if messages[m]["role"] == "user":
            text = _render(messages[m].get("content"), None, add_vision_id, f"message {m}").strip()
            if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
                return m
    raise InvalidMessageError("no user query found in the messages")


def _assistant_body(message: dict, content: str, after_query: bool, where: str) -> str:
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
    reasoning = reasoning.strip()
    body = f"<think>\n{reasoning}\n</think>\n\n{content}" if after_query else content
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, (list, tuple)):
            raise InvalidMessageError("'tool_calls' must be a list", position=where)
        for i, call in enumerate(calls):
            body += _tool_call(call, i, content, f"{where}, tool call {i}")
    return body


def _tool_call(call: Any, index: int, content: str, where: str) -> str:
    if not isinstance(call, dict):
        raise InvalidMessageError("a tool call must be a dict", position=where)
    call = call.get("function", call)
    name, arguments = call.get("name"), call.get("arguments", {})
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise InvalidMessageError("a tool call needs a 'name' string and 'arguments' as a dict", position=where)
    lead = ("\n\n" if content.strip() else "") if index == 0 else "\n"
    text = f"{lead}<tool_call>\n<function={name}>\n"
    for key, value in arguments.items():
        value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text += f"<parameter={key}>\n{value}\n</parameter>\n"
    return text + "</function>\n</tool_call>"


def _kind(item: dict) -> str | None:
    """The template's precedence; ``video_url`` items count as videos, as process_vision_info counts them."""
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind in ("video", "video_url") or "video" in item or "video_url" in item:
        return "video"
    return "text" if "text" in item else None


def _render(content: Any, counts: dict | None, add_vision_id: bool, where: str, system: bool = False) -> str:
    """A message's content as text; ``counts`` (None: do not count) numbers the vision items."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, (list, tuple)):
        raise InvalidMessageError(f"'content' must be a string or a list of items, got {type(content).__name__}", position=where)
    out = []
    for i, item in enumerate(content):
        at = f"{where}, item {i}"
        if not isinstance(item, dict):
            raise InvalidMessageError(f"a content item must be a dict, got {type(item).__name__}", position=at)
        kind = _kind(item)
        if kind in ("image", "video"):
            if system:
                raise InvalidMessageError(f"a system message cannot hold a {kind}", position=at)
            if counts is not None:
                counts[kind] += 1
            label = ("Picture" if kind == "image" else "Video") + f" {counts[kind] if counts else 0}: "
            out.append((label if add_vision_id else "") + (_IMAGE_BLOCK if kind == "image" else _VIDEO_BLOCK))
        elif kind == "text":
            if not isinstance(item["text"], str):
                raise InvalidMessageError(f"'text' must be a string, got {type(item['text']).__name__}", position=at)
            out.append(item["text"])
        else:
            raise InvalidMessageError(f"unknown content item with keys {sorted(item)}", position=at)
    return "".join(out)
