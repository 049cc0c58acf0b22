#!/usr/bin/env python
"""Generate the bad-input corpus in ``fixtures/bad/`` (small files, committed).

Every file is derived from a tiny valid image or video made here, then broken in
one specific way (truncated, bytes overwritten, header fields rewritten, wrong
extension...). Deterministic: fixed seeds and content, so rerunning gives the same
images; videos depend on the local ffmpeg build, which is why the files are committed
and the tests read them instead of regenerating.

    python scripts/make_bad_corpus.py [--out fixtures/bad]

Needs Pillow and the ffmpeg CLI (videos are skipped with a warning without it).
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from PIL import Image

logger = logging.getLogger("make_bad_corpus")
ROOT = Path(__file__).resolve().parent.parent


def base_image(size=(64, 48)) -> Image.Image:
    """A small image with structure (gradients), so that codecs produce real scan data."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([((x * 255) // w, (y * 255) // h, ((x + y) * 7) % 256) for y in range(h) for x in range(w)])
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def overwrite(data: bytes, start_fraction: float, length: int, seed: int) -> bytes:
    """Replace ``length`` bytes from ``start_fraction`` of the file with seeded noise."""
    rng = random.Random(seed)
    start = int(len(data) * start_fraction)
    noise = bytes(rng.randrange(256) for _ in range(length))
    return data[:start] + noise + data[start + length:]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header (valid CRCs) claiming ``width`` x ``height``, with one
    tiny IDAT: a decoder that trusted the header would allocate width*height*3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 frame header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(base_image(), "JPEG", quality=80))
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "baseline JPEG expected"
    struct.pack_into(">HH", data, sof + 5, height, width)  # marker(2) len(2) precision(1) H W
    return bytes(data)


def many_frame_gif(frames: int) -> bytes:
    """An animated GIF with ``frames`` 4x4 frames (alternating so none are merged)."""
    palette_frames = [Image.new("P", (4, 4), i % 2) for i in range(frames)]
    for frame in palette_frames:
        frame.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buf = io.BytesIO()
    palette_frames[0].save(buf, "GIF", save_all=True, append_images=palette_frames[1:], duration=10, loop=0)
    return buf.getvalue()


