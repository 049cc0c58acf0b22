"""Qwen3-VL (``qwen3_vl``): patch 16 with mean = std = 0.5, no default system prompt, each
video frame pair its own position block after a ``<t seconds>`` text timestamp, boxes in
JSON on a 0-1000 grid."""

from ..chat_qwen2 import format_qwen2, format_qwen2_with_spans
from .base import ChatFormat, Family, GroundingStyle, VisionPreset

FAMILY = Family(
    model_type="qwen3_vl",
    title="Qwen3-VL",
    uses=frozenset({"inputs", "train", "prepare", "grounding"}),
    vision=VisionPreset(patch_size=16, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
    chat=ChatFormat(format_qwen2, format_qwen2_with_spans, None),
    position_ids="mrope_per_frame",
    video_timestamps="text",
    grounding=GroundingStyle("json", 1000, 1000),
)
