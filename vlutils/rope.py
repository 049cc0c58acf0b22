"""M-RoPE position ids for Qwen2-VL, Qwen2.5-VL and Qwen3-VL, without a per-token Python loop.

The semantics are the ones the checkpoints were trained with, i.e. transformers
4.45-4.51 ``get_rope_index`` for Qwen2-VL / Qwen2.5-VL and 4.57 for Qwen3-VL:

* text tokens (the ``<|vision_start|>`` token included) get the same id on all three
  axes, counting up by one;
* a vision block (the run of pad tokens right after ``<|vision_start|>``) whose LLM grid is
  ``(t, h', w')`` and that starts at position ``P`` gets ``(P + trunc(i*D), P + j, P + k)``
  for its token at temporal/row/column index ``(i, j, k)``;
* the text after a block starts at the block's largest id (over all three axes) + 1;
* ``D`` is 1, except for Qwen2.5-VL, where images use 0 and videos use
  ``second_per_grid_ts[v] * tokens_per_second`` computed in float32 (0.5 stays 0.5);
* Qwen3-VL encodes time with text timestamps, so each video is split into per-frame
  blocks with ``t = 1``;
* padding (``attention_mask == 0``) gets id 1; ``deltas = max id + 1 - padded length``.

How it is vectorized: every valid token's id is its index among the row's valid tokens
plus a per-row running "shift" (each block adds ``extent - length`` after its last token,
where ``extent = max id - start + 1``). The shift is one scatter + one cumsum; vision tokens
then get their 3-D offsets from one ``repeat_interleave`` over all blocks of the batch.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import InvalidOptionError

__all__ = ["MODEL_TYPES", "get_rope_index", "decode_position_ids"]

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def get_rope_index(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | Sequence[float] | None = None,
    *,
    model_type: str = "qwen2_vl",
    spatial_merge_size: int = 2,
    tokens_per_second: int | float = 2,
    image_token_id: int = 151655,
    video_token_id: int = 151656,
    vision_start_token_id: int = 151652,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D (temporal, height, width) position ids and the per-row rope deltas.

    Returns ``(position_ids, deltas)``: ``position_ids`` is ``(3, B, L)`` int64 on the
    device of ``input_ids``; ``deltas`` is ``(B, 1)`` int64, to be added to the cache
    position when decoding (see :func:`decode_position_ids`).

    ``image_grid_thw`` / ``video_grid_thw`` are the vision encoder grids ``(t, h, w)`` in
    patches (not merged), one row per image / video, in prompt order across the batch.
    With neither given, ids fall back to ``cumsum(attention_mask) - 1`` like transformers.
    """
    if model_type not in MODEL_TYPES:
        raise InvalidOptionError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if not isinstance(spatial_merge_size, int) or isinstance(spatial_merge_size, bool) or spatial_merge_size < 1:
        raise InvalidOptionError(f"spatial_merge_size must be a positive int, got {spatial_merge_size!r}")
    ids = _as_ids(input_ids)
    mask = _as_mask(attention_mask, ids)

    if image_grid_thw is None and video_grid_thw is None:
        return _text_only(ids, mask)

    device = ids.device
    image_grid = _as_grid(image_grid_thw, "image_grid_thw", device)
    video_grid = _as_grid(video_grid_thw, "video_grid_thw", device)
    video_seconds = _as_seconds(second_per_grid_ts, video_grid.shape[0], model_type, device)
    if model_type == "qwen3_vl":
        # One block per frame (timestamps carry the time): (t, h, w) -> t rows of (1, h, w).
        video_grid = torch.repeat_interleave(video_grid, video_grid[:, 0], dim=0)
        video_grid[:, 0] = 1

    batch, length = ids.shape
    valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()

    # The valid tokens of all rows, concatenated: the reference drops padding before looking
    # for blocks, so "the token before" means the previous valid token of the same row.
    cols = torch.arange(length, device=device).expand(batch, length)
    rows = torch.arange(batch, device=device).unsqueeze(1).expand(batch, length)
    flat_ids, flat_col, flat_row = ids[valid], cols[valid], rows[valid]

    after_start = torch.zeros_like(flat_ids, dtype=torch.bool)
    after_start[1:] = (flat_ids[:-1] == vision_start_token_id) & (flat_row[1:] == flat_row[:-1])
    image_starts = _block_starts(flat_ids, after_start, image_token_id, image_grid, "image", spatial_merge_size)
    video_starts = _block_starts(flat_ids, after_start, video_token_id, video_grid, "video", spatial_merge_size)

    # Per block: flat start, LLM grid, temporal step D (None = integer step 1 or 0).
    starts = torch.cat([image_starts, video_starts])
    grids = torch.cat([image_grid, video_grid])
    llm_t = grids[:, 0]
    llm_h = grids[:, 1] // spatial_merge_size
    llm_w = grids[:, 2] // spatial_merge_size
    sizes = llm_t * llm_h * llm_w
    n_images = image_grid.shape[0]

    # Temporal id of the last frame of each block (the largest, since D >= 0).
    if model_type == "qwen2_5_vl":
        step = torch.cat([torch.zeros(n_images, dtype=video_seconds.dtype, device=device), video_seconds])
        t_last = _scaled_frame_index(llm_t - 1, step, tokens_per_second)
    else:
        step = None
        t_last = llm_t - 1
    extent = torch.stack([t_last, llm_h - 1, llm_w - 1]).amax(0) + 1

    # Running shift: each block adds (extent - size) to every later token of its row.
    last_token = starts + sizes - 1
    shift = torch.zeros(batch, length + 1, dtype=torch.long, device=device)
    shift.index_put_((flat_row[last_token], flat_col[last_token] + 1), extent - sizes, accumulate=True)
    shift = shift[:, :length].cumsum(1)
    rank = (valid.long().cumsum(1) - 1) if mask is not None else cols
    text_pos = rank + shift

    position_ids = torch.where(valid, text_pos, torch.ones_like(text_pos)).unsqueeze(0).repeat(3, 1, 1)

    # Vision tokens: block start id + (temporal, row, column) offsets.
    if sizes.numel() > 0 and int(sizes.sum()) > 0:
        block = torch.repeat_interleave(torch.arange(sizes.numel(), device=device), sizes)
        first = torch.cumsum(sizes, 0) - sizes
        offset = torch.arange(block.numel(), device=device) - first[block]
        tok = starts[block] + offset
        tok_row, tok_col = flat_row[tok], flat_col[tok]
        plane = (llm_h * llm_w)[block]
        frame = offset // plane
        if step is None:
            t_off = frame
        else:
            t_off = _scaled_frame_index(frame, step[block], tokens_per_second)
        block_start_pos = text_pos[flat_row[starts], flat_col[starts]][block]
        within = offset % plane
        position_ids[0, tok_row, tok_col] = block_start_pos + t_off
        position_ids[1, tok_row, tok_col] = block_start_pos + within // llm_w[block]
        position_ids[2, tok_row, tok_col] = block_start_pos + within % llm_w[block]

    row_max = torch.where(valid, position_ids.amax(0), torch.full_like(text_pos, -1)).amax(1, keepdim=True)
    deltas = row_max + 1 - length
    return position_ids, deltas


