"""Messages -> every tensor a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model consumes, in one call.

    inputs = build_inputs(messages, tokenizer, model_type="qwen2_5_vl")
    logits = model(**inputs)

Steps: fetch media (``vlutils.process_vision_info``, unless ``images`` / ``videos`` are given),
format ChatML (:mod:`vlutils.chat`), patchify (:mod:`vlutils.processor`), expand the vision
placeholders, tokenize and pad (left by default), then M-RoPE positions (:mod:`vlutils.rope`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from .chat import FAMILY_DEFAULT, expand_placeholders, format_chat, qwen3_timestamps
from .errors import InvalidMessageError, InvalidOptionError
from .families import Family, get_family, model_types
from .padding import pad_rows
from .processor import get_preset, patchify
from .rope import get_rope_index

__all__ = [
    "build_inputs", "second_per_grid_ts_from_fps", "mm_token_type_ids", "sampled_fps", "fetch_media",
    "split_video_metadata", "video_timestamps", "nth",
]

logger = logging.getLogger(__name__)

MODEL_TYPES = model_types("inputs")  # derived from vlutils.families
QWEN3_DEFAULT_FPS = 24.0  # what transformers assumes when a Qwen3-VL video has no fps


def build_inputs(
    messages_or_batch: Sequence[dict] | Sequence[Sequence[dict]],
    tokenizer: Any,
    model_type: str = "qwen2_vl",
    *,
    images: Sequence[Any] | None = None,
    videos: Sequence[Any] | None = None,
    video_kwargs: dict | None = None,
    add_generation_prompt: bool = True,
    system_prompt: str | None | object = FAMILY_DEFAULT,
    add_vision_id: bool = False,
    padding_side: str = "left",
    pad_token_id: int | None = None,
    tokens_per_second: int | float = 2,
    enable_thinking: bool = True,
    **preset_overrides: Any,
) -> dict[str, torch.Tensor | None]:
    """Model inputs for one conversation or a batch of them.

    ``tokenizer``: anything with ``encode(text)`` returning ids or an object with ``.ids``
    (a ``tokenizers.Tokenizer`` or a transformers tokenizer); it must know the Qwen special
    tokens. ``images`` / ``videos`` are pre-fetched media in prompt order (as
    ``process_vision_info`` returns them; a video may be a ``(frames, metadata)`` pair);
    when both are None the media is fetched here. ``video_kwargs`` is process_vision_info's
    third value (its ``fps`` list gives Qwen2.5-VL's ``second_per_grid_ts``; without it the
    videos' metadata does, as in transformers 5.x, else 2.0).

    Returns ``input_ids``, ``attention_mask``, ``pixel_values``, ``image_grid_thw``,
    ``pixel_values_videos``, ``video_grid_thw``, ``second_per_grid_ts``, ``position_ids``,
    ``rope_deltas`` and ``mm_token_type_ids`` (None where not applicable).

    ``model_type="qwen_vl"`` (Qwen-VL / Qwen-VL-Chat) takes the ``qwen.tiktoken`` tokenizer of
    :func:`vlutils.load_tokenizer` and the options ``image_size`` (the checkpoint's
    ``visual.image_size``, 448) and ``max_window_size`` (6144); see :mod:`vlutils.inputs_qwen_vl`.
    """
    family = get_family(model_type, "inputs")
    if padding_side not in ("left", "right"):
        raise InvalidOptionError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if family.pipeline == "fixed_span":
        return _build_fixed_span(messages_or_batch, tokenizer, images, videos, add_generation_prompt, system_prompt,
                              add_vision_id, padding_side, pad_token_id, preset_overrides)
    preset = get_preset(model_type, **preset_overrides)
    conversations = _as_batch(messages_or_batch)

    if images is None and videos is None:
        images, videos, video_kwargs = fetch_media(conversations, model_type, preset.patch_size)
    frames, metadata = split_video_metadata(videos)

    texts = [
        format_chat(
            conv, model_type=model_type, add_generation_prompt=add_generation_prompt,
            system_prompt=system_prompt, add_vision_id=add_vision_id, enable_thinking=enable_thinking,
        )
        for conv in conversations
    ]
    vision = patchify(images=images, videos=frames, model_type=preset)
    video_grid = vision["video_grid_thw"]

    given_fps = (video_kwargs or {}).get("fps")
    timestamps = None
    if family.video_timestamps == "text" and video_grid is not None:
        timestamps = [
            video_timestamps(meta, len(video), preset.merge_size, i, nth(given_fps, i))
            for i, (meta, video) in enumerate(zip(metadata, frames))
        ]
    texts = expand_placeholders(
        texts, vision["image_grid_thw"], video_grid,
        merge_size=preset.merge_size, model_type=model_type, video_timestamps=timestamps,
    )

    ids = {name: _token_id(tokenizer, token) for name, token in _SPECIAL_TOKENS.items()}
    input_ids, attention_mask = _tokenize_and_pad(texts, tokenizer, padding_side, _pad_id(tokenizer, pad_token_id))

    seconds = None
    if family.video_timestamps == "second_per_grid_ts" and video_grid is not None:
        fps = given_fps if given_fps is not None else [sampled_fps(meta) for meta in metadata]
        seconds = torch.tensor(second_per_grid_ts_from_fps(fps, video_grid.shape[0], preset.temporal_patch_size))

    has_vision = vision["image_grid_thw"] is not None or video_grid is not None
    if has_vision:
        for name in ("image", "video", "vision_start"):
            if ids[name] is None:
                raise InvalidOptionError(f"the tokenizer has no {_SPECIAL_TOKENS[name]} token")
    position_ids, rope_deltas = get_rope_index(
        input_ids, vision["image_grid_thw"], video_grid, attention_mask, seconds,
        model_type=model_type, spatial_merge_size=preset.merge_size, tokens_per_second=tokens_per_second,
        image_token_id=ids["image"] if ids["image"] is not None else -1,
        video_token_id=ids["video"] if ids["video"] is not None else -1,
        vision_start_token_id=ids["vision_start"] if ids["vision_start"] is not None else -1,
    )
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        **vision,
        "second_per_grid_ts": seconds,
        "position_ids": position_ids,
        "rope_deltas": rope_deltas,
        "mm_token_type_ids": mm_token_type_ids(input_ids, ids["image"], ids["video"]),
    }


def second_per_grid_ts_from_fps(fps: float | Sequence[float], n_videos: int, temporal_patch_size: int = 2) -> list[float]:
    """Seconds per temporal patch of each video, ``temporal_patch_size / fps``, as the
    transformers 4.x Qwen2.5-VL processor derives it from qwen-vl-utils' ``video_kwargs["fps"]``."""
    values = [fps] * n_videos if isinstance(fps, (int, float)) else list(fps)
    if len(values) != n_videos:
        raise InvalidOptionError(f"video_kwargs['fps'] has {len(values)} value(s) for {n_videos} video(s)")
    for value in values:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise InvalidOptionError(f"video fps must be positive numbers, got {values!r}")
    return [temporal_patch_size / value for value in values]


def mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int | None, video_token_id: int | None) -> torch.Tensor:
    """transformers 5.x's modality map (its processors' return_mm_token_type_ids): 1 for image pads,
    2 for video pads, 0 otherwise, int64."""
    types = torch.zeros_like(input_ids, dtype=torch.long)
    if image_token_id is not None:
        types[input_ids == image_token_id] = 1
    if video_token_id is not None:
        types[input_ids == video_token_id] = 2
    return types


