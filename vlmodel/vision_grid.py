"""Index arithmetic of the vision tower: where each patch sits, windows, position-table taps.

The processor emits the patches of every frame in *merge-block order*: the
``merge x merge`` patches that the merger later fuses into one text token are
consecutive (blocks row-major, patches row-major inside a block).  Everything here lists
patches in that same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row, col) of every patch, (N, 2), in merge-block order; frames repeat the layout."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        # (block_row, row_in_block, block_col, col_in_block) -> block order
        rows, cols = (a.permute(0, 2, 1, 3).flatten() for a in (rows, cols))
        out.append(torch.stack([rows, cols], dim=-1).repeat(t, 1))
    return torch.cat(out)


def frame_boundaries(grid_thw: torch.Tensor) -> list[int]:
    """cu_seqlens of the frames: attention never crosses an image or a video frame."""
    frame_sizes = (grid_thw[:, 1] * grid_thw[:, 2]).repeat_interleave(grid_thw[:, 0])
    return [0] + torch.cumsum(frame_sizes, 0).tolist()


def window_order(grid_thw: torch.Tensor, window_size: int, patch_size: int, merge: int) -> tuple[torch.Tensor, list[int]]:
    """Qwen2.5-VL windowing: (order of merged tokens so windows are contiguous, cu_seqlens in patches).

    Each frame's grid of merged tokens (h/2 x w/2) is tiled with windows of
    ``window_size / patch_size / merge`` tokens a side (edge windows are smaller),
    windows listed row-major and tokens row-major inside each window.
    """
    unit, win = merge**2, window_size // merge // patch_size
    order, cu, offset = [], [0], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge, w // merge
        idx = torch.arange(t * gh * gw).view(t, gh, gw)
        ph, pw = -gh % win, -gw % win
        idx = F.pad(idx, (0, pw, 0, ph), value=-1)
        nh, nw = (gh + ph) // win, (gw + pw) // win
        idx = idx.view(t, nh, win, nw, win).permute(0, 1, 3, 2, 4).reshape(t * nh * nw, win * win)
        for window in idx:
            window = window[window >= 0]
            if len(window):
                order.append(window + offset)
                cu.append(cu[-1] + len(window) * unit)
        offset += t * gh * gw
    return torch.cat(order), cu


def position_table_taps(grid_thw: torch.Tensor, side: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps into a learned (side x side) position table, resampled to each grid.

    ``align_corners=True``: row ``r`` of an ``h``-row grid reads the table at
    ``r * (side - 1) / (h - 1)``.  Returns indices and weights (N, 4), patches in
    merge-block order, taps ordered (top-left, top-right, bottom-left, bottom-right).
    """
    pos = patch_positions(grid_thw, merge).float()
    sizes = grid_thw[:, 1:].repeat_interleave(grid_thw.prod(-1), dim=0).float()  # (N, 2): h, w of each patch's grid
    src = pos * (side - 1) / (sizes - 1).clamp(min=1)
    low = src.floor()
    frac = src - low
    low = low.long()
    high = (low + 1).clamp(max=side - 1)
    (r0, c0), (r1, c1) = low.unbind(-1), high.unbind(-1)
    fr, fc = frac.unbind(-1)
    index = torch.stack([r0 * side + c0, r0 * side + c1, r1 * side + c0, r1 * side + c1], dim=-1)
    weight = torch.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], dim=-1)
    return index, weight
