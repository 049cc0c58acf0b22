"""Qwen-VL / Qwen-VL-Chat (``model_type="qwen_vl"``): messages -> model inputs and training samples.

This generation differs from Qwen2-VL and later in every input step, so it has its own path:

* the prompt is the original ``make_context`` (generation) or ``finetune.py`` layout (training),
  see :mod:`vlutils.chat_qwen_vl`, tokenized by the ``qwen.tiktoken`` tokenizer
  (:func:`vlutils.load_tokenizer`);
* every image is one fixed span: ``<img>``, 256 positions, ``</img>``; the model finds it by the
  ``<img>`` id (its ``visual.image_start_id``) and overwrites the 256 positions with the image's
  Resampler outputs, so the ids there (the reference string's bytes, then ``<imgpad>``) only
  say where the image came from;
* ``pixel_values`` is ``(images, 3, S, S)``, each image resized to S x S (the checkpoint's
  ``visual.image_size``, 448) and CLIP-normalised (:mod:`vlutils.image_qwen_vl`);
* position ids are plain 1-D positions (no M-RoPE).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from .chat_qwen_vl import (
    DEFAULT_SYSTEM_PROMPT, MAX_WINDOW_SIZE, Turns, conversation_turns, make_context, training_pieces,
)
from .errors import InvalidMessageError, InvalidOptionError, SampleTooLongError, VisionInputError
from .image_qwen_vl import DEFAULT_IMAGE_SIZE, check_image_size, load_qwen_vl_image, qwen_vl_transform
from .padding import pad_rows
from .tiktoken_qwen import IMG_TOKEN_SPAN, QwenTiktokenTokenizer

__all__ = [
    "MODEL_TYPE", "build_qwen_vl_inputs", "build_qwen_vl_sample", "count_qwen_vl_tokens", "qwen_vl_prompt",
    "image_positions",
]

logger = logging.getLogger(__name__)

MODEL_TYPE = "qwen_vl"
PATCH_SIZE = 14  # the ViT's patch: (S / 14)^2 patches per image before the Resampler


def qwen_vl_prompt(
    messages: Sequence[dict],
    tokenizer: QwenTiktokenTokenizer,
    *,
    add_generation_prompt: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_window_size: int = MAX_WINDOW_SIZE,
) -> tuple[list[int], list[dict]]:
    """The ids of one conversation and the image items they hold, in order.

    With ``add_generation_prompt`` (the conversation ends with a user message): the original
    ``make_context`` prompt, older turns dropped past ``max_window_size`` tokens (their images
    with them). Without: the ``finetune.py`` layout of the whole conversation.
    """
    ids, turns, kept = _prompt(messages, tokenizer, add_generation_prompt, system_prompt, max_window_size)
    return ids, turns.images[len(turns.images) - kept:]


def _prompt(messages, tokenizer, add_generation_prompt, system_prompt, max_window_size) -> tuple[list[int], Turns, int]:
    """``(ids, turns, kept)``: the ids, the conversation's turns and how many of its images
    (the last ``kept``: the window drops whole old turns) have their span in the ids."""
    _check_tokenizer(tokenizer)
    turns = conversation_turns(messages, system_prompt)
    if add_generation_prompt:
        history, query = turns.history_and_query()
        _, ids = make_context(tokenizer, query, history, turns.system, max_window_size)
    else:
        ids, _ = training_pieces(tokenizer, turns)
    kept = sum(1 for i in ids if i == tokenizer.img_start_id)
    if kept > len(turns.images):
        raise InvalidMessageError(f"the prompt has {kept} <img> spans but the messages hold "
                                  f"{len(turns.images)} images (an <img> tag written without </img>?)")
    return ids, turns, kept


def build_qwen_vl_inputs(
    conversations: list[list[dict]],
    tokenizer: QwenTiktokenTokenizer,
    *,
    images: Sequence[Any] | None = None,
    add_generation_prompt: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    padding_side: str = "left",
    pad_token_id: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    max_window_size: int = MAX_WINDOW_SIZE,
) -> dict[str, torch.Tensor | None]:
    """``build_inputs(..., model_type="qwen_vl")`` (see :func:`vlutils.build_inputs`).

    ``images``: pre-loaded images (PIL) for every image of every conversation, in message order;
    without them each image item is fetched through vlutils' sources. Returns ``input_ids``,
    ``attention_mask`` (B, L), ``pixel_values`` (N, 3, S, S) float32 or None, ``position_ids``
    (B, L): ``cumsum(attention_mask) - 1`` with padding at 1, as the original's
    ``prepare_inputs_for_generation`` makes them, and ``mm_token_type_ids`` (1 on the 256 image
    positions). The keys of the other families (grids, videos, rope deltas) are None.
    """
    size = check_image_size(image_size)
    _check_tokenizer(tokenizer)
    pad_id = tokenizer.pad_token_id if pad_token_id is None else int(pad_token_id)
    batched = len(conversations) > 1
    rows, sources, counts = [], [], []  # sources: (conversation, image index, item) of each kept image
    for c, conversation in enumerate(conversations):
        try:
            ids, turns, kept = _prompt(conversation, tokenizer, add_generation_prompt, system_prompt, max_window_size)
        except VisionInputError as exc:
            if batched:
                raise type(exc)(exc.reason, exc.source, f"conversation {c}" + (f", {exc.position}" if exc.position
                                                                                 else "")) from None
            raise
        rows.append(ids)
        first = len(turns.images) - kept
        sources += [(c, first + k, turns.images[first + k]) for k in range(kept)]
        counts.append(len(turns.images))
    if images is not None:
        given, offsets = list(images), [sum(counts[:c]) for c in range(len(counts))]
        if len(given) != sum(counts):
            raise InvalidOptionError(f"{len(given)} image(s) given but the messages hold {sum(counts)}")
        sources = [(c, k, {"image": given[offsets[c] + k]}) for c, k, _ in sources]
    labelled = [((f"conversation {c}, " if batched else "") + f"image {k}", item) for c, k, item in sources]
    input_ids, attention_mask = pad_rows(rows, pad_id, padding_side)
    position_ids = attention_mask.cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": _pixel_values(labelled, size),
        "image_grid_thw": None,
        "pixel_values_videos": None,
        "video_grid_thw": None,
        "second_per_grid_ts": None,
        "position_ids": position_ids,
        "rope_deltas": None,
        "mm_token_type_ids": image_positions(input_ids, tokenizer).long(),
    }


def image_positions(input_ids: torch.Tensor, tokenizer: QwenTiktokenTokenizer) -> torch.Tensor:
    """A bool mask of the 256 positions after each ``<img>`` id (those the image embeddings fill),
    found as the original model finds them."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    rows, cols = torch.nonzero(input_ids == tokenizer.img_start_id, as_tuple=True)
    for r, c in zip(rows.tolist(), cols.tolist()):
        mask[r, c + 1: c + 1 + IMG_TOKEN_SPAN] = True
    return mask


