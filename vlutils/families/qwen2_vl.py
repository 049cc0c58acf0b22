"""Qwen2-VL (``qwen2_vl``): patch 14 with CLIP normalisation, the default system prompt,
plain M-RoPE (a video's temporal id is its patch index), boxes as special-token tags."""

from ..chat_qwen2 import DEFAULT_SYSTEM_PROMPT, format_qwen2, format_qwen2_with_spans
from .base import CLIP_MEAN, CLIP_STD, ChatFormat, Family, GroundingStyle, VisionPreset

FAMILY = Family(
    model_type="qwen2_vl",
    title="Qwen2-VL",
    uses=frozenset({"inputs", "train", "prepare", "grounding"}),
    vision=VisionPreset(patch_size=14, image_mean=CLIP_MEAN, image_std=CLIP_STD),
    chat=ChatFormat(format_qwen2, format_qwen2_with_spans, DEFAULT_SYSTEM_PROMPT),
    position_ids="mrope",
    video_timestamps="none",
    # QwenLM's process_bbox tool clamps to [0, 1000].
    grounding=GroundingStyle("tags", 1000, 1000,
                             ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>")),
)
