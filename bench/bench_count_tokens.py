"""count_tokens (headers only) vs fetching (decode + resize) for the same items: per image and on
a 10-minute 854x480 h264 video. Checks that both give the same grid, reports ratios.

    .venv/bin/python bench/bench_count_tokens.py [--reps 3]

Media are generated once into bench/media/ (git-ignored): photos with Pillow, the video with
bench_video.py's generator (testsrc2 -> libx264, 30 fps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

VIDEO = "h264_854x480_10min.mp4"


def make_photos(media: Path, count: int = 8) -> list[Path]:
    from PIL import Image

    media.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = media / f"photo_{i}.jpg"
        if not path.exists():
            image = Image.effect_noise((4032, 3024), 40 + i).convert("RGB")
            exif = Image.Exif()
            exif[0x0112] = 6 if i % 2 else 1
            image.save(path, quality=90, exif=exif)
        paths.append(path)
    return paths


def timed(fn, reps: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--media", default=str(HERE / "media"))
    args = parser.parse_args()
    import torch

    import bench_video
    from vlutils import count_tokens, fetch_image
    from vlutils.video import fetch_video

    media = Path(args.media)
    bench_video.ensure_media(media, {VIDEO})
    photos = make_photos(media)
    rows = []

    def grid_of_image(path):
        image = fetch_image({"image": str(path)})
        return (1, image.height // 14, image.width // 14)

    fetch_s, counted_s, same = [], [], True
    for path in photos:
        f, grid = timed(lambda: grid_of_image(path), args.reps)
        c, entries = timed(lambda: count_tokens([{"role": "user", "content": [{"image": str(path)}]}]), args.reps)
        fetch_s.append(f)
        counted_s.append(c)
        same &= tuple(entries[0]["grid_thw"]) == grid
    rows.append({"case": "image 4032x3024 JPEG (per image, median of 8)", "fetch_ms": 1000 * statistics.median(fetch_s),
                 "count_ms": 1000 * statistics.median(counted_s), "same_grid": same})

    for options in ({}, {"fps": 1.0, "max_frames": 64}):
        ele = {"video": str(media / VIDEO), **options}

        def fetched():
            video = fetch_video(ele, output_dtype=torch.uint8)
            t, _, h, w = video.shape
            return (-(-t // 2), h // 14, w // 14)

        f, grid = timed(fetched, 1)
        c, entries = timed(lambda: count_tokens([{"role": "user", "content": [ele]}]), args.reps)
        rows.append({"case": f"10-min 854x480 h264 video {json.dumps(options)}", "fetch_ms": 1000 * f,
                     "count_ms": 1000 * c, "same_grid": tuple(entries[0]["grid_thw"]) == grid})

    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f}")
    print("| case | fetch ms | count_tokens ms | speed-up | same grid |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['case']} | {row['fetch_ms']:.1f} | {row['count_ms']:.2f} | "
              f"{row['fetch_ms'] / row['count_ms']:.0f}x | {'yes' if row['same_grid'] else 'NO'} |")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "count_tokens.json").write_text(json.dumps({"load": load, "rows": rows}, indent=1))
    return 0 if all(r["same_grid"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
