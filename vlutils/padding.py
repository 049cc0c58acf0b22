"""Token rows of different lengths -> one padded ``input_ids`` tensor and its ``attention_mask``."""

from __future__ import annotations

import torch


def pad_rows(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``rows`` to the longest with ``pad_id`` on ``side`` ("left" for generation, else "right")."""
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        input_ids[b, cols] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, cols] = 1
    return input_ids, attention_mask
