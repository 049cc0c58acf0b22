"""Generate the small demo media in ``fixtures/demo/`` and ``fixtures/demo/messages.json``.

    python scripts/make_demo_fixtures.py

Deterministic (seeded) and small (each file < 100 KB). The images:

* ``landscape.jpg``   640x427 photo-like JPEG;
* ``portrait_exif6.jpg``  stored 400x300 with EXIF Orientation 6, so it displays (and
  vlutils loads it) as 300x400 with the red marker top-left;
* ``logo_rgba.png``   256x160 RGBA with transparent and half-transparent areas
  (composited on white);
* ``chart_gray.png``  320x200 grayscale line chart.

``messages.json`` is a JSON list of messages whose paths are relative to the repository
root (run ``python -m vlutils fixtures/demo/messages.json`` from there). It includes the
OpenAI ``image_url`` form and per-item options, and a video item when
``fixtures/video/h264_320x240_30fps.mp4`` (made by ``scripts/make_video_fixtures.py``) exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
VIDEO = ROOT / "fixtures" / "video" / "h264_320x240_30fps.mp4"
MAX_BYTES = 100_000


def landscape(width: int = 640, height: int = 427) -> Image.Image:
    rng = np.random.default_rng(1)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    sky = np.array([110, 160, 230], np.float32) * (1 - 0.4 * y) + 40 * y
    ground = np.array([60, 130, 50], np.float32) * (0.7 + 0.3 * y)
    horizon = 0.55 + 0.05 * np.sin(9 * x)
    img = np.where(y < horizon, sky, ground) + rng.normal(0, 4, (height, width, 1))
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((480, 50, 560, 130), fill=(250, 220, 90))  # sun
    draw.polygon([(100, 260), (190, 120), (280, 260)], fill=(120, 110, 100))  # mountain
    draw.rectangle((360, 250, 430, 320), fill=(170, 60, 40))  # house
    return image


def portrait_with_exif(orientation: int = 6) -> tuple[Image.Image, bytes]:
    """Upright 300x400 image with a red top-left block, stored rotated so that EXIF
    orientation 6 (rotate 90 degrees clockwise on display) brings it back upright."""
    upright = Image.new("RGB", (300, 400), (200, 200, 200))
    draw = ImageDraw.Draw(upright)
    draw.rectangle((0, 0, 99, 99), fill=(220, 30, 30))
    draw.rectangle((200, 300, 299, 399), fill=(30, 30, 220))
    draw.text((110, 190), "UP", fill=(0, 0, 0))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # undone by orientation 6
    exif = Image.Exif()
    exif[0x0112] = orientation
    return stored, exif.tobytes()


def logo_rgba(width: int = 256, height: int = 160) -> Image.Image:
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 140, 140), fill=(30, 120, 220, 255))
    draw.rectangle((110, 40, 236, 120), fill=(240, 120, 20, 128))  # half transparent
    draw.text((150, 130), "vlutils", fill=(0, 0, 0, 255))
    return image


def chart_gray(width: int = 320, height: int = 200) -> Image.Image:
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    draw.line((30, 10, 30, 180, 310, 180), fill=0, width=2)
    xs = np.linspace(30, 310, 29)
    ys = 180 - (60 + 50 * np.sin(xs / 30) + xs / 5)
    draw.line(list(zip(xs.tolist(), ys.tolist())), fill=60, width=3)
    return image


def messages(include_video: bool) -> list[dict]:
    content = [
        {"type": "image", "image": "fixtures/demo/landscape.jpg"},
        {"type": "image", "image": "fixtures/demo/portrait_exif6.jpg", "max_pixels": 256 * 28 * 28},
        {"type": "image_url", "image_url": {"url": "fixtures/demo/logo_rgba.png"}},
        {"type": "image", "image": "fixtures/demo/chart_gray.png", "resized_height": 224, "resized_width": 336},
    ]
    if include_video:
        content.append({"type": "video", "video": "fixtures/video/h264_320x240_30fps.mp4", "fps": 2.0})
    content.append({"type": "text", "text": "Describe each picture" + (" and the video." if include_video else ".")})
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": content},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    landscape().save(out / "landscape.jpg", "JPEG", quality=85)
    stored, exif = portrait_with_exif()
    stored.save(out / "portrait_exif6.jpg", "JPEG", quality=85, exif=exif)
    logo_rgba().save(out / "logo_rgba.png", "PNG", optimize=True)
    chart_gray().save(out / "chart_gray.png", "PNG", optimize=True)
    include_video = VIDEO.exists()
    (out / "messages.json").write_text(json.dumps(messages(include_video), indent=2) + "\n")

    for path in sorted(out.iterdir()):
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"{path} is {size} bytes, over {MAX_BYTES}")
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {size} bytes")
    if not include_video:
        print(f"note: {VIDEO.relative_to(ROOT)} not found, messages.json has no video item")


if __name__ == "__main__":
    main()
