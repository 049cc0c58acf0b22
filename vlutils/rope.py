"""M-RoPE position ids for Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (and their MoE variants),
without a per-token Python loop.

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
  blocks with ``t = 1``; Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE do the same (Qwen3.5 exists
  only in transformers 5.x, whose ids equal these except padding and deltas: see the README);
* padding (``attention_mask == 0``) gets id 1; ``deltas = max id + 1 - padded length``.

How it is vectorized: a text token's id is its index among the row's valid tokens plus a
per-row running "shift": each block adds ``extent - size`` after its last token, where
``extent`` is ``max id - start + 1`` of the block and ``size`` its token count (one scatter and
one cumsum for the whole batch). Vision tokens are then written one grid row (``w'`` tokens)
at a time with ``np.repeat``, so only the few grid rows, not the tokens, need a division.
Rows with holes in the attention mask are packed to the right first and put back. The index
arithmetic runs in numpy on the CPU (per-call overhead a fraction of torch's for these
dozens of small steps); results are returned as torch tensors on ``input_ids``' device.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .errors import InvalidOptionError
from .families import get_family, model_types

__all__ = ["MODEL_TYPES", "get_rope_index", "decode_position_ids"]

MODEL_TYPES = model_types("inputs")  # derived from vlutils.families


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
    style = get_family(model_type, "inputs").position_ids  # one of families.POSITION_STYLES
    if style == "text":
        raise InvalidOptionError(f"model_type {model_type!r} has plain 1-D position ids, not M-RoPE "
                                 "(build_inputs returns them)")
    if not isinstance(spatial_merge_size, int) or isinstance(spatial_merge_size, bool) or spatial_merge_size < 1:
        raise InvalidOptionError(f"spatial_merge_size must be a positive int, got {spatial_merge_size!r}")
    ids = _as_ids(input_ids)
    mask = _as_mask(attention_mask, ids)

    if image_grid_thw is None and video_grid_thw is None:
        return _text_only(ids, mask)

    image_grid = _as_grid(image_grid_thw, "image_grid_thw")
    video_grid = _as_grid(video_grid_thw, "video_grid_thw")
    video_seconds = _as_seconds(second_per_grid_ts, video_grid.shape[0], style)
    if style == "mrope_per_frame":
        # One block per frame (timestamps carry the time): (t, h, w) -> t rows of (1, h, w).
        video_grid = np.repeat(video_grid, video_grid[:, 0], axis=0)
        video_grid[:, 0] = 1
    layout = _Layout(style, spatial_merge_size, tokens_per_second, image_token_id, video_token_id, vision_start_token_id)

    # The index arithmetic runs in numpy on the CPU: dozens of small vectorized steps, where
    # numpy's per-call cost is a fraction of torch's. The results go back to ids' device.
    ids_np = ids.detach().cpu().numpy()
    mask_np = None if mask is None else mask.detach().cpu().numpy()
    valid = None if mask_np is None else _valid_tokens(mask_np)
    span = _Span.of(valid, *ids_np.shape, mask=mask_np)
    if span.contiguous:
        position_ids, deltas = _vision_positions(ids_np, span, image_grid, video_grid, video_seconds, layout)
    else:
        # Holes inside a row: move each row's valid tokens to the right (stable), solve the
        # left-padded problem, and put the ids back where the tokens came from.
        order = np.argsort(valid.astype(np.int8), axis=1, kind="stable")
        packed_valid = np.take_along_axis(valid, order, axis=1)
        packed, deltas = _vision_positions(
            np.take_along_axis(ids_np, order, axis=1), _Span.of(packed_valid, *ids_np.shape),
            image_grid, video_grid, video_seconds, layout,
        )
        position_ids = np.empty_like(packed)
        np.put_along_axis(position_ids, np.broadcast_to(order, packed.shape), packed, axis=2)
    return torch.from_numpy(position_ids).to(ids.device), torch.from_numpy(deltas).to(ids.device)


class _Layout:
    """The model-family constants that get_rope_index needs, bundled for the helpers."""

    def __init__(self, style, merge, tokens_per_second, image_id, video_id, start_id):
        self.style, self.merge, self.tokens_per_second = style, merge, tokens_per_second
        self.image_id, self.video_id, self.start_id = image_id, video_id, start_id


class _Span:
    """Where each row's valid tokens are: mask (None = all valid), count, first column, and
    whether each row's valid tokens form one run (left, right or no padding)."""

    def __init__(self, valid: np.ndarray | None, count: np.ndarray, first: np.ndarray, contiguous: bool):
        self.valid, self.count, self.first, self.contiguous = valid, count, first, contiguous

    @classmethod
    def of(cls, valid: np.ndarray | None, batch: int, length: int, mask: np.ndarray | None = None) -> "_Span":
        if valid is None or valid.all():
            return cls(None, np.full(batch, length), np.zeros(batch, dtype=np.int64), True)
        # (Summing a 0/1 integer mask is faster than summing booleans.)
        count = (mask if mask is not None and mask.dtype.kind in "iu" else valid).sum(1).astype(np.int64)
        first = valid.argmax(1)  # the first True (0 for an empty row, whose count is 0)
        if valid[:, -1].all():  # left padding: every row ends with a valid token
            last = np.full(batch, length - 1)
        else:
            last = length - 1 - valid[:, ::-1].argmax(1)
        contiguous = bool(np.all((last - first + 1 == count) | (count == 0)))
        return cls(valid, count, first, contiguous)


