"""Sparse mixture-of-experts MLP (Qwen3-VL-MoE, Qwen3.5-MoE).

Router: softmax over ``num_experts`` logits in float32, keep the top ``k``, renormalise
them to sum to 1.  Each token's output is the weighted sum of its ``k`` experts' SwiGLU
outputs; with ``shared_expert_intermediate_size`` (Qwen3.5-MoE) a dense shared expert is
added, scaled by ``sigmoid(shared_expert_gate(x))``.

Expert weights are fused as transformers 5.x holds them: ``experts.gate_up_proj``
(E, 2 * I, D) with the gate rows first, and ``experts.down_proj`` (E, D, I).  The loader
converts the other layouts found on the hub (``vlmodel.weights``).

Computation: tokens are sorted by expert once; each expert used runs one matmul on its
contiguous slice (no per-token loop, no one-hot over experts).  When there are fewer
(token, expert) pairs than experts (decoding), each pair is one matmul on a view of its
expert's weights (gathering the weights instead copies megabytes per step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .layers import MLP, activation


class Router(nn.Module):
    """``mlp.gate``: a bias-free linear map to expert logits, then softmax top-k renormalised."""

    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_experts, dim))
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) -> (weights (N, k) in x's dtype, expert indices (N, k))."""
        logits = F.linear(x, self.weight)
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        top, index = probs.topk(self.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        return top.to(logits.dtype), index


class Experts(nn.Module):
    """``mlp.experts``: E SwiGLU experts in two fused tensors."""

    def __init__(self, num_experts: int, dim: int, hidden: int, act: str):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.act = activation(act)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x (N, D), routing (N, k) -> (N, D)."""
        n, k = index.shape
        if n * k <= self.gate_up_proj.shape[0]:
            # Few (token, expert) pairs (decoding): one matmul per pair on views of the expert's weights.
            out = torch.zeros_like(x)
            for t, experts in enumerate(index.tolist()):
                for slot, e in enumerate(experts):
                    gate, up = F.linear(x[t], self.gate_up_proj[e]).chunk(2, dim=-1)
                    out[t] += weights[t, slot] * F.linear(self.act(gate) * up, self.down_proj[e])
            return out
        flat = index.flatten()
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.gate_up_proj.shape[0]).tolist()
        token = order // k  # the token of each sorted (token, slot) pair
        out = torch.zeros_like(x)
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            rows = token[start : start + count]
            pairs = order[start : start + count]
            gate, up = F.linear(x[rows], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(self.act(gate) * up, self.down_proj[expert])
            out.index_add_(0, rows, y * weights.flatten()[pairs, None])
            start += count
        return out


class SparseMoE(nn.Module):
    """``mlp`` of an MoE layer: router, experts and the optional shared expert."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate = Router(cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size, cfg.hidden_act)
        self.shared_expert = None
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = MLP(cfg.hidden_size, cfg.shared_expert_intermediate_size, cfg.hidden_act)
            self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, index = self.gate(x)
        out = self.experts(x, weights, index)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.view(shape)
