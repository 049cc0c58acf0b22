"""M-RoPE position ids for the model's inputs, computed by ``vlutils.rope``.

Prompts: :func:`rope_index` (all families, left padding or holes in the mask).
Packed rows: :func:`packed_rope_index` numbers every sample from 0 on its own.
Decode steps: sequence index + the prefill's rope delta (see ``vlmodel.generate``).
"""

from __future__ import annotations

import torch

from .config import ModelConfig


def rope_index(
    config: ModelConfig,
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions (3, B, L) and rope deltas (B, 1)."""
    try:
        from vlutils.rope import get_rope_index
    except ImportError as exc:
        raise ImportError(
            "computing M-RoPE positions needs vlutils.rope.get_rope_index; pass position_ids explicitly"
        ) from exc
    return get_rope_index(
        input_ids,
        image_grid_thw,
        video_grid_thw,
        attention_mask,
        second_per_grid_ts,
        model_type=config.input_type,
        spatial_merge_size=config.vision.spatial_merge_size,
        tokens_per_second=config.vision.tokens_per_second,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id,
    )


def _rows(x) -> list[torch.Tensor]:
    """Rows of a grid tensor / entries of a list, or [] for None."""
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return list(x.reshape(len(x), -1).unbind(0)) if x.ndim else [x]
    return [torch.as_tensor(v) for v in x]


def packed_rope_index(
    config: ModelConfig,
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | list[float] | None = None,
) -> torch.Tensor:
    """Positions (3, 1, L) of a packed row: every sample numbered from 0 on its own.

    The grids (in sample order) are handed to the sample whose placeholders they fill.
    A Python loop over samples, for positions only (cheap; the decoder runs once).
    """
    unit = config.vision.spatial_merge_size**2
    grids = {"image": _rows(image_grid_thw), "video": _rows(video_grid_thw)}
    seconds = _rows(second_per_grid_ts)
    taken = {"image": 0, "video": 0}
    parts = []
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        ids = input_ids[:, a:b]
        mine: dict[str, tuple[int, int]] = {}  # kind -> [first, end) of its grids
        for kind, token in (("image", config.image_token_id), ("video", config.video_token_id)):
            first, want = taken[kind], int((ids == token).sum())
            while want > 0 and taken[kind] < len(grids[kind]):
                want -= int(grids[kind][taken[kind]].prod()) // unit
                taken[kind] += 1
            if want != 0:
                raise ValueError(f"packed sample at [{a}, {b}): its {kind} placeholders do not match the {kind} grids")
            mine[kind] = (first, taken[kind])
        (i0, i1), (v0, v1) = mine["image"], mine["video"]
        image = torch.stack(grids["image"][i0:i1]) if i1 > i0 else None
        video = torch.stack(grids["video"][v0:v1]) if v1 > v0 else None
        secs = torch.stack(seconds[v0:v1]).flatten() if seconds and v1 > v0 else None
        parts.append(rope_index(config, ids, image, video, None, secs)[0])
    return torch.cat(parts, dim=2)
