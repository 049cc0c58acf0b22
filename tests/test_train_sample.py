"""build_sample: input ids and positions equal build_inputs', labels equal an independent
computation (turn-by-turn rendering written here + tokenizing prefixes), truncation modes."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from vlutils import build_inputs
from vlutils.errors import InvalidMessageError, SampleTooLongError
from vlutils.train import build_sample

from _tiny_tokenizer import tiny_qwen_tokenizer
from _train_cases import conversation, image

MODEL_TYPES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
TOK = tiny_qwen_tokenizer()


def _ids(text: str) -> list[int]:
    return TOK.encode(text).ids


def _render(messages, model_type, sample):
    """Turn-by-turn ChatML with expanded vision blocks, written independently of vlutils.chat.

    Returns the full text and, per assistant message, (text before its content, text through
    its <|im_end|>)."""
    image_grids = [] if sample["image_grid_thw"] is None else sample["image_grid_thw"].tolist()
    video_grids = [] if sample["video_grid_thw"] is None else sample["video_grid_thw"].tolist()
    counters = {"image": 0, "video": 0}
    timestamps = sample.pop("_timestamps", None)

    def block(kind):
        i = counters[kind]
        counters[kind] += 1
        t, h, w = (image_grids if kind == "image" else video_grids)[i]
        if kind == "video" and model_type == "qwen3_vl":
            frame = "<|vision_start|>" + "<|video_pad|>" * (h * w // 4) + "<|vision_end|>"
            return "".join(f"<{timestamps[i][k]:.1f} seconds>" + frame for k in range(t))
        pad = "<|image_pad|>" if kind == "image" else "<|video_pad|>"
        return "<|vision_start|>" + pad * (t * h * w // 4) + "<|vision_end|>"

    out = ""
    if messages[0]["role"] != "system" and model_type != "qwen3_vl":
        out += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    replies = []
    for message in messages:
        out += f"<|im_start|>{message['role']}\n"
        before = out
        content = message["content"]
        if isinstance(content, str):
            out += content
        else:
            for item in content:
                out += item["text"] if item["type"] == "text" else block(item["type"])
        out += "<|im_end|>"
        if message["role"] == "assistant":
            replies.append((before, out))
        out += "\n"
    return out, replies


def _expected_labels(full_ids, replies):
    expected = [-100] * len(full_ids)
    for before, through in replies:
        before_ids, through_ids = _ids(before), _ids(through)
        assert full_ids[: len(through_ids)] == through_ids  # <|im_end|> ends on a token boundary
        start = 0
        while start < len(before_ids) and before_ids[start] == full_ids[start]:
            start += 1  # a reply's first token may merge with the header's newline: it is labeled
        for i in range(start, len(through_ids)):
            expected[i] = full_ids[i]
    return expected


def _qwen3_timestamps(videos):
    out = []
    for _, meta in videos or []:
        idx = list(meta["frames_indices"])
        if len(idx) % 2:
            idx.append(idx[-1])
        out.append([(idx[k] + idx[k + 1]) / 2 / meta["fps"] for k in range(0, len(idx), 2)])
    return out


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_random_conversations_ids_positions_and_labels(model_type):
    rng = random.Random(f"labels-{model_type}")
    straddles = 0
    for case in range(30):
        messages, images, videos, kwargs = conversation(rng, model_type, media=case % 3 != 0)
        train_on = "last" if case % 5 == 4 else "all"
        sample = build_sample(messages, TOK, model_type, images=images, videos=videos, video_kwargs=kwargs,
                              train_on=train_on)
        ref = build_inputs(messages, TOK, model_type, images=images, videos=videos, video_kwargs=kwargs,
                           add_generation_prompt=False)
        assert torch.equal(sample["input_ids"], ref["input_ids"][0])
        assert torch.equal(sample["position_ids"], ref["position_ids"][:, 0])
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            assert (sample[key] is None and ref[key] is None) or torch.equal(sample[key], ref[key]), key
        grids = [g for g in (ref["image_grid_thw"], ref["video_grid_thw"]) if g is not None]
        assert sample["num_patches"] == sum(int(g.prod(1).sum()) for g in grids)
        assert sample["num_tokens"] == sample["input_ids"].shape[0] == sample["labels"].shape[0]

        if model_type == "qwen3_vl":
            sample["_timestamps"] = _qwen3_timestamps(videos)
        full, replies = _render(messages, model_type, sample)
        full_ids = _ids(full)
        assert full_ids == sample["input_ids"].tolist()  # the renderer above is faithful
        if train_on == "last":
            replies = replies[-1:]
        expected = _expected_labels(full_ids, replies)
        assert sample["labels"].tolist() == expected, (case, messages)
        straddles += any(_ids(before) != full_ids[: len(_ids(before))] for before, _ in replies)
    assert straddles > 0  # the header/reply merge was exercised


def test_word_assistant_in_user_text_and_special_looking_replies():
    messages = [
        {"role": "user", "content": "assistant\nassistant <|im_start|>assistant\nhi"},
        {"role": "assistant", "content": "Sure <|im_start|>assistant\n <|im_end|> done"},
        {"role": "user", "content": [{"type": "image", "image": "x"}, {"type": "text", "text": "the assistant?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "\n\nA picture."}]},
    ]
    sample = build_sample(messages, TOK, "qwen2_vl", images=[image(random.Random(0))])
    labeled = TOK.decode([i for i, l in zip(sample["input_ids"].tolist(), sample["labels"].tolist()) if l != -100],
                         skip_special_tokens=False)
    # the second reply starts with "\n\n", merged by BPE with the header's "\n": that token is labeled
    assert labeled == "Sure <|im_start|>assistant\n <|im_end|> done<|im_end|>\n\n\nA picture.<|im_end|>"


def test_transformers_fast_tokenizer_gives_the_same_sample():
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=TOK)
    rng = random.Random(3)
    for _ in range(5):
        messages, images, videos, kwargs = conversation(rng, "qwen2_5_vl")
        ours = build_sample(messages, TOK, "qwen2_5_vl", images=images, videos=videos, video_kwargs=kwargs)
        theirs = build_sample(messages, hf, "qwen2_5_vl", images=images, videos=videos, video_kwargs=kwargs)
        assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["labels"], theirs["labels"])


def _long_case(model_type="qwen2_vl"):
    rng = random.Random(7)
    from _train_cases import video

    messages = [
        {"role": "user", "content": [{"type": "image", "image": "a", "min_pixels": 28 * 28 * 4}, {"type": "video", "video": "v"},
                                     {"type": "text", "text": "Describe both."}]},
        {"role": "assistant", "content": "An image and a video."},
    ]
    big = image(rng).resize((672, 448))
    frames = torch.cat([video(rng, "qwen2_vl")] * 4)[:16]
    return messages, [big], [frames], {"fps": [2.0]}


def test_qwen3_video_without_metadata_uses_the_given_fps_as_build_inputs_does():
    messages, images, videos, kwargs = _long_case()
    kwargs = {"fps": [1.0]}  # not transformers' default 24: the timestamps (and so the ids) depend on it
    sample = build_sample(messages, TOK, "qwen3_vl", images=images, videos=videos, video_kwargs=kwargs)
    inputs = build_inputs(messages, TOK, "qwen3_vl", images=images, videos=videos, video_kwargs=kwargs,
                          add_generation_prompt=False)
    assert torch.equal(sample["input_ids"], inputs["input_ids"][0])
    shrunk = build_sample(messages, TOK, "qwen3_vl", images=images, videos=videos, video_kwargs=kwargs,
                          max_length=sample["num_tokens"] // 2, truncation="shrink")
    assert shrunk["num_tokens"] <= sample["num_tokens"] // 2


def test_truncation_error_names_conversation_and_lengths():
    messages, images, videos, kwargs = _long_case()
    full = build_sample(messages, TOK, images=images, videos=videos, video_kwargs=kwargs)
    with pytest.raises(SampleTooLongError) as info:
        build_sample(messages, TOK, images=images, videos=videos, video_kwargs=kwargs, max_length=100, sample_id="row-17")
    err = info.value
    assert isinstance(err, ValueError) and "row-17" in str(err)
    assert str(full["num_tokens"]) in str(err) and "100" in str(err)
    assert (err.length, err.max_length) == (full["num_tokens"], 100)
    again = pickle.loads(pickle.dumps(err))  # crosses DataLoader workers intact
    assert str(again) == str(err) and again.length == err.length
    assert build_sample(messages, TOK, images=images, videos=videos, video_kwargs=kwargs,
                        max_length=full["num_tokens"]) is not None


def test_truncation_drop_returns_none():
    messages, images, videos, kwargs = _long_case()
    assert build_sample(messages, TOK, images=images, videos=videos, video_kwargs=kwargs, max_length=100,
                        truncation="drop") is None


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_truncation_shrink_fits_keeps_rules_and_labels(model_type):
    messages, images, videos, kwargs = _long_case()
    images = [images[0].resize((672, 448))]
    if model_type == "qwen3_vl":
        videos = [(videos[0], {"fps": 24.0, "frames_indices": list(range(0, 160, 10)), "total_num_frames": 160})]
    full = build_sample(messages, TOK, model_type, images=images, videos=videos, video_kwargs=kwargs)
    for limit in (full["num_tokens"] - 1, full["num_tokens"] // 2, full["num_tokens"] // 4):
        sample = build_sample(messages, TOK, model_type, images=images, videos=videos, video_kwargs=kwargs,
                              max_length=limit, truncation="shrink")
        assert sample["num_tokens"] <= limit
        _, h, w = sample["image_grid_thw"][0].tolist()
        patch = 16 if model_type == "qwen3_vl" else 14
        assert h % 2 == 0 and w % 2 == 0  # sides are multiples of patch * merge
        assert h * w * patch**2 >= 28 * 28 * 4  # the item's min_pixels holds
        assert abs(w / h - 1.5) < 0.35  # aspect ratio kept
        # the text (and every reply label) is untouched: same labeled tokens
        assert torch.equal(sample["labels"][sample["labels"] != -100], full["labels"][full["labels"] != -100])
        assert sample["video_grid_thw"][0, 1:].tolist() == full["video_grid_thw"][0, 1:].tolist()  # video sides kept
    smallest = build_sample(messages, TOK, model_type, images=images, videos=videos, video_kwargs=kwargs,
                            max_length=full["num_tokens"] // 4, truncation="shrink")
    assert smallest["video_grid_thw"][0, 0] < full["video_grid_thw"][0, 0]  # frames went after the pixels


def test_truncation_shrink_raises_when_text_alone_cannot_fit():
    messages, images, videos, kwargs = _long_case()
    messages[1]["content"] = "word " * 400
    with pytest.raises(SampleTooLongError, match="conversation 9"):
        build_sample(messages, TOK, images=images, videos=videos, video_kwargs=kwargs, max_length=300,
                     truncation="shrink", sample_id=9)


def test_conversation_without_reply_and_bad_options():
    with pytest.raises(InvalidMessageError, match="no assistant"):
        build_sample([{"role": "user", "content": "hi"}], TOK)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    for bad in ({"truncation": "cut"}, {"train_on": "first"}, {"max_length": 0}, {"add_generation_prompt": True}):
        with pytest.raises(ValueError):
            build_sample(messages, TOK, **bad)
