"""Grounding for every Qwen-VL generation: parse boxes and points from an answer, map them to
image pixels and back, write them as training labels, and draw them.

Conventions (checked against QwenLM's code: Qwen-VL's ``tokenization_qwen.py``
``draw_bbox_on_latest_picture``, the Qwen2.5-VL and Qwen3-VL ``spatial_understanding`` /
``2d_grounding`` cookbooks, and ``qwen-vl-finetune/tools/process_bbox.ipynb``)::

    model_type  answer syntax                                            model frame
    qwen_vl     <ref>a</ref><box>(x1,y1),(x2,y2)</box>                   0-1000 relative
    qwen2_vl    <|object_ref_start|>a<|object_ref_end|>
                <|box_start|>(x1,y1),(x2,y2)<|box_end|>                  0-1000 relative
    qwen2_5_vl  [{"bbox_2d": [x1, y1, x2, y2], "label": "a"}],           absolute pixels of the
                {"point_2d": [x, y]}, <points x1=.. y1=.. alt=..>        smart-resized image
    qwen3_vl    same JSON keys                                           0-1000 relative
    qwen3_5     same JSON keys                                           0-1000 relative

Pixels of the original image (``W, H`` = its upright size as vlutils feeds it, i.e. after
EXIF orientation; ``Wr, Hr`` = the resized size the model saw)::

    relative:    x_px = x / 1000 * W          y_px = y / 1000 * H          (to_image, exact floats)
                 x = round(x_px / W * 1000)   clamped to [0, 1000]         (to_model; [0, 999] for qwen_vl)
    qwen2_5_vl:  x_px = x / Wr * W            y_px = y / Hr * H
                 x = round(x_px / W * Wr)     clamped to [0, Wr - 1]

The cookbooks truncate with ``int()`` when drawing; ``to_image`` keeps the exact value (less
than a pixel apart). ``round`` is Python's (half to even), as in QwenLM's tools. One model unit
is ``quantisation_step`` pixels, so ``to_image(to_model(p))`` is within half a step of ``p``
(a full step where clamping bites). ``parse`` keeps corners as written; ``to_image`` and
``to_model`` return them ordered (x1 <= x2, y1 <= y2), as the cookbooks do before drawing.

Typical use::

    from vlutils import grounding
    objs = grounding.parse(answer, "qwen2_5_vl")
    objs = grounding.to_image(objs, "qwen2_5_vl", image_size=original.size, resized_size=images[0].size)
    grounding.draw(original, objs).save("out.png")

Qwen-VL's own round trip (``draw_bbox_on_latest_picture``: boxes with their refs, the latest
picture of the conversation, ``int(v / 1000 * side)`` pixels) is :mod:`vlutils.grounding.qwen_vl`.

Command line: ``python -m vlutils.grounding IMAGE --model-type T --answer TEXT --out out.png``.
"""

from .conventions import CONVENTIONS, MODEL_TYPES, get_convention, quantisation_step, to_image, to_model
from .drawing import PALETTE, draw, label_color
from .parsing import parse
from .qwen_vl import box_item, draw_on_latest_picture, latest_picture, pixel_boxes, qwen_vl_boxes
from .sizes import model_input_size, resized_size_from_grid, upright_size
from .writer import format  # noqa: A004 (the issue names it format)

__all__ = [
    "CONVENTIONS", "MODEL_TYPES", "PALETTE", "draw", "format", "get_convention", "label_color",
    "model_input_size", "parse", "quantisation_step", "resized_size_from_grid", "to_image",
    "to_model", "upright_size", "box_item", "draw_on_latest_picture", "latest_picture", "pixel_boxes", "qwen_vl_boxes",
]
