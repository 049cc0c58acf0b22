"""Qwen-VL / Qwen-VL-Chat (``qwen_vl``), the first generation.

So far only its grounding convention is known here: ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>``
on a 0-1000 grid, written in [0, 999] (the Qwen-VL paper normalises to [0, 1000)). Its inputs
(a 448x448 image transform, its own tokenizer and prompt, 1-D positions) are a different
pipeline; whoever adds them fills in this module's ``vision`` / ``chat`` / ``uses``.
"""

from .base import Family, GroundingStyle

FAMILY = Family(
    model_type="qwen_vl",
    title="Qwen-VL",
    uses=frozenset({"grounding"}),
    grounding=GroundingStyle("tags", 1000, 999, ("<ref>", "</ref>", "<box>", "</box>")),
    media=frozenset({"image"}),
)