def make_images(out: Path) -> None:
    img = base_image()
    valid = {
        "jpg": encode(img, "JPEG", quality=85),
        "png": encode(img, "PNG"),
        "gif": encode(img.convert("P"), "GIF"),
        "webp": encode(img, "WEBP", quality=80),
        "bmp": encode(img, "BMP"),
        "tiff": encode(img, "TIFF"),
    }
    for ext, data in valid.items():
        (out / f"img_truncated_half.{ext}").write_bytes(data[: len(data) // 2])
        (out / f"img_header_only.{ext}").write_bytes(data[:16])
        (out / f"img_bad_magic.{ext}").write_bytes(overwrite(data, 0.0, 8, seed=1))
    for ext in ("jpg", "png", "gif", "webp"):
        (out / f"img_noise_middle.{ext}").write_bytes(overwrite(valid[ext], 0.5, 64, seed=2))
    (out / "img_zero_bytes.png").write_bytes(b"")
    (out / "img_zero_bytes.jpg").write_bytes(b"")
    (out / "img_png_named.jpg").write_bytes(valid["png"])  # wrong extension, valid content
    (out / "img_text.png").write_bytes(b"This is not an image, it is plain text.\n" * 4)
    (out / "img_html.jpg").write_bytes(b"<!doctype html><html><body><img src='cat.jpg'></body></html>\n")
    (out / "img_json.webp").write_bytes(b'{"error": "not found"}\n')
    (out / "img_huge_dims.png").write_bytes(png_claiming(100_000, 100_000))
    (out / "img_huge_dims.jpg").write_bytes(jpeg_claiming(65_000, 65_000))
    (out / "img_huge_dims_one_row.png").write_bytes(png_claiming(2_000_000_000, 1))
    (out / "img_extreme_ratio.png").write_bytes(encode(Image.new("RGB", (600, 2), (9, 9, 9)), "PNG"))
    (out / "img_one_pixel.png").write_bytes(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    (out / "img_3000_frames.gif").write_bytes(many_frame_gif(3000))
    (out / "img_16bit_gray.png").write_bytes(encode(Image.new("I;16", (40, 30), 40000), "PNG"))
    (out / "img_cmyk.jpg").write_bytes(encode(img.convert("CMYK"), "JPEG"))
    (out / "ok_image.png").write_bytes(valid["png"])  # control: options cases use it


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, stdin=subprocess.DEVNULL)


def make_videos(out: Path) -> None:
    if shutil.which("ffmpeg") is None:
        logger.warning("ffmpeg not found: video cases not generated")
        return
    with tempfile.TemporaryDirectory(prefix="bad-corpus-") as tmp:
        tmp = Path(tmp)
        src = ["-f", "lavfi", "-i", "testsrc=size=32x24:rate=8:duration=3", "-pix_fmt", "yuv420p"]
        encoders = {
            "mp4": ["-c:v", "libx264", "-g", "8", "-bf", "0"],
            "mkv": ["-c:v", "libx264", "-g", "8", "-bf", "0"],
            "webm": ["-c:v", "libvpx", "-b:v", "50k", "-g", "8"],
            "avi": ["-c:v", "mpeg4", "-q:v", "8", "-g", "8"],
        }
        valid = {}
        for ext, codec in encoders.items():
            path = tmp / f"ok.{ext}"
            ffmpeg(*src, *codec, "-bitexact", "-map_metadata", "-1", str(path))
            valid[ext] = path.read_bytes()
        for ext, data in valid.items():
            (out / f"vid_truncated_half.{ext}").write_bytes(data[: len(data) // 2])
            (out / f"vid_header_only.{ext}").write_bytes(data[:64])
            (out / f"vid_bad_magic.{ext}").write_bytes(overwrite(data, 0.0, 32, seed=3))
            (out / f"vid_noise_middle.{ext}").write_bytes(overwrite(data, 0.5, 256, seed=4))
        (out / "vid_zero_bytes.mp4").write_bytes(b"")
        (out / "vid_text.mp4").write_bytes(b"#EXTM3U\nthis is a playlist, not a video\n")
        (out / "vid_png_as_video.mp4").write_bytes(encode(base_image(), "PNG"))

        # moov atom first (+faststart), then the file cut: the index promises 24 frames
        # whose data is missing (the header lies about the frame count).
        faststart = tmp / "fast.mp4"
        ffmpeg(*src, *encoders["mp4"], "-movflags", "+faststart", "-bitexact", "-map_metadata", "-1", str(faststart))
        data = faststart.read_bytes()
        (out / "vid_lying_frame_count.mp4").write_bytes(data[: int(len(data) * 0.6)])

        # AVI whose main header (avih.dwTotalFrames) and stream header (strh.dwLength) claim 10^6 frames.
        avi = bytearray(valid["avi"])
        avih = avi.find(b"avih")
        struct.pack_into("<I", avi, avih + 8 + 16, 1_000_000)
        strh = avi.find(b"strh")
        struct.pack_into("<I", avi, strh + 8 + 32, 1_000_000)
        (out / "vid_lying_frame_count.avi").write_bytes(bytes(avi))

        audio = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1:sample_rate=8000"]
        ffmpeg(*audio, "-c:a", "aac", "-b:a", "16k", "-bitexact", "-map_metadata", "-1", str(out / "vid_audio_only.mp4"))
        ffmpeg(*audio, "-c:a", "libvorbis", "-b:a", "32k", "-bitexact", "-map_metadata", "-1", str(out / "vid_audio_only.webm"))
        ffmpeg(*audio, "-c:a", "pcm_u8", "-bitexact", "-map_metadata", "-1", str(out / "vid_audio_only.avi"))

        one = tmp / "one.mp4"
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x24:rate=8", "-frames:v", "1", "-pix_fmt", "yuv420p",
               *encoders["mp4"], "-bitexact", "-map_metadata", "-1", str(one))
        shutil.copy(one, out / "vid_one_frame.mp4")
        shutil.copy(tmp / "ok.mp4", out / "ok_video.mp4")  # control: options and resource cases use it
        # 25 KB that cost ~20 s of CPU with fps=30 (300 1080p frames decoded and resized):
        # the decode-timeout tests stop it part-way
        ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=1920x1080:rate=30:duration=10", "-vf",
               "drawbox=x='mod(t*300,1800)':y=100:w=80:h=80:color=red:t=fill", "-c:v", "libx264", "-preset",
               "veryslow", "-crf", "40", "-g", "300", "-pix_fmt", "yuv420p", "-bitexact", "-map_metadata", "-1",
               str(out / "slow_1080p.mp4"))
        # a plain MPEG-TS segment: the playlist tests point HLS playlists at it
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x24:rate=8:duration=1", "-pix_fmt", "yuv420p",
               *encoders["mp4"], "-bitexact", "-map_metadata", "-1", "-f", "mpegts", str(out / "vid_segment.ts"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "fixtures" / "bad")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    make_images(args.out)
    make_videos(args.out)
    files = sorted(p for p in args.out.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    logger.info("%d files, %d bytes in %s", len(files), total, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
