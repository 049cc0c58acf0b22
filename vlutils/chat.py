"""Chat prompts in each family's template, without Jinja, and placeholder expansion.

:func:`format_chat` renders messages with the formatter of ``model_type``'s family
(:mod:`vlutils.families`): ChatML as the Qwen2-VL / Qwen2.5-VL / Qwen3-VL templates write it
(:mod:`vlutils.chat_qwen2`; a default system prompt for Qwen2-VL and Qwen2.5-VL only), or the
Qwen3.5 template (:mod:`vlutils.chat_qwen35`):

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\\n
    <|im_start|>assistant\\n

:func:`expand_placeholders` then turns each ``<|image_pad|>`` / ``<|video_pad|>`` into as many
pads as the item has LLM tokens (``prod(grid_thw) // merge**2``), one counter across the batch,
as transformers' processors do. In families with text timestamps (Qwen3-VL, Qwen3.5) a video
becomes one ``<{t:.1f} seconds>`` + block per temporal patch instead.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from .chat_qwen2 import (
    DEFAULT_SYSTEM_PROMPT,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    item_kind,
)
from .errors import InvalidOptionError
from .families import FAMILIES, get_family

__all__ = [
    "TIMESTAMPED_VIDEO_MODEL_TYPES",
    "DEFAULT_SYSTEM_PROMPT",
    "FAMILY_DEFAULT",
    "IMAGE_PAD",
    "VIDEO_PAD",
    "VISION_START",
    "VISION_END",
    "format_chat",
    "item_kind",
    "expand_placeholders",
    "qwen3_timestamps",
    "format_chat_with_spans",
]

logger = logging.getLogger(__name__)


class _FamilyDefault:
    """The ``system_prompt`` default: the family's own (see ``ChatFormat.default_system_prompt``)."""

    def __repr__(self) -> str:
        return "FAMILY_DEFAULT"


FAMILY_DEFAULT: Any = _FamilyDefault()
_DEFAULT = FAMILY_DEFAULT  # the name this sentinel had before; kept for code that used it
# Families whose videos are one timestamped vision block per temporal patch (derived from vlutils.families).
TIMESTAMPED_VIDEO_MODEL_TYPES = tuple(name for name, f in FAMILIES.items() if f.video_timestamps == "text")


def format_chat(
    messages: Sequence[dict],
    *,
    model_type: str = "qwen2_vl",
    add_generation_prompt: bool = True,
    system_prompt: str | None | object = FAMILY_DEFAULT,
    add_vision_id: bool = False,
    enable_thinking: bool = True,
) -> str:
    """One conversation as ChatML text with one vision block per image / video item, in the
    chat template of ``model_type``'s family (:mod:`vlutils.families`).

    ``system_prompt`` is added when the first message is not a system message; it defaults
    to "You are a helpful assistant." for Qwen2-VL / Qwen2.5-VL and to none for Qwen3-VL and
    Qwen3.5. Content may be a string or a list of items (``{"type": "text", "text": ...}``,
    ``{"image": ...}``, ``{"image_url": ...}``, ``{"video": ...}``, ...). Qwen3.5 / Qwen3.5-MoE
    follow their own template (:mod:`vlutils.chat_qwen35`; ``enable_thinking`` only applies there).
    """
    chat = get_family(model_type, "inputs").chat
    return chat.format(
        messages, add_generation_prompt=add_generation_prompt, system_prompt=_system(system_prompt, chat),
        add_vision_id=add_vision_id, enable_thinking=enable_thinking,
    )


def format_chat_with_spans(
    messages: Sequence[dict],
    *,
    model_type: str = "qwen2_vl",
    system_prompt: str | None | object = FAMILY_DEFAULT,
    add_vision_id: bool = False,
    add_generation_prompt: bool = False,
    enable_thinking: bool = True,
) -> tuple[str, list[tuple[int, int, int]]]:
    """``format_chat(messages, add_generation_prompt=False, ...)`` and where each reply is.

    Returns ``(text, spans)``: one ``(message_index, start, end)`` per assistant message, the
    characters ``text[start:end]`` being its rendered output through ``<|im_end|>`` (the header
    ``<|im_start|>assistant\\n`` and the newline after ``<|im_end|>`` are outside). Used to
    build training labels (vlutils.train). ``add_generation_prompt`` and ``enable_thinking``
    are accepted and ignored: training text has no generation prompt.
    """
    chat = get_family(model_type, "inputs").chat
    return chat.format_with_spans(messages, system_prompt=_system(system_prompt, chat), add_vision_id=add_vision_id)


def _system(system_prompt: Any, chat) -> str | None:
    return chat.default_system_prompt if system_prompt is FAMILY_DEFAULT else system_prompt


def qwen3_timestamps(frame_indices: Sequence[int], fps: float, merge_size: int = 2) -> list[float]:
    """Seconds of each temporal patch, as transformers 4.57's Qwen3-VL processor computes them:
    indices padded with the last to a multiple of ``merge_size``, divided by the source
    fps, then the first and last frame of each patch averaged."""
    # whole frame numbers, or fractional ones (frame lists with real timestamps), as transformers divides them
    indices = [i.item() if hasattr(i, "item") else i for i in frame_indices]
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
    timestamped = get_family(model_type, "inputs").video_timestamps == "text"
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
            if kind == "video" and timestamped:
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
