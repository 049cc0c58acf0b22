"""Qwen-VL's grounding round trip against the original tokenizer's stored outputs: boxes with
their refs, the latest picture, the pixel boxes draw_bbox_on_latest_picture draws, and our draw."""

from __future__ import annotations

import pytest
from PIL import Image

from _qwen_vl_fixtures import IMAGES, cases, reference
from vlutils import grounding
from vlutils.errors import InvalidMessageError


def test_boxes_refs_pixels_and_latest_picture_equal_the_original():
    pairs = list(zip(cases()["grounding"], reference()["grounding"]))
    assert len(pairs) >= 30
    for case, ref in pairs:
        boxes = grounding.qwen_vl_boxes(case["response"])
        assert [list(b["box"]) for b in boxes] == [b["box"] for b in ref["boxes"]]
        assert [b["label"] for b in boxes] == [b.get("ref") for b in ref["boxes"]]
        pixels = grounding.pixel_boxes(boxes, tuple(case["size"]))
        assert [list(b["box"]) for b in pixels] == ref["pixel_boxes"]
        assert grounding.latest_picture(case["response"], [tuple(h) for h in case["history"]]) == ref["latest_picture"]


def test_round_trip_draws_each_box_on_the_latest_picture():
    """Box written by the model -> original pixels -> drawn: the outline is at those pixels."""
    path = IMAGES / "rgb_9.jpg"
    size = Image.open(path).size
    response = "<ref>dog</ref><box>(100,200),(600,900)</box> and <box>(10,10),(50,60)</box>"
    history = [(f"Picture 1: <img>{path}</img>\nWhere is the dog?", None)]
    drawn = grounding.draw_on_latest_picture(response, history, line_width=3)
    assert drawn is not None and drawn.size == size
    x1, y1, x2, y2 = int(100 / 1000 * size[0]), int(200 / 1000 * size[1]), int(600 / 1000 * size[0]), int(900 / 1000 * size[1])
    color = grounding.label_color("dog")
    for x, y in ((x1, (y1 + y2) // 2), (x2, (y1 + y2) // 2), ((x1 + x2) // 2, y2)):
        assert drawn.getpixel((x, y)) == color
    assert drawn.getpixel((int(10 / 1000 * size[0]), 40)) == grounding.label_color(None)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": "Box it"}]},
                {"role": "assistant", "content": response}]
    again = grounding.draw_on_latest_picture(response, messages, line_width=3)
    assert again.tobytes() == drawn.tobytes()


def test_nothing_to_draw_and_bad_answers():
    assert grounding.draw_on_latest_picture("no boxes", [("Picture 1: <img>x.png</img>\n", None)]) is None
    assert grounding.draw_on_latest_picture("<box>(1,2),(3,4)</box>", []) is None
    assert grounding.qwen_vl_boxes("<box>(1,2),(3)</box><box>(1,2),(3,4)</box>") == [{"box": (1, 2, 3, 4), "label": None}]
    with pytest.raises(InvalidMessageError, match="unclosed <ref>"):
        grounding.qwen_vl_boxes("<ref>dog<box>(1,2),(3,4)</box>")


def test_box_items_from_pixels_go_through_to_model():
    from vlutils.chat_qwen_vl import conversation_turns

    pixels = [[100, 50, 300, 150], [0, 0, 999.6, 500]]
    item = grounding.box_item(pixels, (1000, 500), ref="dog")
    model = grounding.to_model([{"box": b} for b in pixels], "qwen_vl", image_size=(1000, 500))
    assert item == {"type": "box", "box": [list(o["box"]) for o in model], "ref": "dog"}
    assert item["box"] == [[100, 100, 300, 300], [0, 0, 999, 999]]
    text = conversation_turns([{"role": "user", "content": [item]}]).turns[0][1]
    assert text == "<ref>dog</ref><box>(100,100),(300,300)</box><box>(0,0),(999,999)</box>"
