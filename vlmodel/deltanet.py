"""Gated DeltaNet: the linear-attention layer of Qwen3.5's hybrid decoder.

Each value head keeps a matrix state ``S`` (key_dim x value_dim) instead of a growing
key/value cache.  Per token, with an L2-normalised key ``k``, value ``v``, query ``q``,
a decay ``g <= 0`` (log space) and a write strength ``beta`` in (0, 1)::

    S = exp(g) * S                      # forget a little
    S = S + beta * k (v - S^T k)^T      # delta rule: write only what S mispredicts
    o = S^T q / sqrt(key_dim)

Before that, q/k/v pass through a causal depthwise conv (kernel 4) and SiLU; after
it, a per-head RMSNorm gated by ``silu(z)`` and the out projection.

Two ways to compute the same recurrence:

* ``recurrent_delta_rule``: token by token, for decoding (one token per step);
* ``chunked_delta_rule``: the sequence is cut into chunks of 64; inside a chunk the
  updates are solved at once with a triangular system (the "WY" form), so a prefill
  costs a few matmuls per chunk instead of one small update per token.

Packed rows (several samples in one row, ``cu_seqlens`` = sample boundaries) are
unpacked into a padded batch, so the conv and the recurrence start afresh at every
sample and nothing leaks from one sample into the next.

Parameter names match the checkpoints (``linear_attn.in_proj_qkv`` ...).  In the decoder
this is the ``linear_attention`` token mixer (:func:`build_mixer`, see ``vlmodel.decoder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError
from .layers import activation


@dataclass
class DeltaNetState:
    """What one DeltaNet layer carries from one forward to the next while decoding.

    ``conv``: the last ``kernel - 1`` conv inputs (B, conv_dim, kernel - 1);
    ``recurrent``: the float32 state matrices (B, value_heads, key_dim, value_dim).
    Both are None before the first forward (a fresh prompt).
    """

    conv: torch.Tensor | None = None
    recurrent: torch.Tensor | None = None


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta, num_v_heads: int):
    """(B, L, H, d) inputs -> float32 (float64 stays) (B, H, L, d), keys shared across value heads,
    q/k normalised, q scaled."""
    group = num_v_heads // k.shape[2]
    if group > 1:  # value head h reads key/query head h // group
        q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)
    dtype = torch.promote_types(v.dtype, torch.float32)
    q, k, v = (t.transpose(1, 2).to(dtype) for t in (q, k, v))
    q = _l2norm(q) * q.shape[-1] ** -0.5
    k = _l2norm(k)
    return q, k, v, g.transpose(1, 2).to(dtype), beta.transpose(1, 2).to(dtype)


def recurrent_delta_rule(q, k, v, g, beta, state: torch.Tensor | None = None):
    """Token-by-token gated delta rule.

    q, k (B, L, Hk, dk); v (B, L, Hv, dv); g, beta (B, L, Hv).
    Returns the outputs (B, L, Hv, dv) in v's dtype and the final state (B, Hv, dk, dv), float32.
    """
    q, k, v32, g, beta = _prepare(q, k, v, g, beta, v.shape[2])
    b, h, n, dk = k.shape
    s = state.to(k.dtype) if state is not None else k.new_zeros(b, h, dk, v32.shape[-1])
    decay = g.exp()[..., None, None]  # (b, h, n, 1, 1)
    k_row, q_row = k.unsqueeze(-2), q.unsqueeze(-2)  # (b, h, n, 1, dk): row vectors for matmuls
    out = torch.empty_like(v32)
    for t in range(n):
        s = s * decay[:, :, t]
        delta = (v32[:, :, t] - (k_row[:, :, t] @ s).squeeze(-2)) * beta[:, :, t, None]  # what S^T k misses
        s = s + k_row[:, :, t].transpose(-1, -2) @ delta.unsqueeze(-2)
        out[:, :, t] = (q_row[:, :, t] @ s).squeeze(-2)
    return out.transpose(1, 2).to(v.dtype), s


def chunked_delta_rule(q, k, v, g, beta, state: torch.Tensor | None = None, chunk: int = 64):
    """The same recurrence, ``chunk`` tokens at a time.  Same arguments and results as the recurrent form.

    Inside a chunk, with ``c_i`` the cumulative log decay up to token i and ``S0`` the
    state at the chunk start, the state after token i is
    ``exp(c_i) S0 + sum_{j<=i} exp(c_i - c_j) k_j u_j^T`` where the corrections ``u``
    solve the unit lower-triangular system
    ``u_i + beta_i sum_{j<i} exp(c_i - c_j) (k_i.k_j) u_j = beta_i (v_i - exp(c_i) S0^T k_i)``.
    """
    q, k, v32, g, beta = _prepare(q, k, v, g, beta, v.shape[2])
    b, h, n, dk = k.shape
    dv = v32.shape[-1]
    pad = (-n) % chunk  # zero padding: beta = 0 and k = 0 leave the state untouched
    if pad:
        q, k, v32 = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v32))
        g, beta = (F.pad(t, (0, pad)) for t in (g, beta))
    m = (n + pad) // chunk
    q, k, v32 = (t.reshape(b, h, m, chunk, t.shape[-1]) for t in (q, k, v32))
    c = g.reshape(b, h, m, chunk).cumsum(-1)  # cumulative log decay inside each chunk
    beta = beta.reshape(b, h, m, chunk, 1)

    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    # decay[i, j] = exp(c_i - c_j) for j <= i, 0 above the diagonal (masked before exp: no overflow)
    decay = (c[..., :, None] - c[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    system = (beta * k) @ k.transpose(-1, -2) * decay  # strictly-lower part = the coupling above
    solve = lambda rhs: torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)  # noqa: E731
    u_from_v = solve(beta * v32)  # the corrections if S0 = 0 ...
    u_per_s0 = solve(beta * k * c.exp()[..., None])  # ... minus this times S0
    scores = q @ k.transpose(-1, -2) * decay  # intra-chunk attention, (b, h, m, chunk, chunk)
    q_decayed = q * c.exp()[..., None]  # reads the chunk-start state
    k_to_end = k * (c[..., -1:] - c).exp()[..., None]  # writes decayed to the chunk end
    chunk_decay = c[..., -1].exp()[..., None, None]

    s = state.to(k.dtype) if state is not None else k.new_zeros(b, h, dk, dv)
    out = torch.empty_like(v32)
    for i in range(m):
        u = u_from_v[:, :, i] - u_per_s0[:, :, i] @ s
        out[:, :, i] = q_decayed[:, :, i] @ s + scores[:, :, i] @ u
        s = s * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ u
    out = out.reshape(b, h, m * chunk, dv)[:, :, :n]
    return out.transpose(1, 2).to(v.dtype), s


class GatedRMSNorm(nn.Module):
    """RMSNorm over each head's output, then times ``silu(gate)`` (weight starts at 1, not zero-centred)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32.to(x.dtype) * F.silu(gate.float())).to(x.dtype)


