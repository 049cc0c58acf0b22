"""A small mixed dataset on disk for the preparation tests and benchmarks: three sources in the
three formats, per-source vision settings, relative and absolute media paths, and bad records
(malformed JSON, missing and corrupt files, tags that disagree with files, too long)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
VIDEO_FIXTURES = ["h264_320x240_30fps.mp4", "vp9_30fps.webm", "h264_rotate90.mp4", "h264_vfr.mp4"]


def save_tokenizer(path: Path) -> Path:
    from tests._tiny_tokenizer import tiny_qwen_tokenizer

    path.write_text(tiny_qwen_tokenizer().to_str())
    return path


def make_images(folder: Path, count: int, rng: random.Random) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        w, h = rng.randrange(40, 500), rng.randrange(40, 500)
        image = Image.effect_noise((w, h), rng.randrange(10, 80)).convert("RGB")
        name = f"img{i}.{'jpg' if i % 2 else 'png'}"
        image.save(folder / name)
        names.append(name)
    return names


def make_mixture(root: Path, *, records: int = 12, seed: int = 0, bad: bool = True, videos: bool = True) -> Path:
    """Write ``root/mixture.json`` and its sources; return the spec path."""
    rng = random.Random(seed)
    media = root / "media"
    images = make_images(media, 6, rng)
    vids = []
    if videos:
        for name in VIDEO_FIXTURES:
            shutil.copy(ROOT / "fixtures" / "video" / name, media / name)
            vids.append(name)
    (media / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    docs, clips, llava = [], [], []
    for i in range(records):
        img = rng.choice(images)
        content = [{"type": "image", "image": f"media/{img}"}, {"type": "text", "text": f"What is in picture {i}?"}]
        if i % 3 == 0:
            content.insert(1, {"type": "image", "image": str(media / rng.choice(images)), "max_pixels": 50176})
        docs.append({"messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": content},
            {"role": "assistant", "content": f"A noisy picture, number {i}."},
        ]})
        if vids:
            clips.append({"conversations": [
                {"from": "human", "value": f"<video>Describe clip {i}."},
                {"from": "gpt", "value": "Moving colours."},
                {"from": "human", "value": "And this one? <image>"},
                {"from": "gpt", "value": "More noise."},
            ], "videos": [rng.choice(vids)], "images": [rng.choice(images)]})
        llava.append({"image": rng.choice(images), "conversations": [
            {"from": "human", "value": "<image>\nCaption it."}, {"from": "gpt", "value": f"Caption {i}."}]})
    lines = {"docs": [json.dumps(r) for r in docs], "clips": [json.dumps(r) for r in clips],
             "llava": [json.dumps(r) for r in llava]}
    if bad:
        lines["docs"].insert(2, "{not json")
        lines["docs"].insert(5, json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image", "image": "media/missing.png"}]}, {"role": "assistant", "content": "x"}]}))
        lines["docs"].append(json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image", "image": "media/corrupt.jpg"}]}, {"role": "assistant", "content": "x"}]}))
        lines["docs"].append(json.dumps({"messages": [{"role": "user", "content": "word " * 3000},
                                                      {"role": "assistant", "content": "long"}]}))
        lines["llava"].insert(1, json.dumps({"image": images[0], "conversations": [
            {"from": "human", "value": "no tag here"}, {"from": "gpt", "value": "x"}]}))
        lines["llava"].insert(3, "")  # a blank line: counted as a line, not a record
        if vids:
            lines["clips"].insert(1, json.dumps({"messages": [
                {"role": "user", "content": "<video><video>two tags"}, {"role": "assistant", "content": "x"}],
                "videos": [vids[0]]}))
    (root / "docs.jsonl").write_text("\n".join(lines["docs"]) + "\n")
    (root / "clips").mkdir(exist_ok=True)
    (root / "clips" / "part0.jsonl").write_text("\n".join(lines["clips"]) + "\n")
    (root / "llava.jsonl").write_text("\n".join(lines["llava"]) + "\n")
    spec = {
        "model_type": "qwen2_5_vl", "max_length": 2048, "truncation": "drop", "shard_size": 5,
        "sources": [
            {"name": "docs", "path": "docs.jsonl", "format": "messages", "image": {"max_pixels": 100352}},
            {"name": "clips", "path": "clips/*.jsonl", "format": "sharegpt", "media_dir": "media",
             "video": {"fps": 2.0, "max_frames": 8, "max_pixels": 150528}, "image": {"max_pixels": 50176},
             "weight": 0.5},
            {"name": "llava", "path": "llava.jsonl", "format": "llava", "media_dir": "media"},
        ],
    }
    if not vids:
        spec["sources"].pop(1)
    path = root / "mixture.json"
    path.write_text(json.dumps(spec, indent=1))
    return path
