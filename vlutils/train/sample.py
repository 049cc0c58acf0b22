"""One conversation -> one training sample: build_inputs' tensors plus assistant-only labels.

    sample = build_sample(messages, tokenizer, "qwen2_5_vl", max_length=4096, truncation="shrink")
    sample["input_ids"], sample["labels"], sample["position_ids"], sample["num_tokens"], ...

``input_ids``, ``position_ids`` and the vision tensors are exactly what
``build_inputs(messages, tokenizer, model_type, add_generation_prompt=False)`` returns for the
conversation (row 0); labels follow the rule in :mod:`vlutils.train.labels`.
"""

from __future__ import annotations

import logging
from itertools import accumulate
from typing import Any, Sequence

import torch

from ..chat import expand_placeholders, format_chat_with_spans, item_kind
from ..errors import InvalidMessageError, InvalidOptionError, SampleTooLongError, VisionInputError
from ..families import get_family, is_fixed_span, model_types
from ..inputs import build_inputs, fetch_media, nth, split_video_metadata, video_timestamps
from ..processor import get_preset
from .labels import encode_with_offsets, labels_from_spans
from .shrink import Media, take_metadata, apply, media_size, plan_shapes, shrink_candidates

__all__ = ["build_sample", "TRUNCATION_MODES"]

logger = logging.getLogger(__name__)

TRUNCATION_MODES = ("error", "drop", "shrink")
TRAIN_MODEL_TYPES = model_types("train")  # derived from vlutils.families
_CHAT_OPTIONS = ("system_prompt", "add_vision_id")
_REFUSED = ("add_generation_prompt", "padding_side")


def build_sample(
    messages: Sequence[dict],
    tokenizer: Any,
    model_type: str = "qwen2_vl",
    *,
    max_length: int | None = None,
    truncation: str = "error",
    images: Sequence[Any] | None = None,
    videos: Sequence[Any] | None = None,
    video_kwargs: dict | None = None,
    **options: Any,
) -> dict | None:
    """A training sample for one conversation that has assistant turns.

    Returns ``input_ids`` and ``labels`` (1-D int64, same length L), ``position_ids`` (3, L),
    ``pixel_values``, ``image_grid_thw``, ``pixel_values_videos``, ``video_grid_thw``,
    ``second_per_grid_ts`` (None where absent), ``num_tokens`` (L) and ``num_patches`` (the
    vision encoder's sequence length, sum of t*h*w over the grids).

    Labels are -100 except on each trained assistant reply and the ``<|im_end|>`` closing it;
    the newline after ``<|im_end|>`` is NOT labeled. The label equals the input id (the loss
    shifts). ``train_on="all"`` (default) trains every assistant turn, ``"last"`` only the last.

    Qwen3.5 / Qwen3.5-MoE: a labeled turn is everything the template renders after
    ``<|im_start|>assistant\\n``: for turns after the last user query that includes the thinking
    block ``<think>\\n{reasoning}\\n</think>\\n\\n`` (the model writes it; an empty one when the
    turn has no reasoning); earlier turns are rendered without their reasoning, so only their
    reply is labeled. To train the reasoning of every turn, make one sample per turn.

    ``max_length`` with ``truncation``: ``"error"`` raises :class:`SampleTooLongError` naming
    the conversation and both lengths, ``"drop"`` returns None, ``"shrink"`` lowers the pixels
    per image, then the frames per video (:mod:`vlutils.train.shrink`) until the sample fits,
    and raises :class:`SampleTooLongError` when even the smallest media does not fit. Nothing
    is ever cut from the text, so no vision block is split and no reply loses its label.

    Other options: ``sample_id`` (how errors name the conversation), ``system_prompt``,
    ``add_vision_id``, ``tokens_per_second``, ``pad_token_id`` and preset overrides, as in
    ``build_inputs``. ``images`` / ``videos`` / ``video_kwargs``: pre-fetched media as
    ``process_vision_info`` returns them; when both are None the media is fetched here.
    """
    name = _name(options.pop("sample_id", None), messages)
    if is_fixed_span(model_type):
        return _build_fixed_span(messages, tokenizer, max_length, truncation, images, videos, name, options)
    try:
        return _build(messages, tokenizer, model_type, max_length, truncation, images, videos, video_kwargs, name, options)
    except VisionInputError as exc:
        raise _named(exc, name) from None


