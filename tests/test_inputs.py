"""vlutils.chat / vlutils.inputs against transformers: the Qwen2-VL chat template, and the
4.51 Qwen2-VL / Qwen2.5-VL processors (run from .refs/tf451) on the same pre-fetched media."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from vlutils.chat import expand_placeholders, format_chat, qwen3_timestamps
from vlutils.errors import InvalidMessageError, InvalidOptionError, VisionInputError
from vlutils.inputs import build_inputs, second_per_grid_ts_from_fps
from vlutils.rope import get_rope_index

from _refs import reference_processor
from _tiny_tokenizer import SPECIAL, tiny_qwen_tokenizer

# The Qwen2-VL / Qwen2.5-VL chat template (the checkpoints' tokenizer_config), written out here
# as the reference that format_chat must reproduce.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WORDS = ["Describe", "this", "image.", "What", "happens", "in", "the", "video?", "Compare", "them.", "\n", "cat"]


def _conversation(rng: random.Random, n_images: int, n_videos: int) -> list[dict]:
    items = [{"type": "image", "image": f"img{i}.png"} for i in range(n_images)]
    items += [{"type": "video", "video": f"clip{i}.mp4"} for i in range(n_videos)]
    items += [{"type": "text", "text": " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))} for _ in range(rng.randint(0, 3))]
    rng.shuffle(items)
    if rng.random() < 0.2:
        items.append({"image_url": "https://example.com/a.png"})  # counted as an image by both
        n_images += 1
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(["Be brief.", "You are a careful captioner."])})
    if rng.random() < 0.3:  # an earlier text-only turn
        messages += [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    messages.append({"role": "user", "content": items})
    return messages


def _media(rng: np.random.Generator, n_images: int, n_videos: int):
    images = [
        Image.fromarray(rng.integers(0, 256, size=(28 * int(rng.integers(1, 9)), 28 * int(rng.integers(1, 9)), 3), dtype=np.uint8))
        for _ in range(n_images)
    ]
    videos = [
        torch.from_numpy(
            rng.integers(0, 256, size=(int(rng.integers(1, 7)), 3, 28 * int(rng.integers(1, 5)), 28 * int(rng.integers(1, 5))), dtype=np.uint8)
        ).float()  # qwen-vl-utils returns float32 frames holding 0..255 integers
        for _ in range(n_videos)
    ]
    return images, videos


def _hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tiny_qwen_tokenizer())


def test_format_chat_matches_the_chat_template():
    rng = random.Random(0)
    tok = _hf_tokenizer()
    for i in range(60):
        conv = _conversation(rng, rng.randint(0, 3), rng.randint(0, 2))
        for gen in (True, False):
            vision_id = i % 3 == 0
            expected = tok.apply_chat_template(
                conv, chat_template=QWEN2_VL_TEMPLATE, tokenize=False, add_generation_prompt=gen, add_vision_id=vision_id
            )
            assert format_chat(conv, add_generation_prompt=gen, add_vision_id=vision_id) == expected


def _batch_case(rng: random.Random, nrng: np.random.Generator, model_type: str) -> dict:
    convs, images, videos = [], [], []
    for _ in range(rng.randint(1, 3)):
        n_img, n_vid = rng.randint(0, 2), rng.randint(0, 2 if model_type == "qwen2_5_vl" else 1)
        conv = _conversation(rng, n_img, n_vid)
        n_img = sum(1 for item in conv[-1]["content"] if "image" in item or "image_url" in item)
        imgs, vids = _media(nrng, n_img, n_vid)
        convs.append(conv)
        images += imgs
        videos += vids
    fps = [rng.choice([0.5, 1.0, 2.0, 24 / 7, 3.0]) for _ in videos]
    return dict(model_type=model_type, conversations=convs, images=images, videos=videos, fps=fps)


@pytest.fixture(scope="module")
def processor_cases(tmp_path_factory):
    rng, nrng = random.Random(1), np.random.default_rng(1)
    cases = [_batch_case(rng, nrng, mt) for mt in ["qwen2_vl", "qwen2_5_vl"] for _ in range(12)]
    payload = [
        dict(
            model_type=c["model_type"],
            texts=[format_chat(conv) for conv in c["conversations"]],
            images=[np.asarray(im) for im in c["images"]],
            videos=c["videos"],
            fps=c["fps"],
        )
        for c in cases
    ]
    version, results = reference_processor("tf451", tiny_qwen_tokenizer().to_str(), payload, tmp_path_factory.mktemp("proc"))
    assert version == "4.51.3"
    return list(zip(cases, results))


def test_build_inputs_matches_transformers_processor(processor_cases):
    tokenizer = tiny_qwen_tokenizer()
    seen_videos = seen_batches = 0
    for i, (case, ref) in enumerate(processor_cases):
        ours = build_inputs(
            case["conversations"], tokenizer, case["model_type"],
            images=case["images"], videos=case["videos"], video_kwargs={"fps": case["fps"]},
        )
        label = f"case {i} ({case['model_type']})"
        for key in ("input_ids", "attention_mask", "image_grid_thw", "pixel_values", "video_grid_thw", "pixel_values_videos"):
            if key in ref:
                assert ours[key] is not None and torch.equal(ours[key], ref[key]), f"{label}: {key}"
            else:
                assert ours[key] is None, f"{label}: {key}"
        if "second_per_grid_ts" in ref:
            assert torch.equal(ours["second_per_grid_ts"], torch.as_tensor(ref["second_per_grid_ts"])), label
        # Positions are get_rope_index's on the very same tensors (tested against transformers elsewhere).
        pos, deltas = get_rope_index(
            ours["input_ids"], ours["image_grid_thw"], ours["video_grid_thw"], ours["attention_mask"],
            ours["second_per_grid_ts"], model_type=case["model_type"],
        )
        assert torch.equal(ours["position_ids"], pos) and torch.equal(ours["rope_deltas"], deltas)
        types = ours["mm_token_type_ids"]
        assert torch.equal(types == 1, ours["input_ids"] == SPECIAL["<|image_pad|>"])
        assert torch.equal(types == 2, ours["input_ids"] == SPECIAL["<|video_pad|>"])
        seen_videos += ours["video_grid_thw"] is not None
        seen_batches += ours["input_ids"].shape[0] > 1
    assert seen_videos >= 6 and seen_batches >= 6


def test_qwen3_video_timestamps_match_transformers_457():
    """Qwen3-VL: a timestamped block per temporal patch, as 4.57's processor writes it."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    rng = random.Random(2)
    for _ in range(30):
        n = rng.randint(1, 12)
        fps = rng.choice([24.0, 29.97, 30.0, 12.5, 2.0])
        indices = sorted(rng.sample(range(0, 400), n))
        assert qwen3_timestamps(indices, fps) == Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Go<|im_end|>\n"
    [out] = expand_placeholders([text], None, torch.tensor([[2, 4, 6]]), model_type="qwen3_vl", video_timestamps=[[0.25, 1.0]])
    block = "<|vision_start|>" + "<|video_pad|>" * 6 + "<|vision_end|>"
    assert out == f"<|im_start|>user\n<0.2 seconds>{block}<1.0 seconds>{block}Go<|im_end|>\n"


