"""The Qwen2 text decoder with multimodal rotary positions (M-RoPE).

A plain pre-norm decoder: RMSNorm -> grouped-query attention (q/k/v have a bias,
o does not) -> residual -> RMSNorm -> SwiGLU MLP -> residual.  The only Qwen2-VL
twist is M-RoPE: every token carries three positions (temporal, height, width) and
the rotary frequencies are split into ``mrope_section = [s_t, s_h, s_w]`` groups, the
first ``s_t`` frequencies rotating by the temporal position, the next ``s_h`` by the
height position and the last ``s_w`` by the width position.  For text tokens the
three positions are equal, so it reduces to ordinary RoPE.

Module names mirror the original checkpoints (``model.layers.N.self_attn.q_proj``...)
so weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig

# torch >= 2.5 reads shared key/value heads in place (no copy of the cache per step).
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def activation(name: str):
    """The few activation functions used by Qwen2-VL-family checkpoints."""
    if name in ("silu", "swish"):
        return F.silu
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name == "gelu_pytorch_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"unsupported activation {name!r}")


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back before the weight (as Qwen2 does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: RoPE's 90-degree turn."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def mrope_cos_sin(
    position_ids: torch.Tensor, cfg: TextConfig, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, L, head_dim) for positions (3, B, L).

    The first ``mrope_section[0]`` frequencies rotate by the temporal position, the next
    ``mrope_section[1]`` by the row, the last ``mrope_section[2]`` by the column.
    Computed in float32, then cast to the activation dtype.
    """
    half = cfg.head_dim // 2
    device = position_ids.device
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, device=device, dtype=torch.float32) / half))
    pos = position_ids.float()
    parts, start = [], 0
    for axis, width in enumerate(cfg.mrope_section):  # (t, h, w) sections of the frequencies
        parts.append(pos[axis, :, :, None] * inv_freq[start : start + width])
        start += width
    freqs = torch.cat(parts, dim=-1)  # (B, L, half)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class KVCache:
    """Preallocated keys and values for every layer, filled left to right.

    Buffers are (B, kv_heads, max_len, head_dim); ``length`` tokens are valid.  Each
    layer writes its new keys at ``[length, length + L)`` and attends over the prefix;
    the model advances ``length`` once all layers have run.
    """

    def __init__(self, cfg: TextConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > max_len {self.max_len}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, is_causal, cache: KVCache | None):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # Grouped-query attention: query head h reads key/value head h // group.
        group = self.num_heads // self.num_kv_heads
        if group > 1 and not _SDPA_GQA:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        gqa = {"enable_gqa": True} if group > 1 and _SDPA_GQA else {}
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, act: str, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x, cos, sin, mask, is_causal, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


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


class TextModel(nn.Module):
    """Token embedding, the decoder layers and the final norm (``model.*`` in checkpoints)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """embeds (B, L, D), position_ids (3, B, L) -> final hidden states (B, L, D).

        ``cu_seqlens`` marks a packed row (B = 1): attention stays inside each sample.
        """
        past = cache.length if cache is not None else 0
        cos, sin = mrope_cos_sin(position_ids, self.cfg, embeds.dtype)
        mask, is_causal = attention_mask_for(attention_mask, embeds.shape[1], past, embeds.device, cu_seqlens)
        x = embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask, is_causal, cache)
        if cache is not None:
            cache.length += embeds.shape[1]
        return self.norm(x)
