"""Model configuration read from a checkpoint's ``config.json``: a family is a set of fields.

Every architectural difference between Qwen2-VL, Qwen2.5-VL, Qwen3-VL(-MoE) and
Qwen3.5(-MoE) is a field of :class:`TextConfig` or :class:`VisionConfig` (attention
biases, q/k norm, rotary layout, window attention, DeepStack layers, layer types, MoE
shape...).  What ``config.json`` does not spell out (Qwen2's q/k/v bias, which norm the
ViT uses...) comes from the per-family defaults in :data:`FAMILIES`; the model code never
asks which family it is.

Qwen-VL / Qwen-VL-Chat (2023, ``qwen_vl``) keeps its original remote-code layout
(``model_type: "qwen"`` with a ``visual`` dict): :func:`_parse_qwen_vl` maps it onto the same
fields (plus its own: dynamic NTK, log-n scaling, the Resampler's query count).

Layouts accepted: the flat hub layout of the released Qwen2-VL / Qwen2.5-VL checkpoints
(text fields at the top level, ``rope_scaling``), and the nested layout of recent
transformers (``text_config`` / ``vision_config``, 5.x ``rope_parameters``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from vlutils.families import get_family

# Per-family architecture facts that config.json leaves implicit.  Keys are TextConfig/VisionConfig
# fields ("text." / "vision." prefixes).  Input facts (chat template, preprocessing, position ids,
# which dense family a MoE variant takes its inputs from) live in vlutils.families.
_QWEN3_VISION = {"vision.norm": "layernorm", "vision.mlp": "plain", "vision.hidden_act": "gelu_pytorch_tanh",
                 "vision.patch_bias": True, "vision.patch_size": 16, "vision.num_position_embeddings": 2304}
_QWEN3_TEXT = {"text.qk_norm": True, "text.mrope_interleaved": True, "text.qkv_bias": None}
# Qwen3-VL: transformers 5.23's defaults when rope_parameters leaves them out.
_QWEN3_VL_ROPE = {"text.mrope_section": [24, 20, 20], "text.rope_theta": 500000.0}
# Qwen3.5: transformers' defaults when rope_parameters leaves them out (its own configs omit mrope_section).
_QWEN35_TEXT = {"text.norm_zero_centered": True, "text.attn_output_gate": True, "text.partial_rotary_factor": 0.25,
                "text.mrope_section": [11, 11, 10], "text.full_attention_interval": 4}
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"text.qkv_bias": True, "vision.norm": "layernorm", "vision.mlp": "plain",
                 "vision.hidden_act": "quick_gelu"},
    "qwen2_5_vl": {"text.qkv_bias": True, "vision.norm": "rmsnorm", "vision.mlp": "gated",
                   "vision.hidden_act": "silu", "vision.window_size": 112,
                   "vision.fullatt_block_indexes": [7, 15, 23, 31]},
    "qwen3_vl": {**_QWEN3_TEXT, **_QWEN3_VL_ROPE, **_QWEN3_VISION, "vision.deepstack_visual_indexes": [8, 16, 24]},
    "qwen3_vl_moe": {**_QWEN3_TEXT, **_QWEN3_VL_ROPE, **_QWEN3_VISION, "vision.deepstack_visual_indexes": [8, 16, 24]},
    "qwen3_5": {**_QWEN3_TEXT, **_QWEN3_VISION, **_QWEN35_TEXT},
    "qwen3_5_moe": {**_QWEN3_TEXT, **_QWEN3_VISION, **_QWEN35_TEXT},
}
LAYER_TYPES = ("full_attention", "linear_attention")  # token mixers, see vlmodel.decoder.MIXERS


class ConfigError(ValueError):
    """``config.json`` is missing, unreadable, or describes an unsupported model."""


@dataclass
class VisionConfig:
    """The ViT: patch embedding, ``depth`` blocks, then a PatchMerger into the text width."""

    depth: int
    width: int  # ViT hidden size ("embed_dim" in Qwen2-VL, "hidden_size" later)
    num_heads: int
    mlp_dim: int
    out_dim: int  # merger output = text hidden size
    hidden_act: str
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" (block norms and the merger's)
    mlp: str = "plain"  # "plain": fc2(act(fc1 x)); "gated": SwiGLU with biases
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    patch_bias: bool = False  # Conv3d patch embedding bias (Qwen3)
    num_position_embeddings: int = 0  # learned (side x side) position table, resampled per grid (Qwen3)
    window_size: int = 0  # windowed attention except in fullatt_block_indexes (Qwen2.5-VL)
    fullatt_block_indexes: list[int] = field(default_factory=list)
    deepstack_visual_indexes: list[int] = field(default_factory=list)  # blocks feeding extra mergers (Qwen3-VL)
    rope_theta: float = 10000.0
    tokens_per_second: float = 2.0
    image_size: int = 0  # Qwen-VL: every image is resized to image_size x image_size
    num_queries: int = 0  # Qwen-VL: the Resampler's learned queries = tokens per image

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch as produced by the processor (C * T * P * P)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass
class TextConfig:
    """The decoder: one token mixer per layer (``layer_types``), then a dense or MoE MLP."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list[int]  # rotary frequencies given to the (t, h, w) position axes
    mrope_interleaved: bool = False  # Qwen3: frequencies cycle t, h, w instead of contiguous sections
    partial_rotary_factor: float = 1.0  # fraction of head_dim that is rotated (Qwen3.5: 0.25)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE
    attn_output_gate: bool = False  # q_proj also yields a sigmoid gate on the attention output
    norm_zero_centered: bool = False  # RMSNorm weight applied as (1 + w)
    layer_types: list[str] = field(default_factory=list)  # "full_attention" | "linear_attention" per layer
    # MoE (num_experts = 0: dense MLP everywhere)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    # gated DeltaNet (linear_attention layers)
    linear: dict[str, Any] = field(default_factory=dict)
    mlp_bias: bool = False
    # Qwen-VL (Qwen-7B): at inference, prompts longer than seq_length get a larger RoPE base
    # (dynamic NTK, fixed at prefill) and queries past seq_length are scaled by log_seq_length(position)
    use_dynamic_ntk: bool = False
    use_logn_attn: bool = False
    seq_length: int = 0

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)