def decode_position_ids(
    rope_deltas: torch.Tensor,
    past_length: int | torch.Tensor,
    num_tokens: int = 1,
) -> torch.Tensor:
    """Position ids ``(3, B, num_tokens)`` for tokens appended after ``past_length`` cached ones.

    After prefill, text positions simply continue: token ``past_length + i`` of row ``b``
    gets ``past_length + i + rope_deltas[b]`` on all three axes (transformers computes it
    from ``cache_position[0] + rope_deltas``). ``past_length`` counts padded positions.
    """
    deltas = torch.as_tensor(rope_deltas)
    if deltas.dim() == 1:
        deltas = deltas.unsqueeze(1)
    if deltas.dim() != 2 or deltas.shape[1] != 1:
        raise InvalidOptionError(f"rope_deltas must have shape (B, 1) or (B,), got {tuple(deltas.shape)}")
    if not isinstance(num_tokens, int) or num_tokens < 0:
        raise InvalidOptionError(f"num_tokens must be a non-negative int, got {num_tokens!r}")
    start = torch.as_tensor(past_length, device=deltas.device).long().reshape(-1)[0]
    steps = torch.arange(num_tokens, device=deltas.device) + start
    pos = steps.unsqueeze(0) + deltas.long()
    return pos.unsqueeze(0).expand(3, -1, -1).contiguous()


# --- helpers -------------------------------------------------------------------------


def _scaled_frame_index(frame: torch.Tensor, seconds: torch.Tensor, tokens_per_second: int | float) -> torch.Tensor:
    """trunc(frame * seconds * tokens_per_second), rounded at each step in ``seconds``' float
    dtype, exactly as transformers 4.51 evaluates ``arange * second_per_grid_t * tps``."""
    return ((frame.to(seconds.dtype) * seconds) * tokens_per_second).long()


