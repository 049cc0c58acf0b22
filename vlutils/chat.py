"""ChatML prompts for Qwen2-VL-family models without a Jinja template, and placeholder expansion.

:func:`format_chat` renders messages exactly as the Qwen2-VL / Qwen2.5-VL chat template does
(a default system prompt when the first message is not a system one; Qwen3-VL has none):

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\\n
    <|im_start|>assistant\\n

:func:`expand_placeholders` then turns each ``<|image_pad|>`` / ``<|video_pad|>`` into as many
pads as the item has LLM tokens (``prod(grid_thw) // merge**2``), one counter across the batch,
as transformers' processors do. Qwen3-VL videos become one ``<{t:.1f} seconds>`` + block per
temporal patch instead.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from .chat_qwen35 import QWEN35_MODEL_TYPES, format_qwen35
from .errors import InvalidMessageError, InvalidOptionError

__all__ = [
    "TIMESTAMPED_VIDEO_MODEL_TYPES",
    "DEFAULT_SYSTEM_PROMPT",
    "IMAGE_PAD",
    "VIDEO_PAD",
    "VISION_START",
    "VISION_END",
    "format_chat",
    "item_kind",
    "expand_placeholders",
    "qwen3_timestamps",
]

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
_IMAGE_BLOCK = VISION_START + IMAGE_PAD + VISION_END
_VIDEO_BLOCK = VISION_START + VIDEO_PAD + VISION_END
_DEFAULT = object()
# Families whose videos are one timestamped vision block per temporal patch, and no default system prompt.
TIMESTAMPED_VIDEO_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


def format_chat(
    messages: Sequence[dict],
    *,
    model_type: str = "qwen2_vl",
    add_generation_prompt: bool = True,
    system_prompt: str | None | object = _DEFAULT,
    add_vision_id: bool = False,
    enable_thinking: bool = True,
) -> str:
    """One conversation as ChatML text with one vision block per image / video item.

    ``system_prompt`` is added when the first message is not a system message; it defaults
    to "You are a helpful assistant." for Qwen2-VL / Qwen2.5-VL and to none for Qwen3-VL and
    Qwen3.5. Content may be a string or a list of items (``{"type": "text", "text": ...}``,
    ``{"image": ...}``, ``{"image_url": ...}``, ``{"video": ...}``, ...). Qwen3.5 / Qwen3.5-MoE
    follow their own template (:mod:`vlutils.chat_qwen35`; ``enable_thinking`` only applies there).
    """
    if model_type in QWEN35_MODEL_TYPES:
        if isinstance(system_prompt, str) and messages and isinstance(messages, (list, tuple)) and (
            not isinstance(messages[0], dict) or messages[0].get("role") != "system"
        ):
            messages = [{"role": "system", "content": system_prompt}, *messages]
        return format_qwen35(
            messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id,
            enable_thinking=enable_thinking,
        )
    if system_prompt is _DEFAULT:
        system_prompt = None if model_type in TIMESTAMPED_VIDEO_MODEL_TYPES else DEFAULT_SYSTEM_PROMPT
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


def _render_item(item: Any, counts: dict, add_vision_id: bool, where: str) -> str:
    if not isinstance(item, dict):
        raise InvalidMessageError(f"a content item must be a dict, got {type(item).__name__}", position=where)
    kind = item_kind(item)
    if kind == "image":
        counts["image"] += 1
        return (f"Picture {counts['image']}: " if add_vision_id else "") + _IMAGE_BLOCK
    if kind == "video":
        counts["video"] += 1
        return (f"Video {counts['video']}: " if add_vision_id else "") + _VIDEO_BLOCK
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


def qwen3_timestamps(frame_indices: Sequence[int], fps: float, merge_size: int = 2) -> list[float]:
    """Seconds of each temporal patch, as transformers 4.57's Qwen3-VL processor computes them:
    indices padded with the last to a multiple of ``merge_size``, divided by the source
    fps, then the first and last frame of each patch averaged."""
    indices = [int(i) for i in frame_indices]
    if not indices:
        raise InvalidOptionError("a video needs at least one frame index")
    if not fps or fps <= 0:
        raise InvalidOptionError(f"video fps must be positive, got {fps!r}")
    indices += [indices[-1]] * ((-len(indices)) % merge_size)
    seconds = [i / fps for i in indices]
    return [(seconds[i] + seconds[i + merge_size - 1]) / 2 for i in range(0, len(seconds), merge_size)]


def expand_placeholders(
    texts: Sequence[str],
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    *,
    merge_size: int = 2,
    model_type: str = "qwen2_vl",
    video_timestamps: Sequence[Sequence[float]] | None = None,
) -> list[str]:
    """Replace each image / video pad by its full run of pads, in order across ``texts``.

    For Qwen3-VL each ``<|vision_start|><|video_pad|><|vision_end|>`` becomes, per temporal
    patch ``k``, ``<{video_timestamps[v][k]:.1f} seconds><|vision_start|>pads<|vision_end|>``.
    """
    image_tokens = _token_counts(image_grid_thw, merge_size)
    video_grids = [] if video_grid_thw is None else torch.as_tensor(video_grid_thw).tolist()
    video_tokens = _token_counts(video_grid_thw, merge_size)
    counters = {"image": 0, "video": 0}
    out = []
    for text in texts:
        pieces = []
        for kind, piece in _split_pads(text):
            if kind is None:
                pieces.append(piece)
                continue
            index = counters[kind]
            counters[kind] += 1
            available = image_tokens if kind == "image" else video_tokens
            if index >= len(available):
                raise InvalidOptionError(
                    f"the text has more {kind} placeholders than {kind}s ({len(available)} given)"
                )
            if kind == "video" and model_type in TIMESTAMPED_VIDEO_MODEL_TYPES:
                pieces.append(_qwen3_video(video_grids[index], merge_size, video_timestamps, index))
            else:  # the piece holds exactly one pad (maybe inside its vision block)
                pad = IMAGE_PAD if kind == "image" else VIDEO_PAD
                pieces.append(piece.replace(pad, pad * available[index]))
        out.append("".join(pieces))
    for kind, available in (("image", image_tokens), ("video", video_tokens)):
        if counters[kind] != len(available):
            raise InvalidOptionError(
                f"the text has {counters[kind]} {kind} placeholder(s) but {len(available)} {kind}(s) were given"
            )
    return out


def _qwen3_video(grid: list[int], merge_size: int, timestamps, index: int) -> str:
    """A Qwen3-VL video: a timestamped vision block per temporal patch (replacing the whole
    ``<|vision_start|><|video_pad|><|vision_end|>`` when present, else the bare pad)."""
    t, h, w = grid
    if timestamps is None or index >= len(timestamps) or len(timestamps[index]) < t:
        raise InvalidOptionError(f"video {index}: Qwen3-VL needs a timestamp per temporal patch ({t})")
    frame = VISION_START + VIDEO_PAD * (h * w // merge_size**2) + VISION_END
    return "".join(f"<{timestamps[index][k]:.1f} seconds>{frame}" for k in range(t))


def _split_pads(text: str):
    """Yield (kind, piece): text pieces with kind None, and each placeholder with its kind.
    A video placeholder is the full vision block when one surrounds the pad."""
    i = 0
    while True:
        found = [(text.find(tok, i), kind, tok) for kind, tok in (("image", IMAGE_PAD), ("video", VIDEO_PAD))]
        found = [f for f in found if f[0] >= 0]
        if not found:
            yield None, text[i:]
            return
        at, kind, token = min(found)
        start, end = at, at + len(token)
        opened = at >= len(VISION_START) and text.startswith(VISION_START, at - len(VISION_START))
        if kind == "video" and opened and text.startswith(VISION_END, end):
            start, end = at - len(VISION_START), end + len(VISION_END)
        yield None, text[i:start]
        yield kind, text[start:end]
        i = end


def _token_counts(grid: Any, merge_size: int) -> list[int]:
    if grid is None:
        return []
    g = torch.as_tensor(grid)
    if g.numel() == 0:
        return []
    if g.dim() != 2 or g.shape[1] != 3:
        raise InvalidOptionError(f"a grid_thw must have shape (N, 3), got {tuple(g.shape)}")
    return (g.prod(1) // merge_size**2).tolist()
