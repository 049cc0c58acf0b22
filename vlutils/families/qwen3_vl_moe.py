"""Qwen3-VL-MoE (``qwen3_vl_moe``): the inputs of Qwen3-VL."""

from .moe import moe_variant
from .qwen3_vl import FAMILY as QWEN3_VL

FAMILY = moe_variant(QWEN3_VL, "qwen3_vl_moe", "Qwen3-VL-MoE")
