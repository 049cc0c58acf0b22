"""count_tokens equals what fetching produces: every video fixture and bad-corpus video with
random sampling options, the demo images, and generated images (EXIF orientations, sizes,
min/max_pixels, resized_*), for patch 14 and 16."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

import vlutils
from vlutils import count_tokens, fetch_image
from vlutils.errors import VisionInputError
from vlutils.video import fetch_video

ROOT = Path(__file__).resolve().parent.parent
VIDEOS = sorted((ROOT / "fixtures" / "video").glob("*")) + sorted((ROOT / "fixtures" / "bad").glob("vid_*")) + [
    ROOT / "fixtures" / "bad" / "ok_video.mp4"
]
IMAGES = sorted((ROOT / "fixtures" / "demo").glob("*.[pj][np]g"))


def _expected(ele: dict, patch: int):
    """(kind, grid, tokens) from fetching, or the error class fetching raises."""
    try:
        if "video" in ele:
            video = fetch_video(ele, image_patch_size=patch, output_dtype=__import__("torch").uint8)
            t, _, h, w = video.shape
            grid = (-(-t // 2), h // patch, w // patch)
            return "video", grid, grid[0] * grid[1] * grid[2] // 4
        image = fetch_image(ele, image_patch_size=patch)
        grid = (1, image.height // patch, image.width // patch)
        return "image", grid, grid[1] * grid[2] // 4
    except VisionInputError as exc:
        return type(exc)


def _ours(ele: dict, patch: int):
    model_type = "qwen3_vl" if patch == 16 else "qwen2_vl"
    try:
        (entry,) = count_tokens([{"role": "user", "content": [ele]}], model_type=model_type)
    except VisionInputError as exc:
        return type(exc)
    return entry["kind"], entry["grid_thw"], entry["tokens"]


def _video_options(rng: random.Random) -> dict:
    choice = rng.randrange(6)
    if choice == 0:
        return {}
    if choice == 1:
        return {"fps": rng.choice([0.5, 1.0, 2.0, 3.3, 8.0])}
    if choice == 2:
        return {"nframes": rng.choice([2, 4, 5, 8, 16])}
    if choice == 3:
        return {"fps": rng.choice([1.0, 4.0]), "min_frames": rng.choice([2, 4, 6]), "max_frames": rng.choice([4, 8, 64]),
                "max_pixels": rng.choice([3136, 20000, 100352])}
    if choice == 4:
        return {"video_start": rng.choice([0.0, 0.3, 1.0]), "video_end": rng.choice([1.5, 2.5, 100.0]),
                "min_pixels": rng.choice([3136, 50000])}
    return {"resized_height": rng.randrange(20, 300), "resized_width": rng.randrange(20, 300),
            "nframes": rng.choice([2, 4])}


@pytest.mark.parametrize("path", VIDEOS, ids=lambda p: p.name)
def test_videos_equal_fetching(path):
    rng = random.Random(path.name)
    for k in range(3 if path.parent.name == "video" else 2):
        ele = {"video": str(path), **(_video_options(rng) if k else {})}
        patch = rng.choice([14, 16])
        assert _ours(ele, patch) == _expected(ele, patch), ele


def _image_bytes(rng: random.Random) -> tuple[bytes, dict]:
    width, height = rng.choice([(1, 1), (28, 28), (50, 2000), (641, 479), (1024, 768), (2000, 1500)]) \
        if rng.random() < 0.4 else (rng.randrange(4, 1200), rng.randrange(4, 1200))
    if max(width, height) / min(width, height) > 150:
        width = height
    image = Image.new("RGB", (width, height), (rng.randrange(256), 0, 0))
    fmt = rng.choice(["JPEG", "PNG", "WEBP"])
    kwargs = {}
    if fmt == "JPEG":
        exif = Image.Exif()
        exif[0x0112] = rng.randrange(1, 9)
        kwargs["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    options = rng.choice([
        {}, {"max_pixels": rng.randrange(3136, 2_000_000)}, {"min_pixels": rng.randrange(3136, 500_000)},
        {"min_pixels": 3136, "max_pixels": rng.randrange(3136, 200_000)},
        {"resized_height": rng.randrange(10, 900), "resized_width": rng.randrange(10, 900)},
    ])
    return buffer.getvalue(), options


def test_generated_images_equal_fetching(tmp_path):
    rng = random.Random(7)
    for i in range(40):
        data, options = _image_bytes(rng)
        path = tmp_path / f"img{i}"
        path.write_bytes(data)
        for source in ([str(path)] if i % 4 else [str(path), data]):
            ele = {"image": source, **options}
            patch = rng.choice([14, 16])
            assert _ours(ele, patch) == _expected(ele, patch), (i, options)


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_demo_images_equal_fetching(path):
    for patch in (14, 16):
        for options in ({}, {"max_pixels": 50176}, {"resized_height": 100, "resized_width": 333}):
            ele = {"image": str(path), **options}
            assert _ours(ele, patch) == _expected(ele, patch)


def test_batch_order_and_lazy_export():
    demo = ROOT / "fixtures" / "demo"
    batch = [
        [{"role": "user", "content": [{"type": "image", "image": str(demo / "landscape.jpg")}, {"type": "text", "text": "x"}]}],
        [{"role": "user", "content": [{"type": "video", "video": str(ROOT / "fixtures/video/vp9_30fps.webm"), "nframes": 4},
                                      {"type": "image", "image": str(demo / "logo_rgba.png")}]}],
    ]
    entries = count_tokens(batch, model_type="qwen2_5_vl")
    assert [e["kind"] for e in entries] == ["image", "video", "image"]
    assert entries[1]["nframes"] == 4 and entries[1]["grid_thw"][0] == 2
    assert vlutils.count_tokens is count_tokens


def test_header_path_is_used_for_mp4_and_scan_for_mkv():
    mp4 = count_tokens([{"role": "user", "content": [{"video": str(ROOT / "fixtures/video/h264_long_gop.mp4")}]}])
    mkv = count_tokens([{"role": "user", "content": [{"video": str(ROOT / "fixtures/video/vp9_30fps.webm")}]}])
    assert mp4[0]["from_header"] is True and mkv[0]["from_header"] is False
