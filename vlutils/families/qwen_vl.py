"""Qwen-VL / Qwen-VL-Chat (``qwen_vl``), the first generation (2023).

Its inputs are a pipeline of their own (``pipeline="fixed_span"``, :mod:`vlutils.inputs_qwen_vl`):
the ``qwen.tiktoken`` tokenizer (:func:`vlutils.load_tokenizer`), the original ``make_context`` /
``finetune.py`` prompts (:mod:`vlutils.chat_qwen_vl`), every image resized to 448x448 (bicubic,
CLIP normalisation; patch 14, no merge, no video) and held by a fixed ``<img>`` span of 256
positions, and plain 1-D position ids. Boxes: ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>`` on a
0-1000 grid, written in [0, 999] (the Qwen-VL paper normalises to [0, 1000)).
"""

from ..chat_qwen_vl import DEFAULT_SYSTEM_PROMPT, format_qwen_vl, format_qwen_vl_with_spans
from .base import CLIP_MEAN, CLIP_STD, ChatFormat, Family, GroundingStyle, VisionPreset

FAMILY = Family(
    model_type="qwen_vl",
    title="Qwen-VL",
    uses=frozenset({"inputs", "train", "prepare", "grounding"}),
    vision=VisionPreset(patch_size=14, image_mean=CLIP_MEAN, image_std=CLIP_STD, temporal_patch_size=1, merge_size=1),
    chat=ChatFormat(format_qwen_vl, format_qwen_vl_with_spans, DEFAULT_SYSTEM_PROMPT),
    position_ids="text",
    video_timestamps="none",
    grounding=GroundingStyle("tags", 1000, 999, ("<ref>", "</ref>", "<box>", "</box>")),
    media=frozenset({"image"}),
    pipeline="fixed_span",
)