def _vision_positions(
    ids: np.ndarray,
    span: _Span,
    image_grid: np.ndarray,
    video_grid: np.ndarray,
    video_seconds: np.ndarray,
    layout: _Layout,
) -> tuple[np.ndarray, np.ndarray]:
    """The vision path for rows whose valid tokens are contiguous."""
    batch, length = ids.shape
    flat = ids.reshape(-1)
    first = span.first
    end_valid = first + span.count

    # 1. Blocks: a valid image/video pad right after a valid <|vision_start|>, in row-major
    #    order (the order in which transformers consumes the grids, one counter across the batch).
    opener = np.flatnonzero(flat == layout.start_id)
    pad_at = opener + 1
    pad_at = pad_at[pad_at % length != 0]  # the opener may not end its row
    row, col = np.divmod(pad_at, length)
    inside = (col - 1 >= first[row]) & (col < end_valid[row])
    is_image = (flat[pad_at] == layout.image_id) & inside
    is_video = (flat[pad_at] == layout.video_id) & inside
    keep = is_image | is_video
    start, block_row, block_col, block_is_image = pad_at[keep], row[keep], col[keep], is_image[keep]
    grid, step = _block_grids(block_is_image, image_grid, video_grid, video_seconds, layout)
    llm_t, llm_h, llm_w = grid[:, 0], grid[:, 1] // layout.merge, grid[:, 2] // layout.merge
    size = llm_t * llm_h * llm_w
    block_end = block_col + size  # exclusive column
    if np.any(block_end > end_valid[block_row]):
        raise InvalidOptionError("a vision block runs past the end of its row: the prompt has fewer pads than its grid")

    # 2. Text: index among the row's valid tokens, plus the running shift that each block adds
    #    after its last token: (its extent over the three axes) - (its token count).
    t_last = llm_t - 1 if step is None else _scaled_frame_index(llm_t - 1, step, layout.tokens_per_second)
    extent = np.maximum(np.maximum(t_last, llm_h - 1), llm_w - 1) + 1
    surplus = extent - size
    row_surplus = np.bincount(block_row, weights=surplus, minlength=batch).astype(np.int64)
    # Written straight into the output, as a running sum of steps: each token is one more than
    # the previous one, plus the surplus of a block that just ended (blocks never share an end).
    # Axis 0 first; it is copied to the other two axes before the vision ids are written.
    position_ids = np.empty((3, batch, length), dtype=np.int64)
    # Starting from -first makes a token's id its column minus the row's first valid column,
    # i.e. its index among the row's valid tokens (they form one run).
    text = position_ids[0]
    text.fill(1)
    text[:, 0] = -first
    shifts = block_end < length  # a block that ends its row shifts nothing in it
    text[block_row[shifts], block_end[shifts]] += surplus[shifts]
    np.cumsum(text, axis=1, out=text)
    if span.valid is not None:
        np.copyto(text, 1, where=~span.valid)  # padding gets 1
    position_ids[1] = text
    position_ids[2] = text

    # 3. Vision tokens, built one grid row (w' tokens) at a time so no per-token division is needed.
    n_tokens = int(size.sum())
    if n_tokens:
        start_pos = text[block_row, block_col]
        rows_per_block = llm_t * llm_h
        row_block = np.repeat(np.arange(size.shape[0]), rows_per_block)
        row_in_block = np.arange(row_block.shape[0]) - np.repeat(np.cumsum(rows_per_block) - rows_per_block, rows_per_block)
        height = llm_h[row_block]
        frame = row_in_block // height
        row_y = row_in_block - frame * height
        if step is not None:
            frame = _scaled_frame_index(frame, step[row_block], layout.tokens_per_second)
        row_w = llm_w[row_block]
        row_pos = start_pos[row_block]
        row_out = np.cumsum(row_w) - row_w  # where each grid row starts among the vision tokens
        k = np.arange(n_tokens)
        token = k + np.repeat(start[row_block] + row_in_block * row_w - row_out, row_w)
        kind = np.where(block_is_image, _IMAGE, _VIDEO).astype(np.int8)[row_block]
        pads = _pad_map(flat, span, token, np.repeat(kind, row_w), layout)
        # The check proved that the pads are exactly these tokens, and both are in row-major
        # order, so a boolean mask writes them (a little faster than the index list).
        position_ids[0].reshape(-1)[pads] = np.repeat(row_pos + frame, row_w)
        position_ids[1].reshape(-1)[pads] = np.repeat(row_pos + row_y, row_w)
        position_ids[2].reshape(-1)[pads] = k + np.repeat(row_pos - row_out, row_w)
    else:
        _pad_map(flat, span, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8), layout)

    # The next free id (max + 1) is what the text after the row would get.
    deltas = (span.count + row_surplus - length).reshape(batch, 1)
    return position_ids, deltas.astype(np.int64)


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


