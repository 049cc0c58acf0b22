"""vlutils.processor against transformers' slow (PIL/numpy) Qwen2VLImageProcessor, bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vlutils.errors import InvalidOptionError, VisionInputError
from vlutils.processor import PRESETS, get_preset, patchify, patchify_image, patchify_video


def _reference_processor(model_type: str):
    from transformers import Qwen2VLImageProcessor

    preset = PRESETS[model_type]
    return Qwen2VLImageProcessor(
        patch_size=preset.patch_size,
        temporal_patch_size=preset.temporal_patch_size,
        merge_size=preset.merge_size,
        image_mean=list(preset.image_mean),
        image_std=list(preset.image_std),
        # A pixel budget wide enough that the reference never resizes our already sized media.
        min_pixels=preset.factor**2,
        max_pixels=preset.factor**2 * 100_000,
    )


def _random_size(rng: np.random.Generator, factor: int, limit: int = 12) -> tuple[int, int]:
    return factor * int(rng.integers(1, limit)), factor * int(rng.integers(1, limit))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_images_bit_identical(model_type):
    rng = np.random.default_rng(0)
    ref = _reference_processor(model_type)
    factor = PRESETS[model_type].factor
    images = []
    for i in range(12):
        h, w = _random_size(rng, factor)
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        if i % 4 == 0:
            images.append(Image.fromarray(pixels))
        elif i % 4 == 1:
            images.append(Image.fromarray(pixels).convert("RGBA"))  # converted to RGB by both
        elif i % 4 == 2:
            images.append(pixels)  # HWC uint8 array
        else:
            images.append(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())  # CHW tensor
    expected = ref(images=images, return_tensors="pt")
    ours = patchify(images=images, model_type=model_type)
    assert ours["pixel_values"].dtype == torch.float32
    assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], expected["pixel_values"])  # bit-identical
    assert ours["pixel_values_videos"] is None and ours["video_grid_thw"] is None
    # One at a time gives the same rows.
    one, grid = patchify_image(images[0], model_type)
    n = int(expected["image_grid_thw"][0].prod())
    assert torch.equal(one, expected["pixel_values"][:n]) and torch.equal(grid, expected["image_grid_thw"][0])


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_frame_stacks_bit_identical(model_type):
    """Odd and even frame counts, uint8 and float (as qwen-vl-utils returns) frames."""
    rng = np.random.default_rng(1)
    ref = _reference_processor(model_type)
    factor = PRESETS[model_type].factor
    videos = []
    for i, n_frames in enumerate([1, 2, 3, 4, 5, 8]):
        h, w = _random_size(rng, factor, limit=6)
        frames = torch.from_numpy(rng.integers(0, 256, size=(n_frames, 3, h, w), dtype=np.uint8))
        videos.append(frames.float() if i % 2 else frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref(images=None, videos=[v.numpy() for v in videos], return_tensors="pt")
    ours = patchify(videos=videos, model_type=model_type)
    assert torch.equal(ours["video_grid_thw"], expected["video_grid_thw"])
    assert torch.equal(ours["pixel_values_videos"], expected["pixel_values_videos"])
    # THWC arrays and lists of PIL frames are the same video.
    thwc = videos[2].permute(0, 2, 3, 1).numpy().astype(np.uint8)
    as_list = [Image.fromarray(frame) for frame in thwc]
    a, ga = patchify_video(thwc, model_type)
    b, gb = patchify_video(as_list, model_type)
    c, gc = patchify_video(videos[2], model_type)
    assert torch.equal(a, c) and torch.equal(b, c) and torch.equal(ga, gc) and torch.equal(gb, gc)


def test_layout_by_hand():
    """Row order checked against a hand-built example: value = f(frame, channel, y, x)."""
    preset = get_preset("qwen2_vl", image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), rescale_factor=1.0)
    p, m = preset.patch_size, preset.merge_size
    h, w = 2 * p * m, p * m  # 4x2 patches: 2x1 merge blocks
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    frames = torch.stack([torch.stack([(y + x + 10 * c + 100 * t) % 256 for c in range(3)]) for t in range(2)]).float()
    pv, grid = patchify_video(frames, preset)
    assert grid.tolist() == [1, h // p, w // p]
    # Row 5 = merge block 1 (rows 2-3 of patches), inside it row 0, column 1 -> patch (2, 1).
    row = pv[5].view(3, 2, p, p)
    py, px = 2, 1
    for c in range(3):
        for t in range(2):
            expect = frames[t, c, py * p : (py + 1) * p, px * p : (px + 1) * p]
            assert torch.equal(row[c, t], expect)


def test_presets_and_overrides():
    assert PRESETS["qwen2_5_vl"].patch_size == 14 and PRESETS["qwen3_vl"].patch_size == 16
    assert get_preset("qwen3_vl", merge_size=1).factor == 16
    with pytest.raises(InvalidOptionError, match="model_type"):
        get_preset("llava")
    with pytest.raises(InvalidOptionError, match="unknown preset option"):
        get_preset("qwen2_vl", patchsize=3)
    with pytest.raises(InvalidOptionError, match="patch_size"):
        get_preset("qwen2_vl", patch_size=0)


def test_bad_media_is_a_clear_error():
    with pytest.raises(InvalidOptionError, match="not a multiple of 28"):
        patchify_image(np.zeros((30, 28, 3), np.uint8))
    with pytest.raises(InvalidOptionError, match="3 channels"):
        patchify_image(np.zeros((28, 28, 4), np.uint8))
    with pytest.raises(InvalidOptionError, match="0..255"):
        patchify_video(torch.full((2, 3, 28, 28), 300.0))
    with pytest.raises(InvalidOptionError, match="at least one frame"):
        patchify_video([])
    with pytest.raises(InvalidOptionError, match="cannot patchify a str"):
        patchify_image("cat.png")
    with pytest.raises(VisionInputError, match="image 1"):
        patchify(images=[np.zeros((28, 28, 3), np.uint8), np.zeros((28, 29, 3), np.uint8)])


def test_unusual_rescale_factor_and_fractional_frames():
    """Paths without the float32 shortcut: still transformers' float64-then-float32 rounding."""
    from transformers import Qwen2VLImageProcessor

    rng = np.random.default_rng(4)
    pixels = [rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8) for _ in range(3)]
    ref = Qwen2VLImageProcessor(rescale_factor=0.0123, min_pixels=28 * 28, max_pixels=28 * 28 * 1000)
    expected = ref(images=pixels, return_tensors="pt")["pixel_values"]
    ours = patchify(images=pixels, rescale_factor=0.0123)["pixel_values"]
    assert torch.equal(ours, expected)
    # Fractional float frames (transformers' slow path refuses them): the formula, value by value.
    frames = torch.from_numpy(rng.uniform(0, 255, size=(2, 3, 28, 28)).astype(np.float32))
    pv, _ = patchify_video(frames, "qwen2_vl")
    preset = PRESETS["qwen2_vl"]
    x = (frames.double() * preset.rescale_factor).float()
    x = (x - torch.tensor(preset.image_mean).view(1, 3, 1, 1)) / torch.tensor(preset.image_std).view(1, 3, 1, 1)
    # One 28x28 frame pair = 2x2 patches = one merge block: rows (y-block, x-block), values (c, t, y, x).
    expect = x.view(2, 3, 2, 14, 2, 14).permute(2, 4, 1, 0, 3, 5).reshape(4, -1)
    assert torch.equal(pv, expect)
