"""The text decoder: embeddings, pre-norm layers, final norm.

Each layer is ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``.  The *token mixer* of
layer ``i`` is chosen by ``config.layer_types[i]`` from :data:`MIXERS`:

* ``"full_attention"``: :class:`vlmodel.attention.Attention` (module name ``self_attn``);
* ``"linear_attention"``: Qwen3.5's gated DeltaNet (module name ``linear_attn``), built by
  ``vlmodel.deltanet.build_mixer(cfg, layer)``.

The MLP is dense, or a :class:`vlmodel.moe.SparseMoE` where ``config.is_moe_layer(i)``.

Token-mixer interface (what a new kind of layer implements):

* ``forward(x, ctx, state) -> y``: ``x`` (B, L, D); ``ctx`` is this forward's
  :class:`Context` (rotary tables, attention mask, padding mask, packed-row
  boundaries, number of cached tokens); ``state`` is the object the mixer's own
  ``new_state`` returned (None when not decoding).  The mixer updates it in place.
* ``new_state(batch, max_len, dtype, device)``: a fresh per-layer decoding state, e.g. a
  preallocated :class:`~vlmodel.attention.KVCache`, or a recurrent state.

:class:`Cache` is the list of those per-layer states plus ``length``, the tokens seen so
far, advanced once per forward after all layers ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .attention import Attention, attention_mask_for
from .config import TextConfig
from .deltanet import build_mixer
from .layers import MLP, RMSNorm
from .moe import SparseMoE
from .rotary import mrope_cos_sin, rope_tables


def ntk_base(cfg: TextConfig, alpha: float) -> float:
    """The RoPE base for dynamic-NTK factor ``alpha`` (Qwen-7B): theta * alpha ** (d / (d - 2))."""
    if alpha == 1.0:
        return cfg.rope_theta
    return cfg.rope_theta * alpha ** (cfg.rotary_dim / (cfg.rotary_dim - 2))


def logn_scale(positions: torch.Tensor, seq_length: int) -> torch.Tensor:
    """log-n attention scaling (Qwen-7B): the query at position p is multiplied by
    log(p + 1) / log(seq_length) once p + 1 > seq_length, else by 1; float32 (B, L)."""
    n = positions.double() + 1
    return torch.where(n > seq_length, n.log() / math.log(seq_length), torch.ones_like(n)).float()


# layer type -> (module name in checkpoints, builder(cfg, layer))
MIXERS: dict[str, tuple[str, Callable[[TextConfig, int], nn.Module]]] = {
    "full_attention": ("self_attn", Attention),
    "linear_attention": ("linear_attn", build_mixer),
}


@dataclass
class Context:
    """What every layer of one forward shares (built once, not per layer)."""

    cos: torch.Tensor  # (B, L, rotary_dim)
    sin: torch.Tensor
    mask: torch.Tensor | None  # SDPA mask for full attention, or None
    is_causal: bool
    past: int  # tokens already in the cache
    attention_mask: torch.Tensor | None  # (B, past + L), 1 = real token, or None
    cu_seqlens: torch.Tensor | None  # packed-row boundaries (B = 1), or None
    query_scale: torch.Tensor | None = None  # (B, 1, L, 1) log-n factors for the rotated queries, or None


class Cache:
    """Per-layer decoding states (KV caches, recurrent states) and the tokens seen so far."""

    def __init__(self, layers: list[Any]):
        self.layers = layers
        self.length = 0
        self.ntk_alpha = 1.0  # dynamic NTK: fixed by the prefill, kept while decoding (Qwen-VL)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int):
        super().__init__()
        self.mixer_name, build = MIXERS[cfg.layer_types[layer]]
        setattr(self, self.mixer_name, build(cfg, layer))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_zero_centered)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_zero_centered)
        dense = not cfg.is_moe_layer(layer)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, cfg.mlp_bias) if dense else SparseMoE(cfg)

    @property
    def mixer(self) -> nn.Module:
        return getattr(self, self.mixer_name)

    def forward(self, x: torch.Tensor, ctx: Context, state: Any) -> torch.Tensor:
        x = x + self.mixer(self.input_layernorm(x), ctx, state)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    """Token embedding, the decoder layers and the final norm (``model.*`` in checkpoints)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_zero_centered)
        self._rope: dict[tuple[torch.device, float], tuple] = {}  # rotary tables per (device, NTK factor)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> Cache:
        return Cache([layer.mixer.new_state(batch, max_len, dtype, device) for layer in self.layers])

    def ntk_alpha(self, length: int, cache: Cache | None) -> float:
        """Dynamic NTK factor (Qwen-VL, inference only): chosen from the prompt length at prefill,
        then kept in ``cache`` for every decoding step, as the original does."""
        if not self.cfg.use_dynamic_ntk or self.training:
            return 1.0
        if cache is not None and cache.length:
            return cache.ntk_alpha
        alpha = float(max(2 ** math.ceil(math.log(length / self.cfg.seq_length, 2) + 1) - 1, 1))
        if cache is not None:
            cache.ntk_alpha = alpha
        return alpha

    def forward(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
        deepstack: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """embeds (B, L, D), position_ids (3, B, L) -> final hidden states (B, L, D).

        ``cu_seqlens`` marks a packed row (B = 1): attention stays inside each sample.
        ``deepstack[i]`` (V, D) is added at the ``visual_mask`` (B, L) positions after layer i.
        """
        past = cache.length if cache is not None else 0
        alpha = self.ntk_alpha(embeds.shape[1], cache)
        key = (position_ids.device, alpha)
        if key not in self._rope:
            self._rope[key] = rope_tables(self.cfg, position_ids.device, ntk_base(self.cfg, alpha))
        cos, sin = mrope_cos_sin(position_ids, self.cfg, embeds.dtype, self._rope[key])
        mask, is_causal = attention_mask_for(attention_mask, embeds.shape[1], past, embeds.device, cu_seqlens)
        scale = None
        if self.cfg.use_logn_attn and not self.training:
            scale = logn_scale(position_ids[0], self.cfg.seq_length).to(embeds.dtype)[:, None, :, None]
        ctx = Context(cos, sin, mask, is_causal, past, attention_mask, cu_seqlens, scale)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, ctx, cache.layers[i] if cache is not None else None)
            if deepstack is not None and i < len(deepstack):
                x = x.index_put((visual_mask,), deepstack[i].to(x.dtype), accumulate=True)
        if cache is not None:
            cache.length += embeds.shape[1]
        return self.norm(x)
