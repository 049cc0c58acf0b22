"""The vision tower: a ViT over patches, merged ``merge x merge`` into text-width tokens.

Input is what the processor produces: ``pixel_values`` (N, C*T*P*P), one row per patch
in merge-block order, and ``grid_thw`` (num_media, 3) giving each image/video's (t, h, w)
in patches.

Steps (each optional step is a config field, see :class:`~vlmodel.config.VisionConfig`):

1. patch embedding: a Conv3d whose kernel equals its stride, i.e. one matrix product per
   flattened patch (``patch_bias``: Qwen3 has a bias);
2. learned position embeddings (``num_position_embeddings``, Qwen3): a square table
   bilinearly resampled to each grid and added;
3. 2-D rotary positions: each patch rotates half of every head's channels by its row and
   half by its column;
4. ``depth`` pre-norm blocks; attention never crosses an image or a video frame.
   ``window_size`` (Qwen2.5-VL): most blocks see only windows; patches are permuted so
   each window is contiguous and ``fullatt_block_indexes`` blocks see the whole frame;
5. the merger: norm, concatenate each merge group, 2-layer GELU MLP to the text width.
   DeepStack (``deepstack_visual_indexes``, Qwen3-VL): after those blocks, extra mergers
   (norm over the concatenated group) produce features the decoder adds to its first layers.

Norms are LayerNorm or RMSNorm (``norm``); the block MLP is plain (fc1/fc2) or SwiGLU (``mlp``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .layers import MLP, PlainMLP, RMSNorm
from .rotary import apply_rotary, vision_freqs
from .vision_grid import frame_boundaries, patch_positions, position_table_taps, window_order


def _norm(kind: str, dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=1e-6) if kind == "layernorm" else RMSNorm(dim, eps=1e-6)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.width, kernel_size=k, stride=k, bias=cfg.patch_bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        # kernel == stride == one patch, so the convolution is a single matmul on the
        # flattened (C, T, P, P) patch; much faster than Conv3d on CPU.
        w = self.proj.weight
        return F.linear(patches.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)


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
        q = apply_rotary(q.float(), cos, sin).to(x.dtype)
        k = apply_rotary(k.float(), cos, sin).to(x.dtype)
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, heads, N, head_dim)
        # Attention within each segment (an image, a video frame, or a window).
        spans = zip(cu_seqlens[:-1], cu_seqlens[1:])
        out = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b]) for a, b in spans]
        return self.proj(torch.cat(out, dim=2)[0].transpose(0, 1).reshape(n, -1))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = _norm(cfg.norm, cfg.width)
        self.norm2 = _norm(cfg.norm, cfg.width)
        self.attn = VisionAttention(cfg)
        if cfg.mlp == "gated":
            self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.hidden_act, bias=True)
        else:
            self.mlp = PlainMLP(cfg.width, cfg.mlp_dim, cfg.hidden_act)

    def forward(self, x, cos, sin, cu_seqlens):
        x = x + self.attn(self.norm1(x), cos, sin, cu_seqlens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Norm, concatenate each group of merge**2 patches, GELU MLP to the text width.

    ``postshuffle``: the norm runs over the concatenated group (DeepStack mergers).
    """

    def __init__(self, cfg: VisionConfig, postshuffle: bool = False):
        super().__init__()
        self.group_dim = cfg.width * cfg.spatial_merge_size**2
        self.postshuffle = postshuffle
        self.norm = _norm(cfg.norm, self.group_dim if postshuffle else cfg.width)
        self.linear_fc1 = nn.Linear(self.group_dim, self.group_dim)
        self.linear_fc2 = nn.Linear(self.group_dim, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.view(-1, self.group_dim)) if self.postshuffle else self.norm(x).view(-1, self.group_dim)
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        if cfg.num_position_embeddings:
            self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.width)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)
        if cfg.deepstack_visual_indexes:
            self.deepstack_merger_list = nn.ModuleList(
                PatchMerger(cfg, postshuffle=True) for _ in cfg.deepstack_visual_indexes
            )

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pixel_values (N, patch_dim), grid_thw (M, 3) -> (one text-width vector per merged
        token, the DeepStack features: one such tensor per ``deepstack_visual_indexes`` entry)."""
        cfg, unit = self.cfg, self.cfg.spatial_merge_size**2
        if pixel_values.ndim != 2 or pixel_values.shape[1] != cfg.patch_dim:
            raise ValueError(f"pixel values must be (num_patches, {cfg.patch_dim}), got {tuple(pixel_values.shape)}")
        expected = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != expected:
            raise ValueError(f"{pixel_values.shape[0]} patches but grid_thw {grid_thw.tolist()} implies {expected}")
        grid_thw = grid_thw.cpu()
        x = self.patch_embed(pixel_values)
        if cfg.num_position_embeddings:
            side = int(cfg.num_position_embeddings**0.5)
            index, weight = position_table_taps(grid_thw, side, cfg.spatial_merge_size)
            table = self.pos_embed(index.to(x.device))  # (N, 4, width)
            x = x + (table * weight.to(x.device, table.dtype)[:, :, None]).sum(1).to(x.dtype)
        freqs = vision_freqs(patch_positions(grid_thw, cfg.spatial_merge_size).to(x.device), cfg.head_dim, cfg.rope_theta)
        cu_frames = frame_boundaries(grid_thw)
        order = None
        if cfg.window_size:
            # Permute groups of `unit` patches (one merged token each) so windows are contiguous.
            order, cu_windows = window_order(grid_thw, cfg.window_size, cfg.patch_size, cfg.spatial_merge_size)
            order = order.to(x.device)
            n = x.shape[0]
            x = x.view(n // unit, unit, -1)[order].reshape(n, -1)
            freqs = freqs.view(n // unit, unit, -1)[order].reshape(n, -1)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # broadcast over heads
        cos, sin = emb.cos(), emb.sin()
        deepstack = []
        for i, block in enumerate(self.blocks):
            full = not cfg.window_size or i in cfg.fullatt_block_indexes
            x = block(x, cos, sin, cu_frames if full else cu_windows)
            if i in cfg.deepstack_visual_indexes:
                deepstack.append(self.deepstack_merger_list[cfg.deepstack_visual_indexes.index(i)](x))
        x = self.merger(x)
        if order is not None:
            back = torch.argsort(order)  # to the processor's (and the text's) order
            x, deepstack = x[back], [d[back] for d in deepstack]
        return x, deepstack
