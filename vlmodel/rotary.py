"""Rotary position embeddings: multimodal (M-RoPE) for the decoder, 2-D for the ViT.

M-RoPE: every token carries three positions (temporal, height, width).  Each rotary
frequency is driven by one of them, as ``mrope_section = [s_t, s_h, s_w]`` says:

* contiguous (Qwen2-VL, Qwen2.5-VL): the first ``s_t`` frequencies follow t, the next
  ``s_h`` follow h, the last ``s_w`` follow w;
* interleaved (Qwen3, ``mrope_interleaved``): frequency ``j`` follows h if ``j % 3 == 1``
  and ``j < 3 s_h``, w if ``j % 3 == 2`` and ``j < 3 s_w``, t otherwise.

For text tokens the three positions are equal, so both reduce to ordinary RoPE.  With
``partial_rotary_factor < 1`` (Qwen3.5) only the first ``rotary_dim`` channels of each
head rotate; the rest pass through.
"""

from __future__ import annotations

import torch

from .config import TextConfig


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: RoPE's 90-degree turn."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def frequency_axes(cfg: TextConfig, device: torch.device | None = None) -> torch.Tensor:
    """Which position axis (0 = t, 1 = h, 2 = w) drives each of the rotary_dim/2 frequencies."""
    half = cfg.rotary_dim // 2
    if not cfg.mrope_interleaved:
        return torch.repeat_interleave(torch.arange(3, device=device), torch.tensor(cfg.mrope_section, device=device))
    j = torch.arange(half, device=device)
    axes = torch.zeros(half, dtype=torch.long, device=device)
    for axis in (1, 2):
        axes[(j % 3 == axis) & (j < 3 * cfg.mrope_section[axis])] = axis
    return axes


def rope_tables(cfg: TextConfig, device: torch.device, theta: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse frequencies, the axis of each frequency): fixed per model (and per dynamic-NTK base
    ``theta``, default ``cfg.rope_theta``), cached by the decoder."""
    half = cfg.rotary_dim // 2
    theta = cfg.rope_theta if theta is None else theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, device=device, dtype=torch.float32) / half))
    return inv_freq, frequency_axes(cfg, device)


def mrope_cos_sin(
    position_ids: torch.Tensor, cfg: TextConfig, dtype: torch.dtype, tables: tuple | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, L, rotary_dim) for positions (3, B, L), computed in float32 then cast."""
    inv_freq, axes = tables if tables is not None else rope_tables(cfg, position_ids.device)
    # pick, for every frequency, the position on its axis: (B, L, half)
    pos = position_ids.float().permute(1, 2, 0)[..., axes]
    freqs = pos * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x`` (..., head_dim); the rest pass through."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    head, rest = x[..., :rot], x[..., rot:]
    return torch.cat((head * cos + rotate_half(head) * sin, rest), dim=-1)


def vision_freqs(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """2-D rotary angles (N, head_dim/2) for patch (row, col) positions (N, 2).

    The first half of the frequencies rotate by the row, the second half by the column.
    """
    quarter = head_dim // 4
    device = positions.device
    inv_freq = 1.0 / (theta ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))
    return (positions[:, :, None].float() * inv_freq).flatten(1)