@dataclass
class ModelConfig:
    model_type: str
    text: TextConfig
    vision: VisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    eos_token_id: list[int] = field(default_factory=list)
    # "merger": a native-resolution ViT whose merged patches fill image placeholder tokens (Qwen2-VL
    # and later, vlmodel.model.VLModel); "resampler": fixed-size images, 256 Resampler vectors after
    # each <img> token (Qwen-VL, vlmodel.qwen_vl.QwenVLModel)
    vision_kind: str = "merger"
    quantization: dict[str, Any] | None = None  # config.json's quantization_config, read by vlmodel.quant

    @property
    def input_type(self) -> str:
        """The ``model_type`` to give vlutils (build_inputs, get_rope_index) for this checkpoint:
        the family's own, or the dense family's whose inputs a MoE variant shares."""
        return get_family(self.model_type).inputs_model_type

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        return _parse(raw)


    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read ``config.json`` (``path`` may be the file or the checkpoint directory)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {path}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        return _parse(raw)


def _require(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"config.json: missing {where}{key!r}")
    return d[key]


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def _defaults(model_type: str, part: str) -> dict[str, Any]:
    return {k.split(".", 1)[1]: v for k, v in FAMILIES[model_type].items() if k.startswith(part + ".")}


def _parse(raw: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type in ("qwen", "qwen_vl") and isinstance(raw.get("visual"), dict):
        return _parse_qwen_vl(raw)
    if model_type not in FAMILIES:
        raise ConfigError(f"config.json: model_type {model_type!r} is not one of {tuple(FAMILIES)}")
    text_raw = raw.get("text_config") or raw  # nested layout, else the flat hub layout
    vision_raw = raw.get("vision_config")
    if not isinstance(vision_raw, dict):
        raise ConfigError("config.json: missing 'vision_config'")
    return ModelConfig(
        model_type=model_type,
        text=_parse_text(text_raw, raw, _defaults(model_type, "text")),
        vision=_parse_vision(vision_raw, _defaults(model_type, "vision")),
        image_token_id=int(raw.get("image_token_id", 151655)),
        video_token_id=int(raw.get("video_token_id", 151656)),
        vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
        eos_token_id=_as_list(raw.get("eos_token_id", text_raw.get("eos_token_id"))),
        quantization=raw.get("quantization_config", text_raw.get("quantization_config")),
    )


def _default_layer_types(layers: int, t: dict[str, Any], family: dict[str, Any]) -> list[str]:
    """Without ``layer_types``: all full attention, or (Qwen3.5) every ``full_attention_interval``-th layer."""
    interval = int(t.get("full_attention_interval", family.get("full_attention_interval", 0)) or 0)
    if not interval:
        return ["full_attention"] * layers
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]


