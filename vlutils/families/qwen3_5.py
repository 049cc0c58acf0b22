"""Qwen3.5 (``qwen3_5``): Qwen3-VL's preprocessing, position ids, timestamps and grounding,
with its own chat template (thinking blocks, tool calls: :mod:`vlutils.chat_qwen35`)."""

import dataclasses

from ..chat_qwen35 import format_qwen35_chat, format_qwen35_chat_with_spans
from .base import ChatFormat
from .qwen3_vl import FAMILY as QWEN3_VL

FAMILY = dataclasses.replace(
    QWEN3_VL,
    model_type="qwen3_5",
    title="Qwen3.5",
    chat=ChatFormat(format_qwen35_chat, format_qwen35_chat_with_spans, None),
    notes="transformers' Qwen3.5 processor is its Qwen3VLProcessor",
)