def _scaled_frame_index(frame: np.ndarray, seconds: np.ndarray, tokens_per_second: int | float) -> np.ndarray:
    """trunc(frame * seconds * tokens_per_second), rounded at each step in ``seconds``' float
    dtype, exactly as transformers 4.51 evaluates ``arange * second_per_grid_t * tps``."""
    scaled = (frame.astype(seconds.dtype) * seconds) * seconds.dtype.type(tokens_per_second)
    return np.trunc(scaled).astype(np.int64)


def _text_only(ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The no-vision fallback: ids from the mask's running count (padding gets 1)."""
    batch, length = ids.shape
    if mask is None:
        pos = torch.arange(length, device=ids.device).expand(3, batch, length).contiguous()
        return pos, torch.zeros(batch, 1, dtype=torch.long, device=ids.device)
    _valid_tokens(mask.detach().cpu().numpy())
    pos = mask.long().cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    deltas = pos.amax(-1, keepdim=True) + 1 - length
    return pos.unsqueeze(0).expand(3, -1, -1).contiguous(), deltas


def _block_grids(
    block_is_image: np.ndarray,
    image_grid: np.ndarray,
    video_grid: np.ndarray,
    video_seconds: np.ndarray,
    layout: _Layout,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each block's (t, h, w) grid and, for Qwen2.5-VL, its seconds per temporal patch
    (images: 0); blocks take the image/video grids in order."""
    n_images = int(np.count_nonzero(block_is_image))
    n_videos = block_is_image.shape[0] - n_images
    for kind, found, grid in (("image", n_images, image_grid), ("video", n_videos, video_grid)):
        if found != grid.shape[0]:
            pad = layout.image_id if kind == "image" else layout.video_id
            raise InvalidOptionError(
                f"the prompt has {found} {kind} block(s) (<|vision_start|> followed by the {kind} pad "
                f"token {pad}) but {kind}_grid_thw has {grid.shape[0]} row(s)"
                + (" (Qwen3-VL counts one block per video frame)" if kind == "video" else "")
            )
    if n_videos == 0:  # the common cases need no interleaving
        grid = image_grid
    elif n_images == 0:
        grid = video_grid
    else:
        grid = np.empty((block_is_image.shape[0], 3), dtype=np.int64)
        grid[block_is_image] = image_grid
        grid[~block_is_image] = video_grid
    if np.any(grid[:, 1:] < layout.merge):
        raise InvalidOptionError(f"grid heights and widths must be at least spatial_merge_size={layout.merge}")
    if layout.style != "mrope_timed":
        return grid, None
    step = np.zeros(block_is_image.shape[0], dtype=video_seconds.dtype)
    step[~block_is_image] = video_seconds
    return grid, step


_IMAGE, _VIDEO = 1, 2


def _pad_map(flat: np.ndarray, span: _Span, token: np.ndarray, expected: np.ndarray, layout: _Layout) -> np.ndarray:
    """Where the valid pads are (bool, flat), after checking they match the grids exactly.

    ``token`` lists the flat index of every token the grids assign to a block and ``expected``
    its kind (1 image, 2 video). All of them must be pads of that kind; since a block that ran
    over another would cover its <|vision_start|>, they are then distinct, and if the prompt
    has no other valid pad, the blocks account for every pad.
    """
    kinds = (flat == layout.image_id).view(np.int8) + 2 * (flat == layout.video_id).view(np.int8)
    if span.valid is not None:
        kinds *= span.valid.reshape(-1)
    pads = kinds != 0
    n_pads = int(np.count_nonzero(pads))
    if n_pads != token.shape[0] or np.any(kinds.take(token) != expected):
        n_image = int(np.count_nonzero(kinds == _IMAGE))
        need_image = int(np.count_nonzero(expected == _IMAGE))
        raise InvalidOptionError(
            f"the pad tokens do not match the grids: the prompt has {n_image} image and {n_pads - n_image} "
            f"video pads, the grids need {need_image} and {token.shape[0] - need_image}, each run right after "
            f"its <|vision_start|>"
        )
    return pads


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
    return mask


def _valid_tokens(mask: np.ndarray) -> np.ndarray:
    """The attention mask as booleans; only 0 and 1 are accepted (transformers tests ``== 1``)."""
    if mask.dtype.kind in "iu":  # as unsigned, negative values are huge: one max() checks both ends
        bad = mask.size > 0 and mask.view(mask.dtype.str.replace("i", "u")).max() > 1
    else:
        bad = mask.dtype != np.bool_ and bool(np.any((mask != 0) & (mask != 1)))
    if bad:
        raise InvalidOptionError("attention_mask must contain only 0 and 1")
    return mask.astype(bool, copy=False)


def _as_grid(grid: Any, name: str) -> np.ndarray:
    """An (N, 3) int64 numpy array of positive sizes (empty when None)."""
    if grid is None:
        return np.zeros((0, 3), dtype=np.int64)
    g = grid.detach().cpu().numpy() if isinstance(grid, torch.Tensor) else np.asarray(grid)
    if g.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if g.ndim != 2 or g.shape[1] != 3:
        raise InvalidOptionError(f"{name} must have shape (N, 3), got {tuple(g.shape)}")
    if not np.issubdtype(g.dtype, np.integer):
        raise InvalidOptionError(f"{name} must hold integers, got dtype {g.dtype}")
    if np.any(g <= 0):
        raise InvalidOptionError(f"{name} must hold positive sizes, got {g.tolist()}")
    return g.astype(np.int64)


def _as_seconds(seconds: Any, n_videos: int, style: str) -> np.ndarray:
    """Per-video seconds per temporal patch; float32 unless given as a float tensor (as transformers)."""
    if seconds is None or style != "mrope_timed":
        return np.ones(n_videos, dtype=np.float32)
    if isinstance(seconds, torch.Tensor) and seconds.dtype.is_floating_point:
        s = seconds.detach().cpu().flatten()
        s = s.float() if s.dtype in (torch.float16, torch.bfloat16) else s
    else:
        s = torch.as_tensor(seconds, dtype=torch.float32).flatten()
    s = s.numpy()
    if s.shape[0] < n_videos:
        raise InvalidOptionError(f"second_per_grid_ts has {s.shape[0]} value(s) for {n_videos} video(s)")
    s = s[:n_videos]
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise InvalidOptionError(f"second_per_grid_ts must be finite and >= 0, got {s.tolist()}")
    return s
