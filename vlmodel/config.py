"""Model configuration read from a checkpoint's ``config.json``.

Two layouts exist in the wild and both are accepted:

* the *flat* hub layout of the released Qwen2-VL / Qwen2.5-VL checkpoints: text-model
  fields at the top level, a nested ``vision_config``, ``rope_scaling = {"type": "mrope",
  "mrope_section": [...]}``, vision fields such as ``in_chans``;
* the *nested* layout written by recent transformers (4.5x and 5.x): a ``text_config``
  and a ``vision_config``, and in 5.x ``rope_parameters`` instead of ``rope_scaling``.

Everything is normalised into three small dataclasses so the model code never has to
care which layout a checkpoint used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


class ConfigError(ValueError):
    """``config.json`` is missing, unreadable, or describes an unsupported model."""


@dataclass
class VisionConfig:
    """The ViT: patch embedding, ``depth`` blocks, then a 2x2 PatchMerger into text width."""

    family: str
    depth: int
    width: int  # ViT hidden size ("embed_dim" in Qwen2-VL, "hidden_size" in Qwen2.5-VL)
    num_heads: int
    mlp_dim: int  # MLP hidden size
    out_dim: int  # merger output = text hidden size
    hidden_act: str
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    # Qwen2.5-VL only: windowed attention except in the listed full-attention blocks.
    window_size: int = 0
    fullatt_block_indexes: list[int] = field(default_factory=list)
    tokens_per_second: float = 2.0

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch as produced by the processor (C * T * P * P)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclass
class TextConfig:
    """The Qwen2 decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: list[int]  # rotary frequencies given to the (t, h, w) position axes
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


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


def _parse(raw: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(f"config.json: model_type {model_type!r} is not one of {FAMILIES}")
    text_raw = raw.get("text_config") or raw  # nested layout, else the flat hub layout
    vision_raw = raw.get("vision_config")
    if not isinstance(vision_raw, dict):
        raise ConfigError("config.json: missing 'vision_config'")
    return ModelConfig(
        model_type=model_type,
        text=_parse_text(text_raw, raw),
        vision=_parse_vision(vision_raw, model_type),
        image_token_id=int(raw.get("image_token_id", 151655)),
        video_token_id=int(raw.get("video_token_id", 151656)),
        vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
        eos_token_id=_as_list(raw.get("eos_token_id", text_raw.get("eos_token_id"))),
    )


def _parse_text(t: dict[str, Any], top: dict[str, Any]) -> TextConfig:
    where = "text_config." if t is not top else ""
    # transformers 5.x folds rope_theta and mrope_section into "rope_parameters".
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (only default M-RoPE)")
    if t.get("use_sliding_window"):
        raise ConfigError("config.json: use_sliding_window=true is not supported")
    hidden = int(_require(t, "hidden_size", where))
    heads = int(_require(t, "num_attention_heads", where))
    section = [int(s) for s in rope.get("mrope_section", [])]
    if not section:
        raise ConfigError("config.json: rope_scaling/rope_parameters has no 'mrope_section'")
    if sum(section) * 2 != hidden // heads:
        raise ConfigError(f"config.json: mrope_section {section} must sum to head_dim/2 = {hidden // heads // 2}")
    tie = t.get("tie_word_embeddings", top.get("tie_word_embeddings", False))
    return TextConfig(
        vocab_size=int(_require(t, "vocab_size", where)),
        hidden_size=hidden,
        intermediate_size=int(_require(t, "intermediate_size", where)),
        num_layers=int(_require(t, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=int(t.get("num_key_value_heads") or heads),
        rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1000000.0))),
        mrope_section=section,
        hidden_act=t.get("hidden_act", "silu"),
        tie_word_embeddings=bool(tie),
    )


def _parse_vision(v: dict[str, Any], family: str) -> VisionConfig:
    common = dict(
        family=family,
        depth=int(_require(v, "depth", "vision_config.")),
        num_heads=int(_require(v, "num_heads", "vision_config.")),
        in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
        patch_size=int(v.get("patch_size", v.get("spatial_patch_size", 14))),
        temporal_patch_size=int(v.get("temporal_patch_size", 2)),
        spatial_merge_size=int(v.get("spatial_merge_size", 2)),
    )
    if family == "qwen2_vl":
        width = int(_require(v, "embed_dim", "vision_config."))
        return VisionConfig(
            width=width,
            mlp_dim=int(width * float(v.get("mlp_ratio", 4))),
            out_dim=int(_require(v, "hidden_size", "vision_config.")),
            hidden_act=v.get("hidden_act", "quick_gelu"),
            **common,
        )
    return VisionConfig(
        width=int(_require(v, "hidden_size", "vision_config.")),
        mlp_dim=int(_require(v, "intermediate_size", "vision_config.")),
        out_dim=int(_require(v, "out_hidden_size", "vision_config.")),
        hidden_act=v.get("hidden_act", "silu"),
        window_size=int(v.get("window_size", 112)),
        fullatt_block_indexes=[int(i) for i in v.get("fullatt_block_indexes", [7, 15, 23, 31])],
        tokens_per_second=float(v.get("tokens_per_second", 2)),
        **common,
    )
