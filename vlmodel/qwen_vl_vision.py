"""The first-generation Qwen-VL vision encoder: a ViT-bigG-style tower and a one-layer Resampler.

Unlike the later families (whose ViT sees native-resolution patch sequences and whose
merger emits a variable number of tokens), every Qwen-VL image is resized to
``image_size`` x ``image_size`` and becomes exactly ``num_queries`` (256) vectors:

1. ``conv1``: non-overlapping ``patch_size`` patches -> ``width`` channels, a (G x G) grid;
2. ``positional_embedding``: a learned 16 x 16 table, resampled bicubically to G x G when
   G != 16 (448 px / 14 = 32 in the released checkpoints), added to the patches;
3. ``ln_pre``, then ``layers`` pre-norm blocks (LayerNorm eps 1e-6, exact GELU MLP); the
   fused ``in_proj`` of each block lays out q, k, v *per head* ([q_h, k_h, v_h] for head h);
4. ``attn_pool`` (the Resampler): 256 learned queries attend once to the patches through a
   standard ``nn.MultiheadAttention`` with ``output_dim // 128`` heads; queries carry a fixed
   16 x 16 2-D sin-cos table, keys the same table resampled to G x G; ``kv_proj`` maps the
   ViT width to ``output_dim`` (absent when they are equal);
5. ``ln_post`` and the ``proj`` matrix.

Module and parameter names are the original checkpoint's (``transformer.visual.*``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig

POSITION_TABLE = 256  # rows of the learned position table (16 x 16), whatever the image size
RESAMPLER_HEAD_DIM = 128  # the Resampler has output_dim // 128 heads
EPS = 1e-6


def resample_table(table: torch.Tensor, count: int) -> torch.Tensor:
    """A (side*side, C) position table bicubically resampled to (count, C) (count a square), in float32."""
    side, target = int(math.sqrt(table.shape[0])), int(math.sqrt(count))
    if side == target:
        return table
    grid = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)


def sincos_table(dim: int, side: int) -> torch.Tensor:
    """The MAE 2-D sin-cos table (side*side, dim), row-major: the first half of the channels encodes
    the column, the second half the row (the original builds its grid with ``np.meshgrid(w, h)``)."""

    def one_axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        angles = pos.reshape(-1, 1).double() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.cat([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], dim=1).float()


class BlockAttention(nn.Module):
    """Self-attention of a ViT block; ``in_proj`` yields [q_h, k_h, v_h] for each head h in turn."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        q, k, v = self.in_proj(x).view(b, n, self.heads, 3, width // self.heads).permute(3, 0, 2, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))


class BlockMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=EPS)
        self.attn = BlockAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=EPS)
        self.mlp = BlockMLP(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.Module):
    """Holds ``resblocks`` (the checkpoint's ``transformer.visual.transformer.resblocks.N``)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(Block(cfg.width, cfg.num_heads, cfg.mlp_dim) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class Resampler(nn.Module):
    """``num_queries`` learned queries, one cross-attention over the patches (``attn_pool``)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        dim, side = cfg.out_dim, int(math.sqrt(cfg.num_queries))
        # fixed, but stored in the checkpoints: loaded like a weight
        self.register_buffer("pos_embed", sincos_table(dim, side))
        self.query = nn.Parameter(torch.zeros(cfg.num_queries, dim))
        self.kv_proj = nn.Linear(cfg.width, dim, bias=False) if cfg.width != dim else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, dim // RESAMPLER_HEAD_DIM, batch_first=True)
        self.ln_q = nn.LayerNorm(dim, eps=EPS)
        self.ln_kv = nn.LayerNorm(dim, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features (N, P, width) -> (N, num_queries, dim)."""
        key_pos = resample_table(self.pos_embed, x.shape[1])
        x = self.ln_kv(self.kv_proj(x))
        q = (self.ln_q(self.query) + self.pos_embed).unsqueeze(0).expand(x.shape[0], -1, -1)
        out, _ = self.attn(q, x + key_pos, x, need_weights=False)
        return out


class QwenVLVisual(nn.Module):
    """Images (N, 3, S, S), already resized and normalised -> (N, num_queries, out_dim) text-width vectors."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.positional_embedding = nn.Parameter(torch.zeros(POSITION_TABLE, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=EPS)
        self.transformer = Blocks(cfg)
        self.attn_pool = Resampler(cfg)
        self.ln_post = nn.LayerNorm(cfg.out_dim, eps=EPS)
        self.proj = nn.Parameter(torch.zeros(cfg.out_dim, cfg.out_dim))

    @property
    def tokens_per_image(self) -> int:
        return self.cfg.num_queries

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        shape = tuple(pixel_values.shape)
        if pixel_values.ndim != 4 or shape[1] != self.cfg.in_channels:
            raise ValueError(f"pixel_values must be (images, {self.cfg.in_channels}, S, S); got {shape}")
        if shape[2] != shape[3] or shape[2] % self.cfg.patch_size:
            raise ValueError(f"pixel_values must be square images whose side is a multiple of the patch size "
                             f"{self.cfg.patch_size} (the checkpoint's visual.image_size is {self.cfg.image_size}); "
                             f"got {shape}")
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # (N, G*G, width)
        x = x + resample_table(self.positional_embedding, x.shape[1])
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(self.attn_pool(x)) @ self.proj