def _text_only(ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The no-vision fallback: ids from the mask's running count (padding gets 1)."""
    batch, length = ids.shape
    if mask is None:
        pos = torch.arange(length, device=ids.device).expand(3, batch, length).contiguous()
        return pos, torch.zeros(batch, 1, dtype=torch.long, device=ids.device)
    pos = mask.long().cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    deltas = pos.amax(-1, keepdim=True) + 1 - length
    return pos.unsqueeze(0).expand(3, -1, -1).contiguous(), deltas


def _block_starts(
    flat_ids: torch.Tensor,
    after_start: torch.Tensor,
    pad_id: int,
    grid: torch.Tensor,
    kind: str,
    merge: int,
) -> torch.Tensor:
    """Flat indices where each ``kind`` block begins, checked against ``grid``.

    A block is a pad token right after ``<|vision_start|>``; it must be followed by exactly
    ``t * (h // merge) * (w // merge)`` pads (all in one row), and no pad may sit outside a block.
    """
    is_pad = flat_ids == pad_id
    starts = torch.nonzero(after_start & is_pad).flatten()
    if starts.numel() != grid.shape[0]:
        raise InvalidOptionError(
            f"the prompt has {starts.numel()} {kind} block(s) (<|vision_start|> followed by the {kind} pad "
            f"token {pad_id}) but {kind}_grid_thw has {grid.shape[0]} row(s)"
            + (" (Qwen3-VL counts one block per video frame)" if kind == "video" else "")
        )
    if starts.numel() == 0:
        if bool(is_pad.any()):
            raise InvalidOptionError(f"{kind} pad token {pad_id} found outside a <|vision_start|> block")
        return starts
    sizes = grid[:, 0] * (grid[:, 1] // merge) * (grid[:, 2] // merge)
    ends = starts + sizes
    pad_count = torch.zeros(flat_ids.numel() + 1, dtype=torch.long, device=flat_ids.device)
    pad_count[1:] = is_pad.long().cumsum(0)
    fits = ends <= flat_ids.numel()
    inside = torch.where(fits, pad_count[ends.clamp(max=flat_ids.numel())] - pad_count[starts], -1)
    bad = torch.nonzero(inside != sizes).flatten()
    if bad.numel() > 0:
        k = int(bad[0])
        raise InvalidOptionError(
            f"{kind} {k}: {kind}_grid_thw {grid[k].tolist()} needs {int(sizes[k])} consecutive pad tokens "
            f"after <|vision_start|>, the prompt has a different count"
        )
    if int(sizes.sum()) != int(is_pad.sum()):
        raise InvalidOptionError(
            f"{int(is_pad.sum())} {kind} pad tokens in the prompt but {kind}_grid_thw accounts for {int(sizes.sum())}"
        )
    return starts


def _as_ids(input_ids: Any) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.dim() != 2:
        raise InvalidOptionError(f"input_ids must have shape (batch, length), got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InvalidOptionError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    return ids


def _as_mask(attention_mask: Any, ids: torch.Tensor) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    mask = torch.as_tensor(attention_mask, device=ids.device)
    if tuple(mask.shape) != tuple(ids.shape):
        raise InvalidOptionError(
            f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        raise InvalidOptionError("attention_mask must contain only 0 and 1")
    return mask


def _as_grid(grid: Any, name: str, device: torch.device) -> torch.Tensor:
    if grid is None:
        return torch.zeros(0, 3, dtype=torch.long, device=device)
    g = torch.as_tensor(grid, device=device)
    if g.numel() == 0:
        return torch.zeros(0, 3, dtype=torch.long, device=device)
    if g.dim() != 2 or g.shape[1] != 3:
        raise InvalidOptionError(f"{name} must have shape (N, 3), got {tuple(g.shape)}")
    if g.dtype.is_floating_point or g.dtype == torch.bool:
        raise InvalidOptionError(f"{name} must hold integers, got dtype {g.dtype}")
    if bool((g <= 0).any()):
        raise InvalidOptionError(f"{name} must hold positive sizes, got {g.tolist()}")
    return g.long()


def _as_seconds(seconds: Any, n_videos: int, model_type: str, device: torch.device) -> torch.Tensor:
    """Per-video seconds per temporal patch; float32 unless given as a float tensor (as transformers)."""
    if seconds is None or model_type != "qwen2_5_vl":
        return torch.ones(n_videos, dtype=torch.float32, device=device)
    if isinstance(seconds, torch.Tensor) and seconds.dtype.is_floating_point:
        s = seconds.to(device)
    else:
        s = torch.as_tensor(seconds, dtype=torch.float32, device=device)
    s = s.flatten()
    if s.numel() < n_videos:
        raise InvalidOptionError(f"second_per_grid_ts has {s.numel()} value(s) for {n_videos} video(s)")
    s = s[:n_videos]
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise InvalidOptionError(f"second_per_grid_ts must be finite and >= 0, got {s.tolist()}")
    return s
