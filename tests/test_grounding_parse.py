"""vlutils.grounding.parse on real-looking model answers, cut-off lists, near-misses and any text.

The corpus imitates what the models print (shapes taken from the QwenLM cookbooks, model cards
and issue threads); expected objects are written out by hand.
"""

from __future__ import annotations

import ast
import importlib
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlutils import grounding
from vlutils.errors import InvalidOptionError

parse_module = importlib.import_module("vlutils.grounding.parsing")
PROFILE = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def B(label, x1, y1, x2, y2, **extra):
    obj = {"label": label, "box": (x1, y1, x2, y2)}
    if extra:
        obj["extra"] = extra
    return obj


def P(label, x, y):
    return {"label": label, "point": (x, y)}


CORPUS = [
    # Qwen-VL model card / README
    ("qwen_vl", "<ref>击掌</ref><box>(536,509),(588,602)</box>", [B("击掌", 536, 509, 588, 602)]),
    ("qwen_vl", "图中<ref> 女子 </ref><box>(215,402),(490,860)</box>和<ref>狗</ref><box>(600,380),(820,870)</box>。",
     [B("女子", 215, 402, 490, 860), B("狗", 600, 380, 820, 870)]),
    ("qwen_vl", "<ref>apples</ref><box>(10,20),(30,40)</box><box>(50,60),(70,80)</box>, <box>(1,2),(3,4)</box>",
     [B("apples", 10, 20, 30, 40), B("apples", 50, 60, 70, 80), B("apples", 1, 2, 3, 4)]),
    ("qwen_vl", "<ref>a</ref><box>(10,20),(30,40)</box>\nThere is also <box>(5,6),(7,8)</box>",
     [B("a", 10, 20, 30, 40), B(None, 5, 6, 7, 8)]),
    ("qwen_vl", "<ref>a</ref>\n<box>(10,20),(30,40)</box>\n<box>(5,6),(7,8)</box><ref> </ref><box>(1,2),(3,4)</box>",
     [B("a", 10, 20, 30, 40), B("a", 5, 6, 7, 8), B(None, 1, 2, 3, 4)]),
    ("qwen_vl", "<box>(10,20),(3O,40)</box><ref>b</ref><box>(1,2),(3,4)</box>", [B("b", 1, 2, 3, 4)]),
    ("qwen_vl", "<ref>cut</ref><box>(10,20),(30,", []),
    # Qwen2-VL: special tokens kept, stripped (skip_special_tokens=True), several boxes, spaces
    ("qwen2_vl", "<|object_ref_start|>击掌<|object_ref_end|><|box_start|>(531,516),(581,596)<|box_end|><|im_end|>",
     [B("击掌", 531, 516, 581, 596)]),
    ("qwen2_vl", "击掌(531,516),(581,596)", [B(None, 531, 516, 581, 596)]),
    ("qwen2_vl", "<|object_ref_start|>Popup close button<|object_ref_end|><|box_start|>(1769, 1013), (1778, 1027)"
     "<|box_end|>\n<|object_ref_start|>Popup close button<|object_ref_end|><|box_start|>(483, 954), (519, 987)<|box_end|>",
     [B("Popup close button", 1769, 1013, 1778, 1027), B("Popup close button", 483, 954, 519, 987)]),
    ("qwen2_vl", "<|object_ref_start|>apple<|object_ref_end|><|box_start|>(475,318),(492,337), (620,279),(631,301)<|box_end|>",
     [B("apple", 475, 318, 492, 337), B("apple", 620, 279, 631, 301)]),
    ("qwen2_vl", "Action: click(start_box='<|box_start|>(371,60)<|box_end|>')", [P(None, 371, 60)]),
    ("qwen2_vl", "The dog is on the left.", []),
    # Qwen2.5-VL cookbook answers (absolute pixels of the resized image)
    ("qwen2_5_vl", '```json\n[\n\t{"bbox_2d": [135, 114, 864, 636], "label": "dog"},\n\t'
     '{"bbox_2d": [22, 40, 101, 133], "label": "cake"}\n]\n```',
     [B("dog", 135, 114, 864, 636), B("cake", 22, 40, 101, 133)]),
    ("qwen2_5_vl", 'Sure! Here are the boxes:\n```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```\nand the '
     'rest:\n```json\n[{"bbox_2d": [5, 6, 7, 8], "label": "b"}]\n```\nHope this helps {really}.',
     [B("a", 1, 2, 3, 4), B("b", 5, 6, 7, 8)]),
    ("qwen2_5_vl", '```json\n[\n\t{"bbox_2d": [10, 20, 30, 40], "label": "cake 1"},\n\t{"bbox_2d": [50, 60, 70, 80], '
     '"label": "cake 2"},\n\t{"bbox_2d": [90, 100, 1', [B("cake 1", 10, 20, 30, 40), B("cake 2", 50, 60, 70, 80)]),
    ("qwen2_5_vl", '[{"bbox_2d": [10, 20, 30, 40], "label": "x"}, {"bbox_2d": [50, 60, 70, 80], "label": "unfinish',
     [B("x", 10, 20, 30, 40)]),
    ("qwen2_5_vl", '{"bbox_2d": [10.5, 20.25, 30, 40], "label": "floaty", "text_content": "SALE", "score": 0.9}',
     [B("floaty", 10.5, 20.25, 30, 40)]),
    ("qwen2_5_vl", "[{'bbox_2d': [1, 2, 3, 4], 'label': 'single'}, {'point_2d': [5, 6], 'label': 'quotes'}]",
     [B("single", 1, 2, 3, 4), P("quotes", 5, 6)]),
    ("qwen2_5_vl", '[{"bbox_2d": [10, 20, 30], "label": "three"}, {"bbox_2d": [1, 2, "3x", 4], "label": "str"}, '
     '{"bbox_2d": [1, 2, 3, 4, 5]}, {"bbox_2d": [1, 2, 3, true]}, {"bbox_2d": [1e999, 2, 3, 4]}, '
     '{"bbox_2d": [1, 2, 3, 4]}]', [B(None, 1, 2, 3, 4)]),
    ("qwen2_5_vl", '[{"bbox_2d": [1, 2, 3, 4],, "label": "trailing"}, {"point_2d": [7, 8], "label": "ok"},]',
     [P("ok", 7, 8)]),
    ("qwen2_5_vl", '{"bbox_2d": [[10, 20], [30, 40]], "label": "pairs"}', [B("pairs", 10, 20, 30, 40)]),
    ("qwen2_5_vl", '{"bbox_2d": [30, 40, 10, 20], "label": "swapped"}', [B("swapped", 30, 40, 10, 20)]),
    ("qwen2_5_vl", '<points x1="120" y1="340" x2="400.5" y2="88" alt="cakes">cakes</points>',
     [P("cakes", 120, 340), P("cakes", 400.5, 88)]),
    ("qwen2_5_vl", '{"objects": [{"bbox_2d": [1, 2, 3, 4], "label": 7}], "count": 1}', [B("7", 1, 2, 3, 4)]),
    ("qwen2_5_vl", "I could not find any cat in this image.", []),
    ("qwen2_5_vl", "", []),
    # Qwen3-VL / Qwen3.5 (0-1000), including reasoning output
    ("qwen3_vl", '```json\n[\n  {"bbox_2d": [74, 361, 324, 808], "label": "person"},\n  {"point_2d": [500, 500], '
     '"label": "center"}\n]\n```', [B("person", 74, 361, 324, 808), P("center", 500, 500)]),
    ("qwen3_vl", '[{"point_2d": [12, 34]}, {"point_2d": [1, 2, 3]}, {"point_2d": [5, 6], "label": null}]',
     [P(None, 12, 34), P(None, 5, 6)]),
    ("qwen3_5", 'Let me look.\n{"bbox_2d": [0, 0, 10, 10], "label": "draft"}\n</think>\n\n```json\n'
     '[{"bbox_2d": [100, 200, 300, 400], "label": "final"}]\n```', [B("final", 100, 200, 300, 400)]),
    ("qwen3_5", '<think>\nmaybe {"bbox_2d": [0, 0, 10, 10], "label": "draft"} and then', []),
    ("qwen3_5", '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]<|im_end|>', [B("a", 1, 2, 3, 4)]),
]


