"""The vision tower: a ViT over 14x14 (x2 frames) patches, merged 2x2 into text tokens.

Input is what the processor produces: ``pixel_values`` (N, C*T*P*P), one row per
patch, and ``grid_thw`` (num_media, 3) giving each image/video's (t, h, w) in patches.
The processor already orders the patches of every frame in *merge-block order*: the
four patches that the PatchMerger later fuses into one text token are consecutive.

Steps:
1. patch embedding: a Conv3d whose kernel equals its stride, i.e. one matrix product
   per flattened patch;
2. 2-D rotary positions: each patch rotates half of every head's channels by its row
   and half by its column (positions listed in the same merge-block order);
3. ``depth`` pre-norm blocks; attention never crosses an image or a video frame
   (segments given by ``cu_seqlens``).  Qwen2.5-VL additionally restricts most blocks
   to windows of ``window_size`` pixels: patches are permuted so each window is
   contiguous, and only ``fullatt_block_indexes`` blocks see the whole frame;
4. PatchMerger: norm, concatenate each 2x2 group, 2-layer MLP to the text width.

Qwen2-VL uses LayerNorm and a GELU MLP (fc1/fc2); Qwen2.5-VL uses RMSNorm and a SwiGLU
MLP with biases.  Module names mirror the checkpoints (``visual.blocks.N.attn.qkv``...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .text import MLP, RMSNorm, activation, rotate_half


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.width, kernel_size=k, stride=k, bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # kernel == stride == one patch, so the convolution is a single matmul on the
        # flattened (C, T, P, P) patch; much faster than Conv3d on CPU.
        w = self.proj.weight
        return F.linear(patches.to(w.dtype), w.reshape(w.shape[0], -1))


class VisionMLP(nn.Module):
    """Qwen2-VL's plain MLP: fc2(act(fc1(x)))."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.width, cfg.width * 3, bias=True)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: list[int]) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # each (N, heads, head_dim)
        # Rotary in float32 (as the reference does), then back to the activation dtype.
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(x.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(x.dtype)
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, heads, N, head_dim)
        # Attention within each segment (an image, a video frame, or a window).
        spans = zip(cu_seqlens[:-1], cu_seqlens[1:])
        out = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b]) for a, b in spans]
        return self.proj(torch.cat(out, dim=2)[0].transpose(0, 1).reshape(n, -1))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.family == "qwen2_vl":
            self.norm1 = nn.LayerNorm(cfg.width, eps=1e-6)
            self.norm2 = nn.LayerNorm(cfg.width, eps=1e-6)
            self.mlp = VisionMLP(cfg.width, cfg.mlp_dim, cfg.hidden_act)
        else:
            self.norm1 = RMSNorm(cfg.width, eps=1e-6)
            self.norm2 = RMSNorm(cfg.width, eps=1e-6)
            self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.hidden_act, bias=True)
        self.attn = VisionAttention(cfg)

    def forward(self, x, cos, sin, cu_seqlens):
        x = x + self.attn(self.norm1(x), cos, sin, cu_seqlens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Norm each patch, concatenate each group of merge**2 patches, MLP to the text width."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.group_dim = cfg.width * cfg.spatial_merge_size**2
        norm = nn.LayerNorm(cfg.width, eps=1e-6) if cfg.family == "qwen2_vl" else RMSNorm(cfg.width, eps=1e-6)
        self.ln_q = norm
        self.mlp = nn.Sequential(
            nn.Linear(self.group_dim, self.group_dim), nn.GELU(), nn.Linear(self.group_dim, cfg.out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.group_dim))


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row, col) of every patch, (N, 2), listed in the processor's merge-block order.

    Within a frame the processor emits patches block by block: for each block row, for
    each block column, the ``merge x merge`` patches of that block row-major.  Frames
    repeat the same layout.
    """
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        # (block_row, row_in_block, block_col, col_in_block) -> block order
        rows, cols = (a.permute(0, 2, 1, 3).flatten() for a in (rows, cols))
        out.append(torch.stack([rows, cols], dim=-1).repeat(t, 1))
    return torch.cat(out)


def window_order(grid_thw: torch.Tensor, cfg: VisionConfig) -> tuple[torch.Tensor, list[int]]:
    """Qwen2.5-VL windowing: (order of merged tokens so windows are contiguous, cu_seqlens in patches).

    Each frame's grid of merged tokens (h/2 x w/2) is tiled with windows of
    ``window_size / patch_size / merge`` tokens a side (edge windows are smaller),
    windows listed row-major and tokens row-major inside each window.
    """
    merge, unit = cfg.spatial_merge_size, cfg.spatial_merge_size**2
    win = cfg.window_size // merge // cfg.patch_size
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


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def rotary_freqs(self, grid_thw: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Rotary angles (N, head_dim/2): the first half of the frequencies by row, the second by column."""
        quarter = self.cfg.head_dim // 4
        inv_freq = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))
        pos = patch_positions(grid_thw, self.cfg.spatial_merge_size).to(device)
        freqs = (pos[:, :, None].float() * inv_freq).flatten(1)  # (N, 2*quarter): rows then cols
        return freqs

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, patch_dim), grid_thw (M, 3) -> one text-width vector per merged token."""
        cfg, unit = self.cfg, self.cfg.spatial_merge_size**2
        if pixel_values.ndim != 2 or pixel_values.shape[1] != cfg.patch_dim:
            raise ValueError(f"pixel values must be (num_patches, {cfg.patch_dim}), got {tuple(pixel_values.shape)}")
        expected = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != expected:
            raise ValueError(f"{pixel_values.shape[0]} patches but grid_thw {grid_thw.tolist()} implies {expected}")
        x = self.patch_embed(pixel_values)
        freqs = self.rotary_freqs(grid_thw, x.device)
        frame_sizes = (grid_thw[:, 1] * grid_thw[:, 2]).repeat_interleave(grid_thw[:, 0])
        cu_frames = [0] + torch.cumsum(frame_sizes, 0).tolist()
        order = None
        if cfg.window_size:
            # Permute groups of `unit` patches (one merged token each) so windows are contiguous.
            order, cu_windows = window_order(grid_thw, cfg)
            order = order.to(x.device)
            n = x.shape[0]
            x = x.view(n // unit, unit, -1)[order].reshape(n, -1)
            freqs = freqs.view(n // unit, unit, -1)[order].reshape(n, -1)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # broadcast over heads
        cos, sin = emb.cos(), emb.sin()
        for i, block in enumerate(self.blocks):
            full = not cfg.window_size or i in cfg.fullatt_block_indexes
            x = block(x, cos, sin, cu_frames if full else cu_windows)
        x = self.merger(x)
        if order is not None:
            x = x[torch.argsort(order)]  # back to the processor's (and the text's) order
        return x