# --- helpers -------------------------------------------------------------------------


def _build_fixed_span(messages_or_batch, tokenizer, images, videos, add_generation_prompt, system_prompt,
                      add_vision_id, padding_side, pad_token_id, options: dict) -> dict:
    """build_inputs for Qwen-VL (the "fixed_span" pipeline): its own prompt, tokenizer, image
    transform and 1-D positions (:mod:`vlutils.inputs_qwen_vl`)."""
    from .chat_qwen_vl import DEFAULT_SYSTEM_PROMPT
    from .inputs_qwen_vl import build_qwen_vl_inputs

    unknown = sorted(set(options) - {"image_size", "max_window_size"})
    if unknown:
        raise InvalidOptionError(f"model_type='qwen_vl' takes image_size and max_window_size, not {unknown}")
    if videos is not None:
        raise InvalidOptionError("model_type='qwen_vl' has no video input")
    if add_vision_id:
        raise InvalidOptionError("Qwen-VL always numbers its pictures ('Picture N: '); add_vision_id does not apply")
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is FAMILY_DEFAULT else system_prompt
    return build_qwen_vl_inputs(
        _as_batch(messages_or_batch), tokenizer, images=images, add_generation_prompt=add_generation_prompt,
        system_prompt=system, padding_side=padding_side, pad_token_id=pad_token_id, **options,
    )

_SPECIAL_TOKENS = {
    "image": "<|image_pad|>",
    "video": "<|video_pad|>",
    "vision_start": "<|vision_start|>",
}


def _as_batch(messages_or_batch: Any) -> list:
    """A list of conversations: a single conversation (list of message dicts) becomes a batch of one."""
    if isinstance(messages_or_batch, (list, tuple)) and messages_or_batch:
        if all(isinstance(m, dict) for m in messages_or_batch):
            return [list(messages_or_batch)]
        if all(isinstance(c, (list, tuple)) for c in messages_or_batch):
            return [list(c) for c in messages_or_batch]
    raise InvalidMessageError(
        "expected a conversation (a non-empty list of message dicts) or a list of conversations",
        messages_or_batch if isinstance(messages_or_batch, (str, bytes)) else None,
    )