def build_qwen_vl_sample(
    messages: Sequence[dict],
    tokenizer: QwenTiktokenTokenizer,
    *,
    max_length: int | None = None,
    truncation: str = "error",
    images: Sequence[Any] | None = None,
    name: str = "conversation",
    label_style: str = "original",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> dict | None:
    """``build_sample(..., model_type="qwen_vl")``: the ``finetune.py`` ids and labels of a whole
    conversation, 1-D ``position_ids`` (0..L-1) and ``pixel_values``.

    ``label_style="original"`` reproduces finetune.py's targets (they also train each turn's
    ``<|im_start|>``, ``<|im_end|>`` and closing newline); ``"assistant"`` labels only the
    assistant texts and their ``<|im_end|>``, vlutils' rule for the other families. Images are
    a fixed 256 tokens, so ``truncation="shrink"`` cannot shorten a sample: it acts as "error".
    """
    size = check_image_size(image_size)
    _check_tokenizer(tokenizer)
    turns = conversation_turns(messages, system_prompt)
    if not any(role == "assistant" for role, _ in turns.turns):
        raise InvalidMessageError("the conversation has no assistant turn to train on", position=name)
    ids, labels = training_pieces(tokenizer, turns, label_style)
    if max_length is not None and len(ids) > max_length:
        if truncation == "drop":
            logger.debug("%s: %d tokens > max_length %d: dropped", name, len(ids), max_length)
            return None
        extra = "; Qwen-VL images are a fixed 256 tokens, nothing to shrink" if truncation == "shrink" else ""
        raise SampleTooLongError(f"{len(ids)} tokens > max_length {max_length}{extra}", position=name,
                                 length=len(ids), max_length=max_length)
    items = turns.images if images is None else [{"image": img} for img in images]
    if len(items) != len(turns.images):
        raise InvalidOptionError(f"{len(items)} image(s) given but the conversation holds {len(turns.images)}",
                                 position=name)
    pixels = _pixel_values([(f"image {k}", item) for k, item in enumerate(items)], size)
    n = len(ids)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.arange(n, dtype=torch.long),
        "pixel_values": pixels,
        "image_grid_thw": None,
        "pixel_values_videos": None,
        "video_grid_thw": None,
        "second_per_grid_ts": None,
        "num_tokens": n,
        "num_patches": len(items) * (size // PATCH_SIZE) ** 2,
    }


def count_qwen_vl_tokens(items: Sequence[Any], image_size: int = DEFAULT_IMAGE_SIZE) -> list[dict]:
    """``count_tokens`` entries for Qwen-VL: every image is ``(1, S/14, S/14)`` ViT patches and
    256 LLM positions (the Resampler's queries), whatever its size."""
    size = check_image_size(image_size)
    grid = (1, size // PATCH_SIZE, size // PATCH_SIZE)
    return [{"kind": "image", "grid_thw": grid, "tokens": IMG_TOKEN_SPAN, "resized": (size, size)} for _ in items]


# --- helpers ----------------------------------------------------------------------------


def _check_tokenizer(tokenizer: Any) -> None:
    if not isinstance(tokenizer, QwenTiktokenTokenizer):
        raise InvalidOptionError(
            f"model_type='qwen_vl' needs the Qwen-VL tokenizer (vlutils.load_tokenizer on its qwen.tiktoken), "
            f"got {type(tokenizer).__name__}"
        )


def _pixel_values(items: Sequence[tuple[str, dict]], size: int) -> torch.Tensor | None:
    """``(N, 3, S, S)`` for ``(where, item)`` pairs; a failing image's error says ``where``."""
    tensors = []
    for where, item in items:
        try:
            tensors.append(qwen_vl_transform(load_qwen_vl_image(item), size))
        except VisionInputError as exc:
            raise exc.with_position(where) from None
    return torch.stack(tensors) if tensors else None
