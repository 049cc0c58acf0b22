"""Qwen3.5-MoE (``qwen3_5_moe``): the inputs of Qwen3.5."""

from .moe import moe_variant
from .qwen3_5 import FAMILY as QWEN3_5

FAMILY = moe_variant(QWEN3_5, "qwen3_5_moe", "Qwen3.5-MoE")