def unpack_rows(x: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T, ...) packed row -> (samples, longest, ...) zero-padded batch and its validity mask."""
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    offsets = torch.arange(int(lengths.max()), device=x.device)
    valid = offsets[None, :] < lengths[:, None]
    index = (cu[:-1, None] + offsets[None, :]).clamp(max=x.shape[1] - 1)
    batch = x[0][index] * valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)
    return batch, valid


class GatedDeltaNet(nn.Module):
    """The ``linear_attn`` module of a Qwen3.5 decoder layer."""

    def __init__(
        self,
        hidden_size: int,
        num_k_heads: int,
        num_v_heads: int,
        head_k_dim: int,
        head_v_dim: int,
        conv_kernel: int = 4,
        eps: float = 1e-6,
        act: str = "silu",
    ):
        super().__init__()
        if num_v_heads % num_k_heads:
            raise ValueError(f"linear_num_value_heads {num_v_heads} is not a multiple of linear_num_key_heads {num_k_heads}")
        self.act = activation(act)  # after the conv (the model's hidden_act, SiLU in every release)
        self.num_k_heads, self.num_v_heads = num_k_heads, num_v_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.key_dim, self.value_dim = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.kernel = conv_kernel
        self.in_proj_qkv = nn.Linear(hidden_size, self.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(hidden_size, self.value_dim, bias=False)  # output gate
        self.in_proj_b = nn.Linear(hidden_size, num_v_heads, bias=False)  # write strength (beta)
        self.in_proj_a = nn.Linear(hidden_size, num_v_heads, bias=False)  # decay input
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(num_v_heads))
        self.A_log = nn.Parameter(torch.zeros(num_v_heads))
        self.norm = GatedRMSNorm(head_v_dim, eps)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def new_state(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> DeltaNetState:
        """A fresh decoding state; its tensors are made by the first forward (size independent of max_len)."""
        return DeltaNetState()

    def forward(self, x: torch.Tensor, ctx: Any, state: DeltaNetState | None) -> torch.Tensor:
        """The decoder's mixer call: padding and packed rows come from ``ctx`` (a ``decoder.Context``)."""
        return self.mix(x, state, ctx.attention_mask, ctx.cu_seqlens)

    def mix(
        self,
        x: torch.Tensor,
        state: DeltaNetState | None = None,
        padding_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D).

        ``state`` (updated in place) continues a previous forward; ``padding_mask``
        (B, L), 1 for real tokens, zeroes padding so it never enters the state;
        ``cu_seqlens`` (samples + 1,) marks the samples of a packed row (B = 1, no state).
        """
        if cu_seqlens is not None:
            if x.shape[0] != 1 or state is not None:
                raise ValueError("cu_seqlens needs a single packed row (batch 1) and no decoding state")
            batch, valid = unpack_rows(x, cu_seqlens)
            return self._mix(batch, None)[valid].unsqueeze(0)
        if padding_mask is not None:
            x = x * padding_mask[:, -x.shape[1] :, None].to(x.dtype)
        return self._mix(x, state)

    def _mix(self, x: torch.Tensor, state: DeltaNetState | None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self._conv(self.in_proj_qkv(x), state)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(b, n, self.num_k_heads, self.head_k_dim)
        k = k.reshape(b, n, self.num_k_heads, self.head_k_dim)
        v = v.reshape(b, n, self.num_v_heads, self.head_v_dim)
        beta = self.in_proj_b(x).sigmoid()
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias)
        previous = state.recurrent if state is not None else None
        if previous is not None and n == 1:
            out, final = recurrent_delta_rule(q, k, v, g, beta, previous)
        else:
            out, final = chunked_delta_rule(q, k, v, g, beta, previous)
        if state is not None:
            state.recurrent = final
        z = self.in_proj_z(x).reshape(b, n, self.num_v_heads, self.head_v_dim)
        return self.out_proj(self.norm(out, z).reshape(b, n, self.value_dim))

    def _conv(self, x: torch.Tensor, state: DeltaNetState | None) -> torch.Tensor:
        """Causal depthwise conv + SiLU over (B, L, C); the left context is the state's tail or zeros."""
        x = x.transpose(1, 2)
        if state is not None and state.conv is not None:
            left = state.conv.to(x.dtype)
        else:
            left = x.new_zeros(x.shape[0], x.shape[1], self.kernel - 1)
        full = torch.cat([left, x], dim=-1)
        if state is not None:
            state.conv = full[:, :, full.shape[-1] - (self.kernel - 1) :]
        w = self.conv1d.weight
        if x.shape[-1] == 1:  # one decoding step: a weighted sum over the window (much cheaper than conv1d)
            out = (full.to(w.dtype) * w[:, 0]).sum(-1, keepdim=True)
        else:
            out = F.conv1d(full.to(w.dtype), w, groups=self.conv_dim)
        return self.act(out).to(x.dtype).transpose(1, 2)


def build_mixer(cfg: Any, layer: int) -> GatedDeltaNet:
    """The ``linear_attn`` module of decoder layer ``layer`` from a ``TextConfig`` (its ``linear_*`` fields,
    with transformers' defaults for the ones a config leaves out)."""
    linear = cfg.linear
    try:
        return GatedDeltaNet(
            cfg.hidden_size,
            num_k_heads=int(linear.get("linear_num_key_heads", 16)),
            num_v_heads=int(linear.get("linear_num_value_heads", 32)),
            head_k_dim=int(linear.get("linear_key_head_dim", 128)),
            head_v_dim=int(linear.get("linear_value_head_dim", 128)),
            conv_kernel=int(linear.get("linear_conv_kernel_dim", 4)),
            eps=cfg.rms_norm_eps,
            act=cfg.hidden_act,
        )
    except ValueError as exc:
        raise ConfigError(f"config.json: layer {layer} (linear_attention): {exc}") from exc
