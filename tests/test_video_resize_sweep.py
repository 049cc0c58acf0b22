"""The video resize (vlutils.video.resize.resize_exact, one frame at a time as the pipeline calls
it) equals torchvision's uint8 bicubic + antialias resize followed by ``.float()`` (what
qwen-vl-utils 0.0.14 does to the whole clip) over many source and target sizes: down and up,
odd, one-pixel, extreme aspect ratios, both memory layouts, random and saturated content."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from vlutils.video.resize import resize_exact

EDGE_SIZES = [
    ((1, 1), (28, 28)), ((1, 2), (28, 56)), ((2, 1), (56, 28)), ((3, 3), (2, 2)), ((5, 7), (1, 1)),
    ((28, 28), (28, 28)), ((97, 161), (84, 168)), ((161, 97), (168, 84)), ((60, 450), (56, 448)),
    ((450, 60), (448, 56)), ((240, 320), (480, 644)), ((1, 300), (28, 308)), ((299, 3), (280, 28)),
    ((17, 19), (224, 252)), ((360, 640), (28, 56)),
]


def _random_sizes(count: int, seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    rng = random.Random(seed)
    sizes = []
    for _ in range(count):
        src = (rng.randint(1, 240), rng.randint(1, 240))
        dst = (rng.randint(1, 260), rng.randint(1, 260))
        if rng.random() < 0.5:  # targets on the 28 / 32 grid, as the pipeline produces them
            factor = rng.choice([28, 32])
            dst = (factor * rng.randint(1, 9), factor * rng.randint(1, 9))
        sizes.append((src, dst))
    return sizes


def _frames(src: tuple[int, int], seed: int, saturated: bool) -> torch.Tensor:
    """(2, 3, H, W) uint8 in the decoder's layout: HWC frames viewed as NCHW (channels last)."""
    rng = np.random.default_rng(seed)
    if saturated:  # 0/255 checkerboard: the kernel's overshoot must clamp the same way
        pixels = ((np.indices((2, *src)).sum(axis=0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, axis=-1)
    else:
        pixels = rng.integers(0, 256, size=(2, *src, 3), dtype=np.uint8)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2)


@pytest.mark.parametrize("case", range(len(EDGE_SIZES) + 60))
def test_resize_equals_torchvision_uint8(case):
    src, dst = (EDGE_SIZES + _random_sizes(60, seed=13))[case]
    for saturated in (False, True):
        frames = _frames(src, case, saturated)
        for layout in (frames, frames.contiguous()):
            expected = TF.resize(layout, list(dst), interpolation=InterpolationMode.BICUBIC, antialias=True).float()
            per_frame = torch.cat([resize_exact(layout[i:i + 1], *dst) for i in range(len(layout))])
            assert per_frame.shape == expected.shape
            assert torch.equal(per_frame, expected), (src, dst, saturated, layout.is_contiguous())