def _build_fixed_span(messages, tokenizer, max_length, truncation, images, videos, name, options) -> dict | None:
    """Qwen-VL's finetune.py samples (:func:`vlutils.inputs_qwen_vl.build_qwen_vl_sample`)."""
    from ..inputs_qwen_vl import build_qwen_vl_sample

    if truncation not in TRUNCATION_MODES:
        raise InvalidOptionError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}", position=name)
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise InvalidOptionError(f"max_length must be a positive int or None, got {max_length!r}", position=name)
    if videos is not None:
        raise InvalidOptionError("model_type='qwen_vl' has no video input", position=name)
    unknown = sorted(set(options) - {"label_style", "system_prompt", "image_size"})
    if unknown:
        raise InvalidOptionError(f"model_type='qwen_vl' takes label_style, system_prompt and image_size, "
                                 f"not {unknown}", position=name)
    try:
        return build_qwen_vl_sample(messages, tokenizer, max_length=max_length, truncation=truncation,
                                    images=images, name=name, **options)
    except VisionInputError as exc:
        raise _named(exc, name) from None


def _named(exc: VisionInputError, name: str) -> VisionInputError:
    """The error with the conversation's name leading its position ("conversation 0" of the
    internal batch of one becomes the caller's name)."""
    position = exc.position or ""
    if name in position:
        return exc
    if position.startswith("conversation 0"):
        position = position[len("conversation 0"):].lstrip(", ")
    exc.position = f"{name}, {position}" if position else name
    exc.args = (exc._format(),)
    return exc


def _build(messages, tokenizer, model_type, max_length, truncation, images, videos, video_kwargs, name, options):
    train_on = options.pop("train_on", "all")
    _check_options(model_type, truncation, train_on, max_length, options, name)
    chat_options = {k: options[k] for k in _CHAT_OPTIONS if k in options}
    not_preset = ("tokens_per_second", "pad_token_id", *_CHAT_OPTIONS)
    preset = get_preset(model_type, **{k: v for k, v in options.items() if k not in not_preset})

    text, spans = _format_with_spans(messages, model_type, chat_options)
    if not spans:
        raise InvalidMessageError("the conversation has no assistant turn to train on", position=name)
    if train_on == "last":
        spans = spans[-1:]

    if images is None and videos is None:
        images, videos, video_kwargs = fetch_media([list(messages)], model_type, preset.patch_size)
    frames, metadata = split_video_metadata(videos)
    timed = get_family(model_type).video_timestamps == "second_per_grid_ts"
    fps = (video_kwargs or {}).get("fps") if timed and frames else None
    media = Media(list(images or []), list(frames or []), metadata, None if fps is None else _as_list(fps, len(frames)))

    shapes = ([media_size(i) for i in media.images], [media_size(v, video=True) for v in media.frames])
    given_fps = (video_kwargs or {}).get("fps")
    ids, offsets, char_spans = _tokenize(text, spans, shapes, media.metadata, tokenizer, model_type, preset, given_fps)
    if max_length is not None and len(ids) > max_length:
        if truncation == "drop":
            logger.debug("%s: %d tokens > max_length %d: dropped", name, len(ids), max_length)
            return None
        if truncation == "error":
            raise _too_long(name, len(ids), max_length, "")
        media, (ids, offsets, char_spans) = _shrink(text, spans, media, messages, tokenizer, model_type, preset,
                                                    max_length, name, len(ids), given_fps)

    inputs = build_inputs(
        [list(messages)], tokenizer, model_type, images=media.images or None, videos=media.videos(),
        video_kwargs=_video_kwargs(video_kwargs, media), add_generation_prompt=False, **options,
    )
    input_ids = inputs["input_ids"][0]
    if input_ids.tolist() != ids:
        raise InvalidOptionError("the tokenizer's offsets encoding differs from its plain encoding", position=name)
    labels = labels_from_spans(ids, offsets, char_spans)
    grids = [g for g in (inputs["image_grid_thw"], inputs["video_grid_thw"]) if g is not None]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": inputs["position_ids"][:, 0],
        "pixel_values": inputs["pixel_values"],
        "image_grid_thw": inputs["image_grid_thw"],
        "pixel_values_videos": inputs["pixel_values_videos"],
        "video_grid_thw": inputs["video_grid_thw"],
        "second_per_grid_ts": inputs["second_per_grid_ts"],
        "num_tokens": int(input_ids.shape[0]),
        "num_patches": int(sum(int(g.prod(1).sum()) for g in grids)),
    }


def _format_with_spans(messages, model_type: str, chat_options: dict) -> tuple[str, list]:
    """The training text and each reply's ``(message_index, start, end)`` characters, from the
    family's formatter (Qwen3.5's spans come from its reply pieces: its template is not
    prefix-consistent)."""
    return format_chat_with_spans(messages, model_type=model_type, **chat_options)


