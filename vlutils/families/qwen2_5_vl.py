"""Qwen2.5-VL (``qwen2_5_vl``): Qwen2-VL's preprocessing and template; a video's temporal
ids advance with time (``second_per_grid_ts * tokens_per_second``); boxes in JSON, in
absolute pixels of the resized image the model saw."""

from ..chat_qwen2 import DEFAULT_SYSTEM_PROMPT, format_qwen2, format_qwen2_with_spans
from .base import CLIP_MEAN, CLIP_STD, ChatFormat, Family, GroundingStyle, VisionPreset

FAMILY = Family(
    model_type="qwen2_5_vl",
    title="Qwen2.5-VL",
    uses=frozenset({"inputs", "train", "prepare", "grounding"}),
    vision=VisionPreset(patch_size=14, image_mean=CLIP_MEAN, image_std=CLIP_STD),
    chat=ChatFormat(format_qwen2, format_qwen2_with_spans, DEFAULT_SYSTEM_PROMPT),
    position_ids="mrope_timed",
    video_timestamps="second_per_grid_ts",
    # Its process_bbox clamps to [0, resized side - 1]: pixels, no fixed grid.
    grounding=GroundingStyle("json", None, None),
)
