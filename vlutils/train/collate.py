"""Samples from ``build_sample`` -> one model batch: packed into one row, or right-padded rows.

Packed (``packed=True``, the default)::

    batch = collate(samples)           # input_ids, labels (1, N); position_ids (3, 1, N); cu_seqlens
    loss = vlmodel_model(**batch).loss

Every segment keeps its own M-RoPE ids, ``cu_seqlens`` (int32) is ``[0, L1, L1+L2, ..., N]``,
the vision tensors are concatenated in sample order (each image / video keeps its grid row, so
the vision encoder still attends within each item). The first token of every sample is
``<|im_start|>`` and never labeled, so a next-token loss over the row never trains across a
seam, even in code that does not know about segments.

**transformers (5.x) on a GPU, flash attention, packed**: transformers finds the segments from
text position ids that restart at 0, passed as a 4th row in front of the M-RoPE rows, with no
attention mask. Build them from ``cu_seqlens``::

    batch = collate(samples)
    text_positions = vlutils.train.text_positions(batch["cu_seqlens"])       # (1, N)
    position_ids = torch.cat([text_positions[None], batch["position_ids"]])  # (4, 1, N)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="flash_attention_2")
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=position_ids,
                pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"], use_cache=False)

``use_cache=False`` matters: transformers only looks for packed segments when there is no
cache, and its models create one by default (config.use_cache), silently attending across
samples. ``to_transformers(batch)`` does all of this; with SDPA transformers builds the same
block-diagonal mask from those positions, which is how the tests check it on CPU.

Qwen-VL samples (``model_type="qwen_vl"``) have 1-D positions: packed they become (1, N), padded (B, L).

Padded (``packed=False``): ``input_ids`` (B, L) right-padded with ``pad_token_id``,
``attention_mask`` (1 on tokens), ``labels`` -100 on padding, ``position_ids`` (3, B, L) with
each row's own ids (padding gets 0). Valid input for transformers' Qwen2-VL / Qwen2.5-VL /
Qwen3-VL models (5.x) and for vlmodel, with the same loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import InvalidOptionError
from .labels import IGNORE_INDEX

__all__ = ["Batch", "collate", "text_positions", "to_transformers", "VISION_KEYS"]

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


class Batch(dict):
    """The batch dict; ``skipped`` lists the samples a skip-mode dataset left out of it
    (:class:`vlutils.train.Skipped` records) and ``dropped`` counts those ``truncation="drop"``
    removed. ``filler`` is True when every sample was left out and the batch is the one-token
    stand-in described in :func:`collate` (it trains nothing: no label)."""

    skipped: list
    dropped: int
    filler: bool

    def __init__(self, *args: Any, skipped: list | None = None, dropped: int = 0, filler: bool = False,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skipped = list(skipped or [])
        self.dropped = dropped
        self.filler = filler


def collate(
    samples: Sequence[dict],
    *,
    packed: bool = True,
    pad_to_multiple_of: int | None = None,
    pad_token_id: int = 0,
) -> Batch:
    """One batch from samples of ``build_sample`` (see the module doc for both layouts).

    Samples that are None (dropped by ``truncation="drop"``) or ``Skipped`` records (skip mode of
    :class:`~vlutils.train.ConversationDataset`) are left out and listed on the batch. When *every*
    sample was left out, the batch is a filler (``batch.filler`` is True): one row of one
    ``pad_token_id`` token, labeled -100, no vision. The training step still runs on it, so in
    data-parallel training this rank still joins the gradient all-reduce and the ranks stay in
    step; it adds nothing to the gradient or to the label-token count (with vlmodel the loss of a
    batch without labels is 0, and ``touch_vision=True`` keeps the vision tower in the graph).

    ``pad_to_multiple_of`` rounds the row length up: packed rows get one extra segment of
    padding (its own ``cu_seqlens`` entry, labels -100, positions from 0) so it attends only to
    itself; padded rows get more padding. Keys whose value would be None are left out.
    """
    samples = list(samples)
    skipped = [s for s in samples if s is not None and not isinstance(s, dict)]
    dropped = sum(1 for s in samples if s is None)
    samples = [s for s in samples if isinstance(s, dict)]
    for thing in skipped:
        if not hasattr(thing, "reason"):
            raise InvalidOptionError(f"collate takes build_sample dicts, got {type(thing).__name__}")
    if not samples and not (skipped or dropped):
        raise InvalidOptionError("collate needs at least one sample")
    if pad_to_multiple_of is not None and (isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int)
                                           or pad_to_multiple_of < 1):
        raise InvalidOptionError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
    for i, sample in enumerate(samples):
        _check_keys(i, sample)
    layout = _packed if packed else _padded
    if not samples:  # every sample was skipped or dropped: a filler keeps this rank in step
        filler = [{"input_ids": torch.full((1,), pad_token_id, dtype=torch.long),
                   "labels": torch.full((1,), IGNORE_INDEX, dtype=torch.long),
                   "position_ids": torch.zeros((3, 1), dtype=torch.long)}]
        return Batch(layout(filler, pad_to_multiple_of, pad_token_id), skipped=skipped, dropped=dropped, filler=True)
    batch = Batch(layout(samples, pad_to_multiple_of, pad_token_id), skipped=skipped, dropped=dropped)
    batch.update(_vision(samples))
    return batch


REQUIRED_KEYS = ("input_ids", "labels", "position_ids")
# vision keys that come in pairs: a sample holding one without the other was cut by someone
_PAIRS = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))


def _check_keys(i: int, sample: dict) -> None:
    """Name what is missing, and the usual culprit (a trainer dropping "unused" columns)."""
    missing = [key for key in REQUIRED_KEYS if key not in sample]
    missing += [a if b in sample else b for a, b in _PAIRS if (a in sample) != (b in sample)]
    if not missing:
        return
    hint = ""
    if "input_ids" in sample:
        hint = (" (was it stripped on the way? transformers' Trainer and TRL's SFTTrainer drop the columns "
                "the model's forward does not name unless remove_unused_columns=False; "
                "see docs/distributed-training.md)")
    raise InvalidOptionError(f"sample {i} is missing {', '.join(repr(k) for k in missing)}: collate takes "
                             f"build_sample dicts (this one has {sorted(sample)}){hint}")


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _packed(samples: Sequence[dict], multiple: int | None, pad_id: int) -> dict[str, torch.Tensor]:
    lengths = [int(s["input_ids"].shape[0]) for s in samples]
    total = sum(lengths)
    pad = _round_up(total, multiple) - total
    ids = [s["input_ids"] for s in samples]
    labels = [s["labels"] for s in samples]
    positions = [s["position_ids"] for s in samples]
    rows = _position_rows(positions)
    if pad:
        ids.append(torch.full((pad,), pad_id, dtype=torch.long))
        labels.append(torch.full((pad,), IGNORE_INDEX, dtype=torch.long))
        positions.append(torch.arange(pad) if rows is None else torch.arange(pad).expand(rows, -1))
        lengths.append(pad)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    joined = torch.cat(positions, dim=-1)
    return {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "position_ids": joined[None] if rows is None else joined[:, None],
        "cu_seqlens": cu,
    }


def _position_rows(positions: Sequence[torch.Tensor]) -> int | None:
    """None for 1-D text positions (Qwen-VL), else the M-RoPE row count (3); one kind per batch."""
    kinds = {None if p.dim() == 1 else int(p.shape[0]) for p in positions}
    if len(kinds) != 1:
        raise InvalidOptionError("samples mix 1-D and M-RoPE position ids (built for different model types?)")
    return kinds.pop()


def _padded(samples: Sequence[dict], multiple: int | None, pad_id: int) -> dict[str, torch.Tensor]:
    lengths = [int(s["input_ids"].shape[0]) for s in samples]
    width = _round_up(max(lengths), multiple)
    rows = len(samples)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    position_rows = _position_rows([s["position_ids"] for s in samples])
    positions = torch.zeros((rows, width) if position_rows is None else (position_rows, rows, width), dtype=torch.long)
    for b, (sample, n) in enumerate(zip(samples, lengths)):
        ids[b, :n] = sample["input_ids"]
        mask[b, :n] = 1
        labels[b, :n] = sample["labels"]
        positions[..., b, :n] = sample["position_ids"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}


def _vision(samples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Vision tensors concatenated in sample order (the model consumes them in placeholder order)."""
    out = {}
    for key in VISION_KEYS:
        parts = [s.get(key) for s in samples if s.get(key) is not None]
        if not parts:
            continue
        if key == "second_per_grid_ts":
            videos = sum(1 for s in samples if s.get("video_grid_thw") is not None)
            if len(parts) != videos:
                raise InvalidOptionError("some samples with videos have second_per_grid_ts and some do not "
                                         "(samples built for different model types?)")
        out[key] = torch.cat([torch.as_tensor(p) for p in parts])
    return out


def text_positions(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(1, N) text position ids restarting at 0 in every segment of a packed row."""
    cu = torch.as_tensor(cu_seqlens, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths)
    return (torch.arange(int(cu[-1])) - starts)[None]


def to_transformers(batch: dict[str, Any]) -> dict[str, Any]:
    """A packed batch as transformers 5.x's packed path wants it: 4-row position ids (text
    positions first), no ``cu_seqlens``, no attention mask, ``use_cache=False`` (see the module doc)."""
    out = {k: v for k, v in batch.items() if k != "cu_seqlens"}
    if "cu_seqlens" in batch:
        text = text_positions(batch["cu_seqlens"]).to(batch["position_ids"].device)
        out["position_ids"] = torch.cat([text[None], batch["position_ids"]])
        out["use_cache"] = False  # with a cache transformers does not look for packed segments
    return out
