"""Qwen3.5 prompts: vlutils' formatter against the Qwen3.5 chat template (rendered by transformers'
apply_chat_template), and build_inputs with Qwen3.5's special token ids against the Qwen3-VL
processor (the one transformers 5.23 uses for qwen3_5)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from vlutils.chat import format_chat
from vlutils.chat_qwen35 import format_qwen35_parts
from vlutils.errors import InvalidMessageError
from vlutils.inputs import build_inputs
from vlutils.rope import get_rope_index

from _tiny_tokenizer import QWEN35_SPECIAL, tiny_qwen_tokenizer

# The Qwen3.5 checkpoints' chat template (without the `tools` preamble, which format_chat has
# no argument for), written out here as the reference format_chat must reproduce.
QWEN35_TEMPLATE = r"""{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count, is_system_content=false) %}
    {%- if content is string %}{{- content }}
    {%- elif content is iterable and content is not mapping %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if is_system_content %}{{- raise_exception('System message cannot contain images.') }}{%- endif %}
                {%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}
                {%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if is_system_content %}{{- raise_exception('System message cannot contain videos.') }}{%- endif %}
                {%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}
                {%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}{{- item.text }}
            {%- else %}{{- raise_exception('Unexpected item type in content.') }}
            {%- endif %}
        {%- endfor %}
    {%- elif content is none or content is undefined %}{{- '' }}
    {%- else %}{{- raise_exception('Unexpected content type.') }}
    {%- endif %}
{%- endmacro %}
{%- if not messages %}{{- raise_exception('No messages provided.') }}{%- endif %}
{%- if messages[0].role == 'system' %}
    {%- set content = render_content(messages[0].content, false, true)|trim %}
    {{- '<|im_start|>system\n' + content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set content = render_content(message.content, false)|trim %}
        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}
            {%- set ns.multi_step_tool = false %}
            {%- set ns.last_query_index = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if ns.multi_step_tool %}{{- raise_exception('No user query found in messages.') }}{%- endif %}
{%- for message in messages %}
    {%- set content = render_content(message.content, true)|trim %}
    {%- if message.role == "system" %}
        {%- if not loop.first %}{{- raise_exception('System message must be at the beginning.') }}{%- endif %}
    {%- elif message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- set reasoning_content = reasoning_content|trim %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content + '\n</think>\n\n' + content }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls and message.tool_calls is iterable and message.tool_calls is not mapping %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
                {%- if loop.first %}
                    {%- if content|trim %}{{- '\n\n<tool_call>\n<function=' + tool_call.name + '>\n' }}
                    {%- else %}{{- '<tool_call>\n<function=' + tool_call.name + '>\n' }}{%- endif %}
                {%- else %}{{- '\n<tool_call>\n<function=' + tool_call.name + '>\n' }}
                {%- endif %}
                {%- if tool_call.arguments is defined %}
                    {%- for args_name, args_value in tool_call.arguments|items %}
                        {{- '<parameter=' + args_name + '>\n' }}
                        {%- set args_value = args_value | string if args_value is string else args_value | tojson | safe %}
                        {{- args_value }}
                        {{- '\n</parameter>\n' }}
                    {%- endfor %}
                {%- endif %}
                {{- '</function>\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.previtem and loop.previtem.role != "tool" %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if not loop.last and loop.nextitem.role != "tool" %}{{- '<|im_end|>\n' }}
        {%- elif loop.last %}{{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}{{- raise_exception('Unexpected message role.') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}
    {%- else %}{{- '<think>\n' }}
    {%- endif %}
{%- endif %}"""

WORDS = ["Describe", "this", "image.", "  What", "happens?\n", "Compare", "them.", "cat", "é", "\n\n"]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(1, 5)))


def _user(rng: random.Random) -> dict:
    if rng.random() < 0.4:
        return {"role": "user", "content": _text(rng)}
    items = [{"type": "image", "image": "a.png"} for _ in range(rng.randint(0, 2))]
    items += [{"type": "video", "video": "b.mp4"} for _ in range(rng.randint(0, 1))]
    items += [{"type": "text", "text": _text(rng)} for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.2:
        items.append({"image_url": {"url": "https://example.com/c.png"}})
    rng.shuffle(items)
    return {"role": "user", "content": items}


def _assistant(rng: random.Random) -> dict:
    roll = rng.random()
    message = {"role": "assistant", "content": _text(rng)}
    if roll < 0.3:
        message["reasoning_content"] = "\n" + _text(rng) + "\n"
    elif roll < 0.5:
        message["content"] = f"<think>\n{_text(rng)}\n</think>\n\n{_text(rng)}"
    if rng.random() < 0.25:
        calls = [{"function": {"name": "search", "arguments": {"q": _text(rng), "k": rng.randint(1, 9)}}}]
        if rng.random() < 0.5:
            calls.append({"name": "zoom", "arguments": {"box": [1, 2, 3, 4], "note": {"a": "é"}}})
        message["tool_calls"] = calls
        if rng.random() < 0.3:
            message["content"] = ""
    return message


def _conversation(rng: random.Random) -> list[dict]:
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(["Be brief. ", [{"type": "text", "text": " Careful."}]])})
    for turn in range(rng.randint(1, 3)):
        messages.append(_user(rng))
        if turn or rng.random() < 0.7:
            messages.append(_assistant(rng))
            if "tool_calls" in messages[-1]:
                messages += [{"role": "tool", "content": _text(rng)} for _ in range(rng.randint(1, 2))]
                if rng.random() < 0.5:
                    messages.append(_assistant(rng))
    return messages


def _hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tiny_qwen_tokenizer(QWEN35_SPECIAL))


def test_format_chat_matches_the_qwen35_template():
    rng = random.Random(0)
    tok = _hf_tokenizer()
    seen = {"reasoning": 0, "tool": 0, "vision": 0}
    for i in range(120):
        conv = _conversation(rng)
        options = dict(add_generation_prompt=i % 3 != 0, add_vision_id=i % 4 == 0, enable_thinking=i % 5 != 0)
        expected = tok.apply_chat_template(conv, chat_template=QWEN35_TEMPLATE, tokenize=False, **options)
        for model_type in ("qwen3_5", "qwen3_5_moe"):
            assert format_chat(conv, model_type=model_type, **options) == expected, f"conversation {i}"
        seen["reasoning"] += "<think>\n\n" not in expected and "</think>" in expected
        seen["tool"] += "<tool_response>" in expected and "<parameter=" in expected
        seen["vision"] += "<|vision_start|>" in expected
    assert all(n >= 10 for n in seen.values()), seen


def test_parts_mark_each_assistant_output():
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Sure", "reasoning_content": "think"},
    ]
    parts = format_qwen35_parts(conv, add_generation_prompt=False)
    assert "".join(t for t, _ in parts) == format_chat(conv, model_type="qwen3_5", add_generation_prompt=False)
    assert [t for t, reply in parts if reply] == ["Hello<|im_end|>\n", "<think>\nthink\n</think>\n\nSure<|im_end|>\n"]


def test_system_prompt_argument_and_defaults():
    conv = [{"role": "user", "content": "Hi"}]
    assert format_chat(conv, model_type="qwen3_5") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert format_chat(conv, model_type="qwen3_5", system_prompt="Sys", enable_thinking=False) == (
        "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


@pytest.mark.parametrize(
    "messages, words",
    [
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "first message"),
        ([{"role": "system", "content": [{"image": "x"}]}, {"role": "user", "content": "a"}], "system message cannot"),
        ([{"role": "user", "content": [{"audio": "x"}]}], "unknown content item"),
        ([{"role": "assistant", "content": "a"}], "no user query"),
        ([{"role": "critic", "content": "a"}, {"role": "user", "content": "b"}], "unexpected role"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{}"}]}],
         "arguments"),
        ([], "non-empty"),
    ],
)
def test_template_errors_are_typed(messages, words):
    with pytest.raises(InvalidMessageError, match=words):
        format_chat(messages, model_type="qwen3_5")


def test_build_inputs_matches_the_qwen3_vl_processor_with_qwen35_ids():
    """Qwen3.5 prompts with Qwen3.5's token ids: input ids equal transformers' Qwen3VLProcessor
    (used by 5.23 for qwen3_5), pixels equal the qwen3_vl preset, and the positions are
    get_rope_index(model_type="qwen3_5") of those ids."""
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = Qwen2TokenizerFast(tokenizer_object=tiny_qwen_tokenizer(QWEN35_SPECIAL), padding_side="left")
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3, min_pixels=32 * 32, max_pixels=32 * 32 * 10_000
    )
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=Qwen3VLVideoProcessor())
    nrng = np.random.default_rng(7)
    image = Image.fromarray(nrng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8))
    frames = torch.from_numpy(nrng.integers(0, 256, size=(4, 3, 32, 64), dtype=np.uint8))
    meta = {"fps": 30.0, "frames_indices": [0, 15, 30, 45], "total_num_frames": 60}
    convs = [
        [{"role": "user", "content": [{"image": "a"}, {"video": "b"}, {"text": "Same?"}]}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>x</think>Yo"}, {"role": "user", "content": "?"}],
    ]
    texts = [format_chat(c, model_type="qwen3_5") for c in convs]
    expected = processor(text=texts, images=[image], videos=[frames], video_metadata=[meta], do_sample_frames=False,
                         do_resize=False, return_tensors="pt", padding=True)
    ours = build_inputs(convs, tiny_qwen_tokenizer(QWEN35_SPECIAL), "qwen3_5", images=[image], videos=[(frames, meta)])
    as_vl = build_inputs(convs, tiny_qwen_tokenizer(QWEN35_SPECIAL), "qwen3_vl", images=[image], videos=[(frames, meta)])
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["attention_mask"], expected["attention_mask"])
    assert torch.equal(ours["pixel_values"], as_vl["pixel_values"])
    assert torch.equal(ours["video_grid_thw"], expected["video_grid_thw"])
    assert int((ours["input_ids"] == QWEN35_SPECIAL["<|video_pad|>"]).sum()) == 4
    assert torch.equal(ours["mm_token_type_ids"] == 2, ours["input_ids"] == QWEN35_SPECIAL["<|video_pad|>"])
    positions, deltas = get_rope_index(
        ours["input_ids"], ours["image_grid_thw"], ours["video_grid_thw"], ours["attention_mask"], model_type="qwen3_5",
        image_token_id=248056, video_token_id=248057, vision_start_token_id=248053,
    )
    assert torch.equal(positions, ours["position_ids"]) and torch.equal(deltas, ours["rope_deltas"])
    assert "<think>\n" in tok.decode(ours["input_ids"][1]) and ours["input_ids"].shape[0] == 2
