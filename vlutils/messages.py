"""Walk chat messages and find the vision items, remembering where each one sits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidMessageError

VISION_KEYS = ("image", "image_url", "video", "video_url")
VISION_TYPES = ("image", "image_url", "video", "video_url")
# transformers' chat-template keys, looked at (in this order) after image/video and *_url
SOURCE_KEYS = ("url", "path", "base64")


@dataclass(frozen=True)
class VisionItem:
    """A vision content item and its place: ``conversation``, ``message`` and ``item`` indices."""

    element: dict
    conversation: int
    message: int
    item: int
    batched: bool

    @property
    def is_video(self) -> bool:
        return "video" in self.element or "video_url" in self.element or (
            "image" not in self.element
            and "image_url" not in self.element
            and self.element.get("type") in ("video", "video_url")
        )

    @property
    def has_source(self) -> bool:
        """Whether the item names a source under any accepted key."""
        return any(key in self.element for key in VISION_KEYS + SOURCE_KEYS)

    @property
    def position(self) -> str:
        prefix = f"conversation {self.conversation}, " if self.batched else ""
        return f"{prefix}message {self.message}, item {self.item}"


def item_source(element: dict, kind: str) -> Any:
    """The source a content item names for ``kind`` ("image" or "video"): ``element[kind]``, else
    ``element[kind + "_url"]`` as a string or in the OpenAI form ``{"url": ...}``, else
    transformers' keys ``url`` / ``path`` / ``base64`` (exactly equivalent to ``element[kind]``;
    a ``base64`` value is always read as base64, never as a path)."""
    if kind in element:
        return element[kind]
    url_key = f"{kind}_url"
    if url_key in element:
        value = element[url_key]
        if isinstance(value, dict):
            if "url" not in value:
                raise InvalidMessageError(f"{url_key} object has no 'url' field", value)
            return value["url"]
        return value
    for key in SOURCE_KEYS:
        if key in element:
            return _as_base64(element[key]) if key == "base64" else element[key]
    raise InvalidMessageError(
        f"content item has no '{kind}', '{url_key}', 'url', 'path' or 'base64' field", element
    )


def _as_base64(value: Any) -> Any:
    """Mark base64 text so the source resolver decodes it (a data URI stays a data URI)."""
    from .sources import Base64Text

    if isinstance(value, str) and not value.lstrip()[:5].lower() == "data:":
        return Base64Text(value)
    return value


def _as_conversations(conversations: Any) -> tuple[list, bool]:
    if isinstance(conversations, dict):
        return [[conversations]], False
    if not isinstance(conversations, (list, tuple)):
        raise InvalidMessageError(
            f"conversations must be a list of messages or a list of conversations, got {type(conversations).__name__}"
        )
    if not conversations:
        return [], False
    if isinstance(conversations[0], dict):
        return [conversations], False
    return list(conversations), True


def iter_vision_items(conversations: Any) -> list[VisionItem]:
    """All vision items in order (one counter across a batch), validating the structure."""
    items: list[VisionItem] = []
    convs, batched = _as_conversations(conversations)
    for c, conversation in enumerate(convs):
        where = f"conversation {c}" if batched else "conversation"
        if not isinstance(conversation, (list, tuple)):
            raise InvalidMessageError(f"{where} must be a list of messages, got {type(conversation).__name__}")
        for m, message in enumerate(conversation):
            if not isinstance(message, dict):
                raise InvalidMessageError(f"{where}, message {m} must be a dict, got {type(message).__name__}")
            if "content" not in message:
                raise InvalidMessageError(f"{where}, message {m} has no 'content' field")
            content = message["content"]
            if not isinstance(content, list):
                continue  # plain text content, as in the reference
            for i, element in enumerate(content):
                if not isinstance(element, dict):
                    if isinstance(element, str):
                        continue  # a bare text part carries no vision input
                    raise InvalidMessageError(
                        f"{where}, message {m}, item {i} must be a dict, got {type(element).__name__}"
                    )
                if any(key in element for key in VISION_KEYS) or element.get("type", "text") in VISION_TYPES:
                    items.append(VisionItem(element, c, m, i, batched))
    return items


def extract_vision_info(conversations: Any) -> list[dict]:
    """The vision content items of one conversation or a batch, in order (qwen-vl-utils API)."""
    return [item.element for item in iter_vision_items(conversations)]