def fetch_media(conversations: list, model_type: str | Family, patch_size: int) -> tuple:
    """``(images, videos, video_kwargs)`` of ``conversations`` through vlutils' own
    process_vision_info (imported here to keep this module light), with the videos' metadata
    when the family writes text timestamps (it needs the sampled frame indices)."""
    from .vision_process import process_vision_info

    family = model_type if isinstance(model_type, Family) else get_family(model_type, "inputs")
    images, videos, video_kwargs = process_vision_info(
        conversations, return_video_kwargs=True, return_video_metadata=family.video_timestamps == "text",
        image_patch_size=patch_size,
    )
    return images, videos, video_kwargs


def split_video_metadata(videos: Sequence[Any] | None) -> tuple[list | None, list]:
    """Videos may come as ``(frames, metadata)`` pairs (return_video_metadata=True)."""
    if videos is None:
        return None, []
    frames, metadata = [], []
    for video in videos:
        if isinstance(video, tuple) and len(video) == 2 and (video[1] is None or isinstance(video[1], dict)):
            frames.append(video[0])
            metadata.append(video[1])
        else:
            frames.append(video)
            metadata.append(None)
    return frames, metadata


def sampled_fps(meta: dict | None, default: float = 2.0) -> float:
    """Frames per second of a sampled video from its metadata, as transformers 5.x's
    ``VideoMetadata.sampled_fps`` computes it (``len(frames_indices) / total_num_frames * fps``);
    ``default`` (qwen-vl-utils' 2.0) without metadata."""
    if not meta or meta.get("fps") is None:
        return default
    if meta.get("frames_indices") is None or not meta.get("total_num_frames"):
        return float(meta["fps"])
    return len(meta["frames_indices"]) / meta["total_num_frames"] * meta["fps"]


def nth(values: Any, index: int) -> Any:
    """``values[index]`` of a per-video list, a single number as is, None when absent."""
    if values is None or isinstance(values, (int, float)):
        return values
    return values[index] if index < len(values) else None


def video_timestamps(
    meta: dict | None, n_frames: int, merge_size: int, index: int, sample_fps: float | None = None
) -> list[float]:
    """Qwen3-VL timestamps from the sampled frame indices and the source fps. Without metadata,
    frames ``0..n-1`` at the sample fps of ``video_kwargs`` (else transformers' 24)."""
    indices = None if meta is None else meta.get("frames_indices")
    fps = None if meta is None else meta.get("fps")
    if meta is None and sample_fps is not None:
        fps = sample_fps
    if indices is None:
        indices = list(range(n_frames))
    if fps is None:
        logger.warning("video %d has no fps metadata; Qwen3-VL timestamps assume %s fps", index, QWEN3_DEFAULT_FPS)
        fps = QWEN3_DEFAULT_FPS
    indices = indices.tolist() if hasattr(indices, "tolist") else list(indices)
    return qwen3_timestamps(indices, float(fps), merge_size)


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of a special token, for a tokenizers.Tokenizer or a transformers tokenizer."""
    lookup = getattr(tokenizer, "token_to_id", None)
    if lookup is not None:
        return lookup(token)
    lookup = getattr(tokenizer, "convert_tokens_to_ids", None)
    if lookup is not None:
        found = lookup(token)
        unknown = getattr(tokenizer, "unk_token_id", None)
        return None if found is None or (found == unknown and token != getattr(tokenizer, "unk_token", None)) else found
    return None


def _pad_id(tokenizer: Any, pad_token_id: int | None) -> int:
    if pad_token_id is not None:
        return int(pad_token_id)
    found = getattr(tokenizer, "pad_token_id", None)
    if isinstance(found, int):
        return found
    found = _token_id(tokenizer, "<|endoftext|>")
    return found if found is not None else 0


def _encode(tokenizer: Any, text: str) -> list[int]:
    if hasattr(tokenizer, "encode"):
        out = tokenizer.encode(text)
    elif callable(tokenizer):
        out = tokenizer(text)["input_ids"]
    else:
        raise InvalidOptionError(f"tokenizer must have encode() or be callable, got {type(tokenizer).__name__}")
    ids = getattr(out, "ids", out)
    return [int(i) for i in ids]


def _tokenize_and_pad(texts: list[str], tokenizer: Any, side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_rows([_encode(tokenizer, text) for text in texts], pad_id, side)


# The names these helpers had when they were private; kept so that code written against them
# (other branches, user code) keeps working. New code uses the public names.
_fetch_media, _split_video_metadata, _video_timestamps, _nth = fetch_media, split_video_metadata, video_timestamps, nth