@pytest.mark.parametrize("model_type,text,expected", CORPUS)
def test_corpus(model_type, text, expected):
    assert grounding.parse(text, model_type) == expected


@pytest.mark.parametrize("model_type", grounding.MODEL_TYPES)
def test_every_cut_keeps_exactly_the_complete_objects(model_type):
    """A list cut off by max_new_tokens at any character gives the objects written so far."""
    objs = [B("dog", 10, 20, 300, 400), B("dog", 30, 40, 50, 60), B("a cat", 700, 800, 900, 999)]
    if model_type not in ("qwen_vl", "qwen2_vl"):
        objs.append(P("ball", 5, 6))
    text = grounding.format(objs, model_type)
    assert grounding.parse(text, model_type) == objs
    previous = []
    for cut in range(len(text) + 1):
        got = grounding.parse(text[:cut], model_type)
        assert got == objs[:len(got)], (cut, text[:cut], got)
        assert len(got) >= len(previous)
        previous = got
    assert previous == objs


def cookbook_parse(text: str) -> list:
    """The Qwen2.5-VL / Qwen3-VL cookbooks' reading of an answer, restated: strip the first
    ```json fence, ``ast.literal_eval``, and on failure cut after the last '"}' and close with ']'."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line == "```json":
            text = "\n".join(lines[i + 1:]).split("```")[0]
            break
    try:
        data = ast.literal_eval(text)
    except Exception:
        data = ast.literal_eval(text[:text.rfind('"}') + len('"}')] + "]")
    return data if isinstance(data, list) else [data]


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_agrees_with_the_cookbook_reader_wherever_it_reads(model_type):
    objs = [B("dog", 10, 20, 300, 400), P("ball", 5, 6), B("a cat", 700, 800, 900, 999), B("cake", 1, 2, 3, 4)]
    text = grounding.format(objs, model_type)
    agreed = 0
    for cut in range(len(text) + 1):
        try:
            theirs = cookbook_parse(text[:cut])
        except Exception:
            continue
        expected = [P(o["label"], *o["point_2d"]) if "point_2d" in o else B(o["label"], *o["bbox_2d"]) for o in theirs]
        assert grounding.parse(text[:cut], model_type) == expected, text[:cut]
        agreed += 1
    assert agreed > len(text) // 2


labels = st.one_of(st.none(), st.text(st.characters(blacklist_characters="<>\n\r", blacklist_categories=("Cs",)),
                                      min_size=1, max_size=12).map(str.strip).filter(bool))
coords = st.one_of(st.integers(-50, 5000), st.floats(-50, 5000, allow_nan=False).map(lambda v: round(v, 3)))


@st.composite
def objects(draw, with_points=True):
    kind = draw(st.sampled_from(("box", "point") if with_points else ("box",)))
    values = tuple(draw(coords) for _ in range(4 if kind == "box" else 2))
    return {"label": draw(labels), kind: values}


@settings(PROFILE, max_examples=300)
@given(st.sampled_from(grounding.MODEL_TYPES), st.data())
def test_format_then_parse_gives_the_objects_back(model_type, data):
    objs = data.draw(st.lists(objects(), max_size=6))
    text = grounding.format(objs, model_type)
    assert grounding.parse(text, model_type) == objs
    assert grounding.parse(grounding.format(objs, model_type, fence=False), model_type) == objs


def no_internal_errors():
    """parse's last-resort ``except`` (log and return []) must never be what kept it from raising."""
    return mock.patch.object(parse_module.logger, "exception", side_effect=AssertionError("parse hit a bug"))