def test_qwen3_build_inputs_positions_and_pixels():
    """Qwen3-VL: patch 16, mean = std = 0.5, per-frame video blocks that get_rope_index accepts."""
    tokenizer = tiny_qwen_tokenizer()
    nrng = np.random.default_rng(3)
    image = Image.fromarray(nrng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8))
    frames = torch.from_numpy(nrng.integers(0, 256, size=(4, 3, 32, 64), dtype=np.uint8))
    conv = [{"role": "user", "content": [{"image": "a"}, {"video": "b"}, {"text": "Same?"}]}]
    out = build_inputs(
        conv, tokenizer, "qwen3_vl", images=[image], videos=[(frames, {"fps": 30.0, "frames_indices": [0, 15, 30, 45]})]
    )
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]] and out["video_grid_thw"].tolist() == [[2, 2, 4]]
    ids = out["input_ids"][0].tolist()
    assert ids.count(SPECIAL["<|image_pad|>"]) == 6 and ids.count(SPECIAL["<|video_pad|>"]) == 4
    assert ids.count(SPECIAL["<|vision_start|>"]) == 3  # the image and one per temporal patch
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert "<0.2 seconds>" in text and "<1.2 seconds>" in text
    assert not text.startswith("<|im_start|>system")  # no default system prompt for Qwen3-VL
    assert out["pixel_values"].shape == (24, 3 * 2 * 16 * 16)
    assert float(out["pixel_values"].min()) >= -1.0 and float(out["pixel_values"].max()) <= 1.0


def test_second_per_grid_ts_and_errors():
    assert second_per_grid_ts_from_fps([2.0, 0.5], 2) == [1.0, 4.0]
    assert second_per_grid_ts_from_fps(4.0, 3) == [0.5, 0.5, 0.5]
    with pytest.raises(InvalidOptionError, match="fps"):
        second_per_grid_ts_from_fps([0.0], 1)
    with pytest.raises(InvalidOptionError, match="2 value"):
        second_per_grid_ts_from_fps([1.0, 2.0], 1)
    tok = tiny_qwen_tokenizer()
    img = Image.new("RGB", (28, 28))
    with pytest.raises(InvalidOptionError, match="1 image placeholder"):
        build_inputs([{"role": "user", "content": [{"image": "a"}]}], tok, images=[img, img])
    with pytest.raises(InvalidMessageError, match="message 0"):
        build_inputs([{"content": "x"}], tok, images=[])
    with pytest.raises(InvalidMessageError):
        build_inputs("hello", tok)
    with pytest.raises(VisionInputError, match="model_type"):
        build_inputs([{"role": "user", "content": "x"}], tok, "llava")


