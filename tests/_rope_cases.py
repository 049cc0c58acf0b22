"""Random, well-formed M-RoPE inputs (deterministic from a seed) shared by the rope tests."""

from __future__ import annotations

import random

import torch

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, PAD = 151652, 151653, 151655, 151656, 151643
SECONDS = [0.083, 0.25, 0.5, 0.99, 1.0, 1.0333, 1.5, 2.0]


def _text(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(0, 151000) for _ in range(n)]


def _block(pad: int, n: int) -> list[int]:
    return [VISION_START] + [pad] * n + [VISION_END]


def random_case(
    rng: random.Random, model_type: str, *, text_only: bool = False, long_videos: bool = False, unpadded: bool = False
) -> dict:
    """One batch of 1-4 rows with interleaved images/videos, padding and random grids
    (``unpadded``: a single row with no padding)."""
    merge = 2 if rng.random() < 0.9 else rng.choice([1, 3])
    batch = 1 if unpadded else rng.randint(1, 4)
    rows, images, videos = [], [], []
    for _ in range(batch):
        row = _text(rng, rng.randint(1, 12))
        for _ in range(0 if text_only else rng.randint(0, 4)):
            if rng.random() < 0.1:  # a vision_start that opens no block is plain text
                row += [VISION_START] + _text(rng, rng.randint(1, 3))
            if rng.random() < 0.5:
                t = 1 if rng.random() < 0.9 else rng.randint(2, 3)
                h, w = merge * rng.randint(1, 8), merge * rng.randint(1, 8)
                images.append([t, h, w])
                row += _block(IMAGE_PAD, t * h * w // merge**2)
            else:
                t = rng.randint(20, 60) if long_videos else rng.randint(1, 12)
                h, w = merge * rng.randint(1, 4), merge * rng.randint(1, 4)
                videos.append([t, h, w])
                if model_type.startswith("qwen3"):  # one timestamped block per temporal patch
                    for _ in range(t):
                        row += _text(rng, rng.randint(1, 4)) + _block(VIDEO_PAD, h * w // merge**2)
                else:
                    row += _block(VIDEO_PAD, t * h * w // merge**2)
            row += _text(rng, rng.randint(0, 6))
        rows.append(row)

    side = "left" if unpadded else rng.choice(["left", "left", "left", "right", "holes"])
    masks = [[1] * len(r) for r in rows]
    if side == "holes":  # masked-out tokens anywhere, even inside vision blocks
        for b, row in enumerate(rows):
            for _ in range(rng.randint(1, 4)):
                at = rng.randint(0, len(row))
                row.insert(at, PAD)
                masks[b].insert(at, 0)
    length = max(len(r) for r in rows) + (0 if unpadded else rng.randint(0, 3))
    ids = torch.full((batch, length), PAD, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        sl = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[b, sl] = torch.tensor(row)
        mask[b, sl] = torch.tensor(masks[b])
    use_mask = rng.random() < 0.85 or int(mask.sum()) != mask.numel()

    seconds = None
    if model_type == "qwen2_5_vl" and videos and rng.random() < 0.9:
        values = [rng.choice(SECONDS) if rng.random() < 0.6 else round(rng.uniform(0.0, 3.0), 4) for _ in videos]
        seconds = torch.tensor(values, dtype=torch.float32) if rng.random() < 0.8 else values

    no_grids = text_only and rng.random() < 0.7
    return dict(
        model_type=model_type,
        input_ids=ids,
        attention_mask=mask if use_mask else None,
        image_grid_thw=_grid(images, empty=text_only and not no_grids),
        video_grid_thw=_grid(videos),
        second_per_grid_ts=seconds,
        spatial_merge_size=merge,
        tokens_per_second=rng.choice([2, 2, 2, 4, 25]),
        image_token_id=IMAGE_PAD,
        video_token_id=VIDEO_PAD,
        vision_start_token_id=VISION_START,
    )


def _grid(rows: list, empty: bool = False) -> torch.Tensor | None:
    if rows:
        return torch.tensor(rows, dtype=torch.long)
    return torch.zeros(0, 3, dtype=torch.long) if empty else None


def random_cases(seed: int, model_type: str, n: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        cases.append(random_case(rng, model_type, text_only=i % 10 == 0, long_videos=i % 5 == 1))
    return cases


def call_vlutils(get_rope_index, case: dict):
    return get_rope_index(
        case["input_ids"],
        case["image_grid_thw"],
        case["video_grid_thw"],
        case["attention_mask"],
        case["second_per_grid_ts"],
        model_type=case["model_type"],
        spatial_merge_size=case["spatial_merge_size"],
        tokens_per_second=case["tokens_per_second"],
        image_token_id=case["image_token_id"],
        video_token_id=case["video_token_id"],
        vision_start_token_id=case["vision_start_token_id"],
    )
