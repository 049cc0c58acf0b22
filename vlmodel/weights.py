"""Checkpoint tensor names -> vlmodel module names: one explicit table per family.

Module names are the released checkpoints' flat names (``visual.*``, ``model.*``,
``lm_head.*``) with one set of vision names for every family (the Qwen3 ones:
``mlp.linear_fc1``, ``merger.norm``, ``merger.linear_fc1``...).  Each family's table
lists how its checkpoint names reach them; ``*`` stands for a layer or block number.
transformers 5.x in-memory prefixes (``model.visual.``, ``model.language_model.``) are
undone first for every family.

MoE experts (any family with ``num_experts``) are accepted in the three layouts found in
the wild and stored fused as transformers 5.x holds them (see ``vlmodel.moe``):
fused ``gate_up_proj`` (E, 2I, D) / ``down_proj`` (E, D, I); the same transposed
((E, D, 2I) / (E, I, D): the released Qwen3-VL-MoE files and transformers 4.57's;
told apart by the shape of ``down_proj`` or ``gate_up_proj``, whichever is unambiguous);
or one tensor per expert ``experts.N.{gate,up,down}_proj.weight``
(what transformers 5.x writes for Qwen3.5-MoE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rename:
    """A checkpoint name fragment and the module name fragment it becomes (``*`` = a number)."""

    checkpoint: str
    ours: str


PREFIXES_5X = (Rename("model.visual.", "visual."), Rename("model.language_model.", "model."))
_QWEN2_MERGER = (
    Rename("visual.merger.ln_q.", "visual.merger.norm."),
    Rename("visual.merger.mlp.0.", "visual.merger.linear_fc1."),
    Rename("visual.merger.mlp.2.", "visual.merger.linear_fc2."),
)
_QWEN2_VIT_MLP = (
    Rename("visual.blocks.*.mlp.fc1.", "visual.blocks.*.mlp.linear_fc1."),
    Rename("visual.blocks.*.mlp.fc2.", "visual.blocks.*.mlp.linear_fc2."),
)
TABLES: dict[str, tuple[Rename, ...]] = {
    "qwen2_vl": _QWEN2_MERGER + _QWEN2_VIT_MLP,
    "qwen2_5_vl": _QWEN2_MERGER,  # its ViT MLP is gate/up/down_proj, as ours
    "qwen3_vl": (),  # module names are the Qwen3-VL checkpoint names
    "qwen3_vl_moe": (),
    "qwen3_5": (),
    "qwen3_5_moe": (),
    # Qwen-VL: the original remote code's names (Qwen-7B decoder under "transformer.", its ViT +
    # Resampler under "transformer.visual." keeping their own names).  c_attn is fused q/k/v:
    # renamed to qkv_proj here, split by split_fused_qkv.  The MLP computes w1(x) * silu(w2(x)).
    "qwen_vl": (
        Rename("transformer.wte.", "model.embed_tokens."),
        Rename("transformer.ln_f.", "model.norm."),
        Rename("transformer.h.*.ln_1.", "model.layers.*.input_layernorm."),
        Rename("transformer.h.*.ln_2.", "model.layers.*.post_attention_layernorm."),
        Rename("transformer.h.*.attn.c_attn.", "model.layers.*.self_attn.qkv_proj."),
        Rename("transformer.h.*.attn.c_proj.", "model.layers.*.self_attn.o_proj."),
        Rename("transformer.h.*.mlp.w1.", "model.layers.*.mlp.up_proj."),
        Rename("transformer.h.*.mlp.w2.", "model.layers.*.mlp.gate_proj."),
        Rename("transformer.h.*.mlp.c_proj.", "model.layers.*.mlp.down_proj."),
        Rename("transformer.visual.", "visual."),
    ),
}


# Tensors a family's released checkpoints carry that the model does not use, skipped on load as
# transformers skips them: Qwen3.5's multi-token-prediction head (``mtp.*``).
UNUSED: dict[str, tuple[str, ...]] = {"qwen3_5": ("mtp.",), "qwen3_5_moe": ("mtp.",)}


def unused(name: str, model_type: str | None) -> bool:
    return bool(model_type) and name.startswith(UNUSED.get(model_type, ()))


def _regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\*", r"(\d+)"))


def _apply(name: str, source: str, target: str) -> str:
    match = _regex(source).match(name)
    if not match:
        return name
    out = target
    for number in match.groups():
        out = out.replace("*", number, 1)
    return out + name[match.end():]


def canonical_name(name: str, model_type: str | None = None) -> str:
    """Our module name for a checkpoint tensor name (5.x prefixes undone, then the family's table)."""
    for rename in PREFIXES_5X:
        name = _apply(name, rename.checkpoint, rename.ours)
    for rename in TABLES.get(model_type, ()) if model_type else ():
        name = _apply(name, rename.checkpoint, rename.ours)
    return name


_FUSED_QKV = re.compile(r"^(.*\.self_attn)\.qkv_proj\.(\w+)$")
# How each tensor of a fused q/k/v layer splits into three: along the output rows of a float
# weight or bias, along the output columns of GPTQ / AWQ packed tensors (qweight (in, out),
# qzeros (groups, out * bits / 32), scales (groups, out)); g_idx (one group per input) is shared.
_QKV_SPLIT_DIM = {"weight": 0, "bias": 0, "qweight": 1, "qzeros": 1, "scales": 1, "g_idx": None}


def split_fused_qkv(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split every fused ``self_attn.qkv_proj`` (Qwen-VL's ``c_attn``: [q; k; v]) into q/k/v_proj,
    float or GPTQ/AWQ-packed."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        match = _FUSED_QKV.match(name)
        if not match:
            out[name] = tensor
            continue
        prefix, kind = match.groups()
        if kind not in _QKV_SPLIT_DIM:
            raise ValueError(f"{name}: cannot split a fused q/k/v tensor of kind {kind!r}")
        dim = _QKV_SPLIT_DIM[kind]
        if dim is not None and tensor.shape[dim] % 3:
            raise ValueError(f"{name}: fused q/k/v with {tensor.shape[dim]} outputs (not a multiple of 3)")
        parts = (tensor,) * 3 if dim is None else tensor.chunk(3, dim=dim)
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), parts):
            out[f"{prefix}.{part}.{kind}"] = chunk.contiguous()
    return out


def checkpoint_name(name: str, model_type: str) -> str:
    """The flat checkpoint name of one of our tensors (for error messages)."""
    if model_type == "qwen_vl":  # q/k/v come from one fused tensor
        name = re.sub(r"\.self_attn\.[qkv]_proj\.", ".self_attn.qkv_proj.", name)
    for rename in TABLES.get(model_type, ()):
        name = _apply(name, rename.ours, rename.checkpoint)
    return name


_PER_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def fuse_experts(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Bring MoE expert tensors to our fused layout (see the module docstring); others untouched."""
    out: dict[str, torch.Tensor] = {}
    per_expert: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        match = _PER_EXPERT.match(name)
        if match:
            prefix, index, kind = match.groups()
            per_expert.setdefault(prefix, {}).setdefault(kind, {})[int(index)] = tensor
            continue
        out[name] = tensor
    for name in [n for n in out if n.endswith(".experts.down_proj")]:
        prefix = name[: -len("down_proj")]
        if _stored_transposed(out, expected, prefix):
            for part in ("gate_up_proj", "down_proj"):
                if prefix + part in out:
                    out[prefix + part] = out[prefix + part].transpose(1, 2).contiguous()
    for prefix, kinds in per_expert.items():
        counts = {kind: len(parts) for kind, parts in kinds.items()}
        if set(kinds) != {"gate_proj", "up_proj", "down_proj"} or len(set(counts.values())) != 1:
            raise ValueError(f"{prefix}: incomplete per-expert weights {counts}")
        n = counts["down_proj"]
        if any(sorted(parts) != list(range(n)) for parts in kinds.values()):
            raise ValueError(f"{prefix}: expert numbers are not 0..{n - 1}")
        gate = torch.stack([kinds["gate_proj"][i] for i in range(n)])
        up = torch.stack([kinds["up_proj"][i] for i in range(n)])
        out[prefix + ".gate_up_proj"] = torch.cat([gate, up], dim=1)
        out[prefix + ".down_proj"] = torch.stack([kinds["down_proj"][i] for i in range(n)])
    return out


def _stored_transposed(tensors: dict, expected: dict, prefix: str) -> bool:
    """Whether a layer's fused experts are stored (E, D, 2I) / (E, I, D).

    Decided by whichever of the two tensors has an unambiguous shape (with D == 2I the
    gate_up shape alone cannot tell; transformers then assumes it is not transposed).
    """
    for part in ("down_proj", "gate_up_proj"):
        have, want = tensors.get(prefix + part), expected.get(prefix + part)
        if have is None or want is None or have.ndim != 3 or want[1] == want[2]:
            continue
        return have.shape != want and have.transpose(1, 2).shape == want
    return False