def test_text_only_batch_is_left_padded():
    tok = tiny_qwen_tokenizer()
    out = build_inputs(
        [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Describe the lazy dog"}]], tok, images=[]
    )
    mask = out["attention_mask"]
    assert mask[0, 0] == 0 and mask[1].all() and mask[0, -1] == 1
    assert out["pixel_values"] is None and out["video_grid_thw"] is None
    assert out["position_ids"][:, 0, -1].tolist() == [int(mask[0].sum()) - 1] * 3


def test_qwen3_build_inputs_matches_transformers_457_processor():
    """Qwen3-VL prompts (timestamped per-patch video blocks) equal 4.57's Qwen3VLProcessor's;
    image pixels bit for bit; video pixels to float32 rounding (4.57 only has a torch video path)."""
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = Qwen2TokenizerFast(tokenizer_object=tiny_qwen_tokenizer(), padding_side="left")
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3, min_pixels=32 * 32, max_pixels=32 * 32 * 10_000
    )
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=Qwen3VLVideoProcessor())
    rng, nrng = random.Random(5), np.random.default_rng(5)
    seen_videos = 0
    for _ in range(4):
        convs, images, videos = [], [], []
        for _ in range(rng.randint(1, 2)):
            n_img, n_vid = rng.randint(0, 2), rng.randint(0, 2)
            conv = _conversation(rng, n_img, n_vid)
            n_img = sum(1 for item in conv[-1]["content"] if "image" in item or "image_url" in item)
            convs.append(conv)
            images += [
                Image.fromarray(nrng.integers(0, 256, size=(32 * rng.randint(1, 4), 32 * rng.randint(1, 4), 3), dtype=np.uint8))
                for _ in range(n_img)
            ]
            for _ in range(n_vid):
                n = rng.randint(1, 7)
                frames = torch.from_numpy(nrng.integers(0, 256, size=(n, 3, 32 * rng.randint(1, 3), 64), dtype=np.uint8))
                fps = rng.choice([24.0, 29.97, 30.0])
                indices = sorted(rng.sample(range(300), n))
                videos.append((frames, {"fps": fps, "frames_indices": indices, "total_num_frames": 300}))
        texts = [format_chat(c, model_type="qwen3_vl") for c in convs]
        expected = processor(
            text=texts, images=images or None, videos=[v for v, _ in videos] or None,
            video_metadata=[m for _, m in videos] or None, do_sample_frames=False, do_resize=False,
            return_tensors="pt", padding=True,
        )
        ours = build_inputs(convs, tiny_qwen_tokenizer(), "qwen3_vl", images=images, videos=videos)
        assert torch.equal(ours["input_ids"], expected["input_ids"])
        assert torch.equal(ours["attention_mask"], expected["attention_mask"])
        if images:
            assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"])
            assert torch.equal(ours["pixel_values"], expected["pixel_values"])
        if videos:
            seen_videos += 1
            assert torch.equal(ours["video_grid_thw"], expected["video_grid_thw"])
            torch.testing.assert_close(ours["pixel_values_videos"], expected["pixel_values_videos"], rtol=0, atol=1e-6)
    assert seen_videos >= 2


def test_build_inputs_fetches_media_itself(tmp_path):
    """Without images/videos, build_inputs fetches through vlutils.process_vision_info; the
    result equals passing qwen-vl-utils' own fetched images."""
    from qwen_vl_utils import process_vision_info as reference_fetch

    nrng = np.random.default_rng(6)
    paths = []
    for i, (h, w) in enumerate([(100, 150), (300, 90)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(nrng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    conv = [{"role": "user", "content": [{"type": "image", "image": paths[0]}, {"type": "text", "text": "and"},
                                         {"type": "image", "image": "file://" + paths[1]}]}]
    tok = tiny_qwen_tokenizer()
    ours = build_inputs(conv, tok, "qwen2_5_vl")
    images, _ = reference_fetch(conv)
    expected = build_inputs(conv, tok, "qwen2_5_vl", images=images)
    for key in ("input_ids", "pixel_values", "image_grid_thw", "position_ids", "rope_deltas"):
        assert torch.equal(ours[key], expected[key]), key