def _parse_text(t: dict[str, Any], top: dict[str, Any], family: dict[str, Any]) -> TextConfig:
    where = "text_config." if t is not top else ""
    # transformers 5.x folds rope_theta, mrope_section (and more) into "rope_parameters".
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (only default M-RoPE)")
    if t.get("use_sliding_window"):
        raise ConfigError("config.json: use_sliding_window=true is not supported")
    hidden = int(_require(t, "hidden_size", where))
    heads = int(_require(t, "num_attention_heads", where))
    head_dim = int(t.get("head_dim") or hidden // heads)
    partial = rope.get("partial_rotary_factor", t.get("partial_rotary_factor", family.get("partial_rotary_factor")))
    partial = float(1.0 if partial is None else partial)
    section = [int(s) for s in rope.get("mrope_section", family.get("mrope_section", []))]
    if not section:
        raise ConfigError("config.json: rope_scaling/rope_parameters has no 'mrope_section'")
    # transformers interleaves by family (Qwen3 classes always, Qwen2 never), whatever the flag in config.json says
    interleaved = bool(family.get("mrope_interleaved", False))
    # interleaved sections only bound which frequencies follow h and w (any sum is valid, as in transformers)
    if len(section) != 3 or (not interleaved and sum(section) * 2 != int(head_dim * partial)):
        half = int(head_dim * partial) // 2
        raise ConfigError(f"config.json: mrope_section {section} must sum to rotary dim / 2 = {half}")
    layers = int(_require(t, "num_hidden_layers", where))
    layer_types = list(t.get("layer_types") or _default_layer_types(layers, t, family))
    if len(layer_types) != layers or any(k not in LAYER_TYPES for k in layer_types):
        raise ConfigError(f"config.json: layer_types {layer_types} must list one of {LAYER_TYPES} per layer ({layers})")
    bias = family.get("qkv_bias")
    attention_bias = bool(t.get("attention_bias", False))
    # transformers 4.x ties by the text config's flag, 5.x by the top-level one.
    first, second = (top, t) if str(top.get("transformers_version", "")).startswith("5.") else (t, top)
    tie = first.get("tie_word_embeddings", second.get("tie_word_embeddings", False))
    return TextConfig(
        vocab_size=int(_require(t, "vocab_size", where)),
        hidden_size=hidden,
        intermediate_size=int(t.get("intermediate_size") or 0),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(t.get("num_key_value_heads") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", t.get("rope_theta", family.get("rope_theta", 1000000.0)))),
        mrope_section=section,
        mrope_interleaved=interleaved,
        partial_rotary_factor=partial,
        hidden_act=t.get("hidden_act", "silu"),
        tie_word_embeddings=bool(tie),
        qkv_bias=attention_bias if bias is None else bias,  # Qwen2: q/k/v always biased, o never
        o_bias=attention_bias if bias is None else False,
        qk_norm=bool(family.get("qk_norm", False)),
        attn_output_gate=bool(family.get("attn_output_gate", False)),
        norm_zero_centered=bool(family.get("norm_zero_centered", False)),
        layer_types=layer_types,
        num_experts=int(t.get("num_experts", t.get("num_local_experts", 0)) or 0),
        num_experts_per_tok=int(t.get("num_experts_per_tok", 0) or 0),
        moe_intermediate_size=int(t.get("moe_intermediate_size", 0) or 0),
        shared_expert_intermediate_size=int(t.get("shared_expert_intermediate_size", 0) or 0),
        decoder_sparse_step=int(t.get("decoder_sparse_step", 1) or 1),
        mlp_only_layers=[int(i) for i in t.get("mlp_only_layers", []) or []],
        linear={k: v for k, v in t.items() if k.startswith("linear_")},
    )


def _parse_vision(v: dict[str, Any], family: dict[str, Any]) -> VisionConfig:
    w = "vision_config."
    if "embed_dim" in v:  # Qwen2-VL names: embed_dim wide, mlp_ratio, hidden_size = text width
        width = int(v["embed_dim"])
        mlp_dim, out_dim = int(width * float(v.get("mlp_ratio", 4))), int(_require(v, "hidden_size", w))
    else:
        width = int(_require(v, "hidden_size", w))
        mlp_dim, out_dim = int(_require(v, "intermediate_size", w)), int(_require(v, "out_hidden_size", w))
    get = lambda key, *alt: next((v[k] for k in (key, *alt) if k in v), family.get(key))  # noqa: E731
    rope = v.get("rope_parameters") or {}
    return VisionConfig(
        depth=int(_require(v, "depth", w)),
        width=width,
        num_heads=int(_require(v, "num_heads", w)),
        mlp_dim=mlp_dim,
        out_dim=out_dim,
        hidden_act=v.get("hidden_act", family["hidden_act"]),
        norm=family["norm"],
        mlp=family["mlp"],
        in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
        patch_size=int(get("patch_size", "spatial_patch_size") or 14),
        temporal_patch_size=int(v.get("temporal_patch_size", 2)),
        spatial_merge_size=int(v.get("spatial_merge_size", 2)),
        patch_bias=bool(family.get("patch_bias", False)),
        num_position_embeddings=int(get("num_position_embeddings") or 0),
        window_size=int(get("window_size") or 0),
        fullatt_block_indexes=[int(i) for i in get("fullatt_block_indexes") or []],
        deepstack_visual_indexes=[int(i) for i in get("deepstack_visual_indexes") or []],
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        tokens_per_second=float(v.get("tokens_per_second", 2)),
    )


# Qwen-VL's tokenizer numbers its special tokens after the BPE ranks: <|endoftext|>, <|im_start|>,
# <|im_end|>, 205 extras, then <ref> </ref> <box> </box> <quad> </quad> <img> </img> <imgpad>.
# config.json names only <img> ("image_start_id"); the others are at these offsets from it.
QWEN_VL_ENDOFTEXT_OFFSET = -214
QWEN_VL_IMAGE_END_OFFSET = 1
QWEN_VL_IMAGE_PAD_OFFSET = 2


def _parse_qwen_vl(raw: dict[str, Any]) -> ModelConfig:
    """The original Qwen-VL / Qwen-VL-Chat ``config.json`` (``model_type: "qwen"`` with a ``visual`` dict).

    The decoder is Qwen-7B's: fused ``c_attn`` with bias, ``c_proj`` biased unless ``no_bias``,
    SwiGLU ``w1``/``w2``/``c_proj`` of ``intermediate_size // 2``, 1-D RoPE (ours with all
    frequencies on the first position axis), dynamic NTK and log-n scaling when enabled.
    """
    v = raw["visual"]
    hidden = int(_require(raw, "hidden_size", ""))
    heads = int(_require(raw, "num_attention_heads", ""))
    kv_channels = int(raw.get("kv_channels", hidden // heads))
    if kv_channels * heads != hidden:
        raise ConfigError(f"config.json: kv_channels * num_attention_heads ({kv_channels} * {heads}) must equal "
                          f"hidden_size {hidden} (the original splits c_attn by hidden_size)")
    output_dim = int(_require(v, "output_dim", "visual."))
    if output_dim != hidden or output_dim % 128:
        raise ConfigError(f"config.json: visual.output_dim {output_dim} must equal hidden_size {hidden} "
                          "and be a multiple of 128 (the Resampler has output_dim // 128 heads)")
    num_queries = int(v.get("n_queries", 256))
    if math.isqrt(num_queries) ** 2 != num_queries:
        raise ConfigError(f"config.json: visual.n_queries {num_queries} must be a square")
    no_bias = bool(raw.get("no_bias", True))
    layers = int(_require(raw, "num_hidden_layers", ""))
    text = TextConfig(
        vocab_size=int(_require(raw, "vocab_size", "")),
        hidden_size=hidden,
        intermediate_size=int(_require(raw, "intermediate_size", "")) // 2,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=kv_channels,
        rms_norm_eps=float(raw.get("layer_norm_epsilon", 1e-6)),
        rope_theta=float(raw.get("rotary_emb_base", 10000)),
        mrope_section=[int(kv_channels * float(raw.get("rotary_pct", 1.0))) // 2, 0, 0],
        partial_rotary_factor=float(raw.get("rotary_pct", 1.0)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=True,
        o_bias=not no_bias,
        mlp_bias=not no_bias,
        layer_types=["full_attention"] * layers,
        use_dynamic_ntk=bool(raw.get("use_dynamic_ntk", False)),
        use_logn_attn=bool(raw.get("use_logn_attn", False)),
        seq_length=int(raw.get("seq_length", 2048)),
    )
    width = int(_require(v, "width", "visual."))
    vision = VisionConfig(
        depth=int(_require(v, "layers", "visual.")),
        width=width,
        num_heads=int(_require(v, "heads", "visual.")),
        mlp_dim=int(width * float(v.get("mlp_ratio", 4.0))),
        out_dim=output_dim,
        hidden_act="gelu",
        patch_size=int(_require(v, "patch_size", "visual.")),
        image_size=int(_require(v, "image_size", "visual.")),
        num_queries=num_queries,
    )
    start = int(_require(v, "image_start_id", "visual."))
    return ModelConfig(
        model_type="qwen_vl",
        text=text,
        vision=vision,
        image_token_id=start + QWEN_VL_IMAGE_PAD_OFFSET,
        video_token_id=-1,  # no videos in this generation
        vision_start_token_id=start,
        vision_end_token_id=start + QWEN_VL_IMAGE_END_OFFSET,
        eos_token_id=_as_list(raw.get("eos_token_id", start + QWEN_VL_ENDOFTEXT_OFFSET)),
        vision_kind="resampler",
        quantization=raw.get("quantization_config"),  # Qwen-VL-Chat-Int4: GPTQ
    )
