"""Full (softmax) attention for the decoder, its KV cache, and the masks it needs.

Grouped-query attention with the options the families differ in: q/k/v and o biases,
per-head q/k RMSNorm before RoPE (Qwen3), partial rotary (Qwen3.5), and an output gate
(Qwen3.5: ``q_proj`` yields a query and a gate per head; the output is multiplied by
``sigmoid(gate)`` before ``o_proj``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .layers import RMSNorm
from .rotary import apply_rotary

# torch >= 2.5 reads shared key/value heads in place (no copy of the cache per step).
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class KVCache:
    """One attention layer's keys and values, preallocated (B, kv_heads, max_len, head_dim).

    ``update(k, v, past)`` writes the new keys at ``[past, past + L)`` and returns the
    valid prefix; the decoder's :class:`~vlmodel.decoder.Cache` owns ``past``.
    """

    def __init__(self, cfg: TextConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, k: torch.Tensor, v: torch.Tensor, past: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = past + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > max_len {self.max_len}")
        self.keys[:, :, past:end] = k
        self.values[:, :, past:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    """``self_attn`` of a decoder layer: the ``full_attention`` token mixer."""

    def __init__(self, cfg: TextConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_out = cfg.num_heads * cfg.head_dim * (2 if cfg.attn_output_gate else 1)
        self.q_proj = nn.Linear(cfg.hidden_size, q_out, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_zero_centered)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_zero_centered)

    def new_state(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        return KVCache(self.cfg, batch, max_len, dtype, device)

    def forward(self, x: torch.Tensor, ctx, state: KVCache | None) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D); ``ctx`` is the forward's :class:`~vlmodel.decoder.Context`."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, -1)
        gate = None
        if self.cfg.attn_output_gate:  # per head: [query | gate]
            q, gate = q.split(self.head_dim, dim=-1)
            gate = gate.reshape(b, n, -1)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = ctx.cos.unsqueeze(1), ctx.sin.unsqueeze(1)  # broadcast over heads
        q = apply_rotary(q.transpose(1, 2), cos, sin)
        k = apply_rotary(k.transpose(1, 2), cos, sin)
        if ctx.query_scale is not None:  # log-n scaling (Qwen-VL)
            q = q * ctx.query_scale
        if state is not None:
            k, v = state.update(k, v, ctx.past)
        # Grouped-query attention: query head h reads key/value head h // group.
        group = self.num_heads // self.num_kv_heads
        if group > 1 and not _SDPA_GQA:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        gqa = {"enable_gqa": True} if group > 1 and _SDPA_GQA else {}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=ctx.is_causal, **gqa)
        out = out.transpose(1, 2).reshape(b, n, -1)
        if gate is not None:
            out = out * torch.sigmoid(gate)
        return self.o_proj(out)


def segment_ids(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """Which packed sample each of ``length`` positions belongs to, (length,)."""
    sizes = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(torch.arange(len(sizes), device=cu_seqlens.device), sizes, output_size=length)


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Validate packed-row boundaries ``[0, L1, L1+L2, ..., L]`` (int, 1-D, strictly increasing)."""
    if batch != 1:
        raise ValueError(f"cu_seqlens describes one packed row; input_ids has {batch} rows")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.ndim != 1 or cu_seqlens.is_floating_point():
        raise ValueError("cu_seqlens must be a 1-D integer tensor [0, L1, L1+L2, ..., L]")
    cu = cu_seqlens.long()
    if len(cu) < 2 or int(cu[0]) != 0 or int(cu[-1]) != length or bool((cu[1:] <= cu[:-1]).any()):
        raise ValueError(f"cu_seqlens {cu.tolist()} must start at 0, increase strictly and end at the row length {length}")
    return cu


def attention_mask_for(
    attention_mask: torch.Tensor | None,
    q_len: int,
    past: int,
    device: torch.device,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """The SDPA mask for ``q_len`` new tokens after ``past`` cached ones: (mask, is_causal).

    Without padding the fast paths are used: ``is_causal`` for a fresh prompt, no mask
    for one decode token.  With padding (``attention_mask`` (B, past + q_len) holding
    zeros, on either side) a boolean (B, 1, q_len, k_len) mask is built: causal AND
    key-is-real.  Each token may always see itself, so padded rows stay finite (an
    all-masked row would give NaN, and NaN values leak through zero attention weights).
    A packed row (``cu_seqlens``, no cache) gets a block-diagonal causal mask, built once
    per forward and shared by every layer: a token sees only its own sample.
    """
    if cu_seqlens is not None:
        seg = segment_ids(cu_seqlens.to(device), q_len)
        pos = torch.arange(q_len, device=device)
        mask = (pos[None, :] <= pos[:, None]) & (seg[None, :] == seg[:, None])
        return mask[None, None], False
    has_padding = attention_mask is not None and not bool(attention_mask.all())
    if not has_padding:
        if q_len == 1:
            return None, False
        if past == 0:
            return None, True
    k_len = past + q_len
    q_pos = torch.arange(past, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None]  # (1, q_len, k_len)
    if has_padding:
        mask = (mask & attention_mask[:, None, :k_len].bool()) | (k_pos == q_pos)
    return mask[:, None], False