@settings(PROFILE, max_examples=500)
@given(st.text(max_size=300), st.sampled_from(grounding.MODEL_TYPES))
def test_parse_never_raises_on_any_text(text, model_type):
    with no_internal_errors():
        result = grounding.parse(text, model_type)
    assert isinstance(result, list)


FRAGMENTS = [
    "{", "}", "[", "]", ",", ":", '"bbox_2d"', '"point_2d"', '"label"', '"a"', "1", "-2", "3.5", "1e999", "NaN",
    "true", "null", '"', "```json\n", "```", "<ref>", "</ref>", "<box>", "</box>", "(", ")", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<points x1=\"1\" y1=\"2\">", "</points>", " ", "\n",
    "</think>", "<think>", "9" * 40, "\\u", "\ud800"[:0] + "é",
]


@settings(PROFILE, max_examples=800)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60), st.sampled_from(grounding.MODEL_TYPES))
def test_parse_never_raises_on_near_misses(pieces, model_type):
    with no_internal_errors():
        result = grounding.parse("".join(pieces), model_type)
    for obj in result:
        assert set(obj) <= {"label", "box", "point", "extra"}
        values = obj.get("box") or obj.get("point")
        assert len(values) in (2, 4) and all(isinstance(v, (int, float)) for v in values)


