"""Dataset records -> conversations that ``process_vision_info`` and ``build_sample`` take.

Formats:

* ``messages``: ``{"messages": [...]}`` exactly as process_vision_info takes them;
* ``sharegpt`` (LLaMA-Factory): ``messages`` (role/content) or ``conversations``
  (from/value) with string content holding ``<image>`` / ``<video>`` tags, filled in order
  from the record's ``images`` / ``videos`` lists; an optional ``system`` string;
* ``llava``: ``image`` (a path or a list) + ``conversations`` with ``human`` / ``gpt``.

Tags and media must agree in number, else the record is an :class:`InvalidRecordError`.
Relative media paths resolve against ``media_dir`` or the source file's folder. The
source's image/video settings are added to items that do not set those keys.
"""

from __future__ import annotations

import json
import os
import re

from ..errors import InvalidRecordError
from .spec import SourceSpec, dirname

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_TAG = re.compile(r"<image>|<video>")
_EXCLUSIVE = (("fps", "nframes"),)  # an item that sets one of these overrides the other's default


def parse_record(line: str | bytes, source: SourceSpec, path: str) -> list[dict]:
    """One JSONL line of ``source`` (read from ``path``) -> a conversation (list of messages)."""
    try:
        record = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except UnicodeDecodeError as exc:
        raise InvalidRecordError(f"not valid UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidRecordError(f"not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise InvalidRecordError(f"a record must be a JSON object, got {type(record).__name__}")
    fmt = source.format if source.format != "auto" else detect_format(record)
    if fmt == "messages":
        messages = _from_messages(record)
    elif fmt == "sharegpt":
        messages = _from_sharegpt(record)
    else:
        messages = _from_llava(record)
    base = source.media_dir or (dirname(path) if "://" in path else os.path.dirname(os.path.abspath(path)))
    return [_finish_message(m, base, source) for m in messages]


def detect_format(record: dict) -> str:
    """llava (``image`` + ``conversations``), sharegpt (``conversations``, media lists, or tags in
    string content) or messages."""
    if "conversations" in record:
        return "llava" if "image" in record and "images" not in record else "sharegpt"
    if "images" in record or "videos" in record:
        return "sharegpt"
    messages = record.get("messages")
    if isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), str) and _TAG.search(m["content"]) for m in messages
    ):
        return "sharegpt"
    return "messages"


def _from_messages(record: dict) -> list[dict]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRecordError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise InvalidRecordError(f"message {i} needs a role of system/user/assistant")
        if not isinstance(message.get("content"), (str, list)):
            raise InvalidRecordError(f"message {i} needs string or list content")
    return [dict(m) for m in messages]


def _turns(record: dict) -> list[tuple[str, str]]:
    """(role, text) pairs of a sharegpt/llava record, in either spelling."""
    if "conversations" in record:
        raw, role_key, text_key = record["conversations"], "from", "value"
    else:
        raw, role_key, text_key = record.get("messages"), "role", "content"
    if not isinstance(raw, list) or not raw:
        raise InvalidRecordError("'conversations' / 'messages' must be a non-empty list")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise InvalidRecordError(f"turn {i} must be an object")
        role = _ROLES.get(turn.get(role_key))
        if role is None:
            raise InvalidRecordError(f"turn {i} has an unsupported role {turn.get(role_key)!r}")
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise InvalidRecordError(f"turn {i} needs a string {text_key!r}")
        turns.append((role, text))
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise InvalidRecordError("'system' must be a string")
        if turns[0][0] != "system":
            turns.insert(0, ("system", system))
    return turns


def _media_list(record: dict, key: str) -> list:
    value = record.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, list)) for v in value):
        raise InvalidRecordError(f"'{key}' must be a list of paths")
    return list(value)


def _from_sharegpt(record: dict, images: list | None = None) -> list[dict]:
    images = _media_list(record, "images") if images is None else images
    videos = _media_list(record, "videos")
    queues = {"<image>": list(images), "<video>": list(videos)}
    tags = {"<image>": 0, "<video>": 0}
    messages = []
    for role, text in _turns(record):
        content: list[dict] = []
        pos = 0
        for match in _TAG.finditer(text):
            tag = match.group()
            tags[tag] += 1
            if text[pos:match.start()]:
                content.append({"type": "text", "text": text[pos:match.start()]})
            if queues[tag]:
                kind = tag[1:-1]
                content.append({"type": kind, kind: queues[tag].pop(0)})
            pos = match.end()
        if text[pos:]:
            content.append({"type": "text", "text": text[pos:]})
        if not content:
            content.append({"type": "text", "text": ""})
        messages.append({"role": role, "content": content})
    if tags["<image>"] != len(images) or tags["<video>"] != len(videos):
        raise InvalidRecordError(
            f"tags and files disagree: {tags['<image>']} <image> tag(s) for {len(images)} image(s), "
            f"{tags['<video>']} <video> tag(s) for {len(videos)} video(s)"
        )
    return messages


def _from_llava(record: dict) -> list[dict]:
    return _from_sharegpt({k: v for k, v in record.items() if k != "image"}, images=_media_list(record, "image"))


def _finish_message(message: dict, base: str, source: SourceSpec) -> dict:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    items = []
    for item in content:
        if isinstance(item, dict):
            kind = _kind(item)
            if kind is not None:
                item = _with_defaults(_resolved(item, base), source.image if kind == "image" else source.video)
        items.append(item)
    return {**message, "content": items}


def _kind(item: dict) -> str | None:
    if "video" in item or "video_url" in item or item.get("type") in ("video", "video_url"):
        return "video"
    if "image" in item or "image_url" in item or item.get("type") in ("image", "image_url"):
        return "image"
    return None


def _with_defaults(item: dict, defaults: dict) -> dict:
    """Item keys win; an item choosing fps or nframes also wins over the other's default."""
    out = dict(item)
    for key, value in defaults.items():
        if key in out or any(key in group and any(k in item for k in group) for group in _EXCLUSIVE):
            continue
        if key in ("resized_height", "resized_width") and ("resized_height" in item or "resized_width" in item):
            continue
        out[key] = value
    return out


def _resolved(item: dict, base: str) -> dict:
    out = dict(item)
    for key in ("image", "video", "image_url", "video_url"):
        if key not in out:
            continue
        value = out[key]
        if isinstance(value, dict) and isinstance(value.get("url"), str):
            out[key] = {**value, "url": resolve_path(value["url"], base)}
        elif isinstance(value, list):
            out[key] = [resolve_path(v, base) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            out[key] = resolve_path(value, base)
    return out


def resolve_path(value: str, base: str) -> str:
    """A relative path made absolute against ``base`` (a folder or an ``s3://`` prefix, so media
    next to records in object storage resolve there too); URLs, data URIs and absolute paths kept."""
    if "://" in value or value.startswith("data:") or os.path.isabs(value) or not value:
        return value
    if len(value) > 1024 and "/" not in value[:64]:  # bare base64
        return value
    if "://" in base:
        return base.rstrip("/") + "/" + value
    return os.path.join(base, value)
