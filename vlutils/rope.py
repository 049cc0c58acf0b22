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

How it is vectorized: a text token's id is its index among the row's valid tokens plus a
per-row running "shift": each block adds ``extent - size`` after its last token, where
``extent`` is ``max id - start + 1`` of the block and ``size`` its token count (one scatter and
one cumsum for the whole batch). Vision tokens are then written one grid row (``w'`` tokens)
at a time with ``repeat_interleave``, so only the few grid rows, not the tokens, need a
division. Rows with holes in the attention mask are packed to the right first and put back.
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
    layout = _Layout(model_type, spatial_merge_size, tokens_per_second, image_token_id, video_token_id, vision_start_token_id)

    valid = None if mask is None or bool(mask.all()) else mask.bool()
    if valid is None or _rows_are_contiguous(valid):
        return _vision_positions(ids, valid, image_grid, video_grid, video_seconds, layout)
    # Holes inside a row: move each row's valid tokens to the right (stable), solve the
    # left-padded problem, and put the ids back where the tokens came from.
    order = torch.sort(valid.to(torch.int8), dim=1, stable=True).indices
    packed, deltas = _vision_positions(
        ids.gather(1, order), valid.gather(1, order), image_grid, video_grid, video_seconds, layout
    )
    position_ids = torch.empty_like(packed).scatter_(2, order.unsqueeze(0).expand_as(packed), packed)
    return position_ids, deltas


class _Layout:
    """The model-family constants that get_rope_index needs, bundled for the helpers."""

    def __init__(self, model_type, merge, tokens_per_second, image_id, video_id, start_id):
        self.model_type, self.merge, self.tokens_per_second = model_type, merge, tokens_per_second
        self.image_id, self.video_id, self.start_id = image_id, video_id, start_id


def _vision_positions(
    ids: torch.Tensor,
    valid: torch.Tensor | None,
    image_grid: torch.Tensor,
    video_grid: torch.Tensor,
    video_seconds: torch.Tensor,
    layout: _Layout,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The vision path for rows whose valid tokens are contiguous (``valid`` None = all valid)."""
    batch, length = ids.shape
    device = ids.device

    # 1. Blocks: an image/video pad token right after <|vision_start|>, in row-major order
    #    (the order in which transformers consumes the grids, one counter across the batch).
    is_image, is_video = ids == layout.image_id, ids == layout.video_id
    opens = torch.zeros_like(is_image)
    opens[:, 1:] = ids[:, :-1] == layout.start_id
    if valid is not None:
        is_image &= valid
        is_video &= valid
        opens[:, 1:] &= valid[:, :-1]
    block_row, block_col = torch.nonzero((is_image | is_video) & opens, as_tuple=True)
    block_is_image = is_image[block_row, block_col]
    grid, step = _block_grids(block_is_image, image_grid, video_grid, video_seconds, layout)
    llm_t, llm_h, llm_w = grid[:, 0], grid[:, 1] // layout.merge, grid[:, 2] // layout.merge
    size = llm_t * llm_h * llm_w
    block_end = block_col + size  # exclusive column
    if bool((block_end > length).any()):
        raise InvalidOptionError("a vision block runs past the end of its row: the prompt has fewer pads than its grid")

    # 2. Text: index among the row's valid tokens, plus the running shift that each block adds
    #    after its last token: (its extent over the three axes) - (its token count).
    t_last = llm_t - 1 if step is None else _scaled_frame_index(llm_t - 1, step, layout.tokens_per_second)
    extent = torch.stack([t_last, llm_h - 1, llm_w - 1]).amax(0) + 1
    shift = torch.zeros(batch, length + 1, dtype=torch.long, device=device)
    shift.index_put_((block_row, block_end), extent - size, accumulate=True)
    shift = shift.cumsum(1)
    columns = torch.arange(length, device=device)
    if valid is None:
        text = columns + shift[:, :length]
        n_valid = torch.full((batch, 1), length, dtype=torch.long, device=device)
    else:  # one run of valid tokens per row: index = column - first valid column; padding gets 1
        n_valid = valid.sum(1, keepdim=True)
        first_valid = valid.to(torch.uint8).argmax(1, keepdim=True)
        text = torch.where(valid, columns - first_valid + shift[:, :length], 1)
    position_ids = text.unsqueeze(0).repeat(3, 1, 1)

    # 3. Vision tokens, built one grid row (w' tokens) at a time so no per-token division is needed.
    if block_row.numel() > 0:
        start_pos = text[block_row, block_col]
        rows_per_block = llm_t * llm_h
        row_block = torch.repeat_interleave(torch.arange(rows_per_block.numel(), device=device), rows_per_block)
        row_in_block = torch.arange(row_block.numel(), device=device) - _first_index(rows_per_block)[row_block]
        frame = row_in_block // llm_h[row_block]
        row_y = row_in_block - frame * llm_h[row_block]
        if step is not None:
            frame = _scaled_frame_index(frame, step[row_block], layout.tokens_per_second)
        row_w = llm_w[row_block]
        row_pos = start_pos[row_block]
        row_first_token = (block_row * length + block_col)[row_block] + row_in_block * row_w
        n_tokens = int(size.sum())
        row_out = _first_index(row_w)  # where each grid row starts among the vision tokens
        k = torch.arange(n_tokens, device=device)

        def per_token(row_values: torch.Tensor) -> torch.Tensor:
            return torch.repeat_interleave(row_values, row_w, output_size=n_tokens)

        token = k + per_token(row_first_token - row_out)
        _check_pads(ids, valid, token, per_token(block_is_image[row_block]), is_image, is_video, size, block_is_image, layout)
        flat = position_ids.view(3, -1)
        flat[0].index_copy_(0, token, per_token(row_pos + frame))
        flat[1].index_copy_(0, token, per_token(row_pos + row_y))
        flat[2].index_copy_(0, token, k + per_token(row_pos - row_out))

    elif bool(is_image.any()) or bool(is_video.any()):
        raise InvalidOptionError("image/video pad token found outside a <|vision_start|> block")
    # The next free id (max + 1) is what the text after the row would get.
    deltas = n_valid + shift[:, length:] - length
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


def _first_index(counts: torch.Tensor) -> torch.Tensor:
    """Start offset of each group when groups of ``counts`` items are laid end to end."""
    return torch.cumsum(counts, 0) - counts


def _rows_are_contiguous(valid: torch.Tensor) -> bool:
    """True when every row's valid tokens form one run (left, right or no padding)."""
    runs = (valid[:, 1:] & ~valid[:, :-1]).sum(1) + valid[:, 0]
    return bool((runs <= 1).all())


def _block_grids(
    block_is_image: torch.Tensor,
    image_grid: torch.Tensor,
    video_grid: torch.Tensor,
    video_seconds: torch.Tensor,
    layout: _Layout,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each block's (t, h, w) grid and, for Qwen2.5-VL, its seconds per temporal patch
    (images: 0); blocks take the image/video grids in order."""
    n_images, n_videos = int(block_is_image.sum()), int((~block_is_image).sum())
    for kind, found, grid in (("image", n_images, image_grid), ("video", n_videos, video_grid)):
        if found != grid.shape[0]:
            pad = layout.image_id if kind == "image" else layout.video_id
            raise InvalidOptionError(
                f"the prompt has {found} {kind} block(s) (<|vision_start|> followed by the {kind} pad "
                f"token {pad}) but {kind}_grid_thw has {grid.shape[0]} row(s)"
                + (" (Qwen3-VL counts one block per video frame)" if kind == "video" else "")
            )
    if bool((image_grid[:, 1:] < layout.merge).any()) or bool((video_grid[:, 1:] < layout.merge).any()):
        raise InvalidOptionError(f"grid heights and widths must be at least spatial_merge_size={layout.merge}")
    grid = torch.empty(block_is_image.numel(), 3, dtype=torch.long, device=block_is_image.device)
    grid[block_is_image] = image_grid
    grid[~block_is_image] = video_grid
    if layout.model_type != "qwen2_5_vl":
        return grid, None
    step = torch.zeros(block_is_image.numel(), dtype=video_seconds.dtype, device=block_is_image.device)
    step[~block_is_image] = video_seconds
    return grid, step


def _check_pads(ids, valid, token, token_is_image, is_image, is_video, size, block_is_image, layout) -> None:
    """Every block must be exactly its grid's number of pads, and no pad may sit outside a block.

    ``token`` lists the flat index of every token the grids assign to a block; they must all be
    valid pads of the block's kind, and together account for every valid pad of the prompt.
    """
    got = ids.view(-1).index_select(0, token)
    expected = torch.where(token_is_image, layout.image_id, layout.video_id)
    ok = got == expected
    if valid is not None:
        ok &= valid.view(-1).index_select(0, token)
    n_image_tokens = int(size[block_is_image].sum())
    if not bool(ok.all()) or n_image_tokens != int(is_image.sum()) or int(size.sum()) - n_image_tokens != int(is_video.sum()):
        raise InvalidOptionError(
            f"the pad tokens do not match the grids: the prompt has {int(is_image.sum())} image and "
            f"{int(is_video.sum())} video pads, the grids need {n_image_tokens} and {int(size.sum()) - n_image_tokens}, "
            f"each run right after its <|vision_start|>"
        )


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
    if mask.dtype != torch.bool and mask.numel() > 0 and not (0 <= int(mask.min()) and int(mask.max()) <= 1):
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