def test_pathological_inputs_are_fast(caplog):
    import time

    texts = ("{" * 200_000, '{"a":' * 50_000, '{"' * 100_000, "[" * 200_000, "<ref>" * 50_000, "<box>(1," * 30_000,
             '{"bbox_2d": [' + "1," * 100_000, "(1,2),(3," * 30_000, '{"a": [' * 30_000, "<|object_ref_start|>" * 30_000,
             '<points x1="1"' * 30_000, ('{"' + "x" * 9000) * 30)
    for text in texts:
        for model_type in ("qwen2_vl", "qwen3_vl"):
            start = time.perf_counter()
            assert grounding.parse(text, model_type) == []
            assert time.perf_counter() - start < 10, text[:20]  # 19 s before the JSON scan was bounded
    assert "gave up looking for JSON" in caplog.text
    # a long real answer is read completely, however many objects it has
    objs = [B(f"item {i}", i, i + 1, i + 2, i + 3) for i in range(3000)]
    assert grounding.parse(grounding.format(objs, "qwen3_vl"), "qwen3_vl") == objs


def test_extra_keys_on_request_and_back_into_labels():
    text = '[{"bbox_2d": [10, 20, 30, 40], "text_content": "SALE", "score": 0.9}, {"point_2d": [1, 2], "label": "p"}]'
    objs = grounding.parse(text, "qwen2_5_vl", keep_extra=True)
    assert objs == [B(None, 10, 20, 30, 40, text_content="SALE", score=0.9), P("p", 1, 2)]
    assert grounding.parse(grounding.format(objs, "qwen2_5_vl"), "qwen2_5_vl", keep_extra=True) == objs
    assert grounding.to_image(objs, "qwen2_5_vl", (100, 100), (200, 200))[0]["extra"] == {"text_content": "SALE",
                                                                                        "score": 0.9}


def test_non_string_and_unknown_type():
    assert grounding.parse(b'{"bbox_2d": [1, 2, 3, 4]}', "qwen3_vl") == [B(None, 1, 2, 3, 4)]
    with pytest.raises(InvalidOptionError):
        grounding.parse(None, "qwen3_vl")
    with pytest.raises(InvalidOptionError, match="unknown model_type"):
        grounding.parse("x", "gemini")


def test_format_shapes():
    objs = [B("dog", 1, 2, 3, 4), B("dog", 5, 6, 7, 8), B(None, 9, 10, 11, 12), B("cat", 1.5, 2, 3, 4)]
    assert grounding.format(objs, "qwen_vl") == (
        "<ref>dog</ref><box>(1,2),(3,4)</box><box>(5,6),(7,8)</box><ref></ref><box>(9,10),(11,12)</box>"
        "<ref>cat</ref><box>(1.5,2),(3,4)</box>")
    assert grounding.format(objs[:1], "qwen2_vl") == (
        "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>")
    assert grounding.format([B("狗", 1, 2, 3, 4, score=1), P(None, 5, 6)], "qwen2_5_vl") == (
        '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "狗", "score": 1},\n\t{"point_2d": [5, 6]}\n]\n```')
    assert grounding.format([], "qwen3_vl", fence=False) == "[]"
    with pytest.raises(InvalidOptionError, match="object 0"):
        grounding.format([{"label": "x"}], "qwen3_vl")