def _tokenize(text: str, spans: list, shapes: tuple, metadata: list, tokenizer: Any, model_type: str, preset,
              given_fps: Any = None) -> tuple:
    """Expanded text tokenized once, and the reply spans moved onto the expanded text.

    The text is cut at the reply boundaries and the pieces expanded together (one counter
    across pieces, as for a batch), so each boundary's new position is a sum of piece lengths.
    Timestamps as build_inputs computes them (``given_fps``: video_kwargs' fps, used without metadata).
    """
    cuts = sorted({0, len(text), *(a for _, a, _ in spans), *(b for _, _, b in spans)})
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:])]
    image_grid, video_grid = (_grids(s, preset) for s in shapes)
    timestamps = None
    if get_family(model_type).video_timestamps == "text" and video_grid is not None:
        timestamps = [video_timestamps(meta, n, preset.merge_size, i, nth(given_fps, i))
                      for i, ((n, _, _), meta) in enumerate(zip(shapes[1], metadata))]
    pieces = expand_placeholders(pieces, image_grid, video_grid, merge_size=preset.merge_size,
                                 model_type=model_type, video_timestamps=timestamps)
    moved = dict(zip(cuts, accumulate((len(p) for p in pieces), initial=0)))
    expanded = "".join(pieces)
    ids, offsets = encode_with_offsets(tokenizer, expanded)
    return ids, offsets, [(moved[a], moved[b]) for _, a, b in spans]


def _grids(shapes: list[tuple[int, int, int]], preset) -> torch.Tensor | None:
    """Vision grids from (frames, height, width) sizes alone, as patchify computes them."""
    if not shapes:
        return None
    for n, h, w in shapes:
        if h % preset.factor or w % preset.factor:
            raise InvalidOptionError(f"media size {h}x{w} is not a multiple of {preset.factor} "
                                     "(patch_size * merge_size); resize with process_vision_info first")
    return torch.tensor([[-(-n // preset.temporal_patch_size), h // preset.patch_size, w // preset.patch_size]
                         for n, h, w in shapes])


def _shrink(text, spans, media, messages, tokenizer, model_type, preset, max_length, name, length, given_fps):
    items = [item for m in messages if isinstance(m.get("content"), (list, tuple))
             for item in m["content"] if isinstance(item, dict)]
    image_items = [i for i in items if item_kind(i) == "image"]
    video_items = [i for i in items if item_kind(i) == "video"]
    smallest = length
    for plan in shrink_candidates(media, image_items, video_items, preset.factor):
        metadata = [take_metadata(meta, pick) for meta, pick in zip(media.metadata, plan.picks)]
        result = _tokenize(text, spans, plan_shapes(media, plan), metadata, tokenizer, model_type, preset, given_fps)
        smallest = len(result[0])
        if smallest <= max_length:
            logger.debug("%s: shrunk from %d to %d tokens", name, length, smallest)
            return apply(media, plan), result
    raise _too_long(name, length, max_length, f"; still {smallest} with the smallest images and fewest frames")


def _too_long(name: str, length: int, max_length: int, extra: str) -> SampleTooLongError:
    return SampleTooLongError(f"{length} tokens > max_length {max_length}{extra}", position=name,
                              length=length, max_length=max_length)


def _video_kwargs(video_kwargs: dict | None, media: Media) -> dict | None:
    if media.fps is None:
        return video_kwargs
    return {**(video_kwargs or {}), "fps": media.fps}


def _as_list(fps: Any, n: int) -> list[float]:
    return [float(fps)] * n if isinstance(fps, (int, float)) else [float(f) for f in fps]


def _name(sample_id: Any, messages: Any) -> str:
    if sample_id is not None:
        return f"conversation {sample_id}"
    count = len(messages) if isinstance(messages, (list, tuple)) else "?"
    return f"conversation ({count} messages)"


def _check_options(model_type, truncation, train_on, max_length, options, name) -> None:
    try:
        get_family(model_type, "train")
    except InvalidOptionError as exc:
        raise InvalidOptionError(exc.reason, position=name) from None
    if truncation not in TRUNCATION_MODES:
        raise InvalidOptionError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}", position=name)
    if train_on not in ("all", "last"):
        raise InvalidOptionError(f"train_on must be 'all' or 'last', got {train_on!r}", position=name)
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise InvalidOptionError(f"max_length must be a positive int or None, got {max_length!r}", position=name)
    refused = [k for k in _REFUSED if k in options]
    if refused:
        raise InvalidOptionError(f"build_sample does not take {refused} (training text has no generation prompt)",
                                 position=name)
