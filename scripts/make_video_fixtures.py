#!/usr/bin/env python
"""Generate the small test videos in fixtures/video/ with PyAV (deterministic content).

Usage: python scripts/make_video_fixtures.py [--out fixtures/video] [--force]

Every frame is distinct (moving square, frame-dependent colours, a gradient) so that an
off-by-one frame index shows up as a pixel difference. The rotated fixture is made the
way phones tag video, with `ffmpeg -c copy -metadata:s:v rotate=90` when the ffmpeg CLI
exists (PyAV's display matrix otherwise).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

logger = logging.getLogger("make_video_fixtures")


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """Deterministic RGB frame ``i``: gradient background, a moving square, a colour bar."""
    y = np.arange(height, dtype=np.int32)[:, None]
    x = np.arange(width, dtype=np.int32)[None, :]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (x * 255 // max(width - 1, 1) + 7 * i) % 256
    img[..., 1] = (y * 255 // max(height - 1, 1) + 3 * i) % 256
    img[..., 2] = ((x + y + 11 * i) // 4) % 256
    side = max(4, min(width, height) // 4)
    cx = (i * 5) % max(width - side, 1)
    cy = (i * 3) % max(height - side, 1)
    img[cy : cy + side, cx : cx + side] = (255 - (i * 17) % 256, (i * 29) % 256, 40)
    bar = max(2, height // 10)
    img[:bar, : (i * 7) % width + 1] = (255, 255, 255)
    return img


def encode(
    path: Path,
    codec: str,
    width: int,
    height: int,
    nframes: int,
    rate: Fraction | int = 30,
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    container_options: dict | None = None,
    pts_ms: list[int] | None = None,
    audio: bool = False,
    fmt: str | None = None,
) -> None:
    """Encode ``nframes`` synthetic frames; ``pts_ms`` gives explicit (VFR) timestamps."""
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=16000)
            astream.layout = "mono"
        for i in range(nframes):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            frame.pts = pts_ms[i] if pts_ms is not None else i
            if pts_ms is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if astream is not None:
            seconds = nframes / float(rate)
            samples = int(16000 * seconds)
            t = np.arange(samples) / 16000.0
            wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            chunk = 1024
            for start in range(0, samples, chunk):
                aframe = av.AudioFrame.from_ndarray(wave[:, start : start + chunk], format="fltp", layout="mono")
                aframe.sample_rate = 16000
                aframe.pts = start
                for packet in astream.encode(aframe):
                    out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)


def encode_audio_only(path: Path, seconds: float = 1.0) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = int(16000 * seconds)
        wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000.0)).astype(np.float32)[None, :]
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(wave[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def make_rotated(src: Path, dst: Path) -> None:
    """Tag ``src`` as rotated by 90 degrees without re-encoding."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(src), "-c", "copy", "-metadata:s:v", "rotate=90", str(dst)],
            check=True,
        )
        return
    logger.warning("ffmpeg CLI not found: writing the rotation with PyAV's display matrix")
    encode_rotated_pyav(dst)


def make_cover_art(src: Path, dst: Path) -> None:
    """An mkv whose first video stream is a cover picture (attachment-style PNG stream)."""
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        logger.warning("ffmpeg CLI not found: skipping %s", dst.name)
        return
    cover = dst.with_suffix(".cover.png")
    frame = av.VideoFrame.from_ndarray(frame_image(99, 64, 64), format="rgb24")
    frame.to_image().save(cover)
    try:
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(cover), "-i", str(src), "-map", "0", "-map", "1", "-c", "copy",
             "-disposition:v:0", "attached_pic", str(dst)],
            check=True,
        )
    finally:
        cover.unlink(missing_ok=True)


def encode_rotated_pyav(dst: Path) -> None:
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"g": "30"})
        stream.width, stream.height, stream.pix_fmt = 176, 96, "yuv420p"
        stream.set_display_rotation(-90)  # counterclockwise degrees: -90 = shown turned clockwise
        for i in range(45):
            frame = av.VideoFrame.from_ndarray(frame_image(i, 176, 96), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def vfr_timestamps() -> list[int]:
    """60 frames: 1 s at 30 fps, then 1 s at 10 fps, then 1 s at 20 fps (milliseconds)."""
    stamps = [round(i * 1000 / 30) for i in range(30)]
    stamps += [1000 + i * 100 for i in range(10)]
    stamps += [2000 + i * 50 for i in range(20)]
    return stamps


FIXTURES = {
    # name: (function, kwargs)
    "h264_320x240_30fps.mp4": dict(codec="libx264", width=320, height=240, nframes=90, options={"g": "30", "bf": "3"}),
    "h264_faststart_25fps.mp4": dict(
        codec="libx264", width=256, height=144, nframes=75, rate=25, options={"g": "25"},
        container_options={"movflags": "+faststart"},
    ),
    "h264_long_gop.mp4": dict(codec="libx264", width=192, height=108, nframes=300, options={"g": "48", "bf": "2"}),
    "h264_2997fps.mp4": dict(codec="libx264", width=224, height=126, nframes=100, rate=Fraction(30000, 1001),
                             options={"g": "30"}),
    "h264_odd_161x97_yuv444.mp4": dict(codec="libx264", width=161, height=97, nframes=40, pix_fmt="yuv444p"),
    "h264_wide_450x60.mp4": dict(codec="libx264", width=450, height=60, nframes=40),
    "h264_with_audio.mp4": dict(codec="libx264", width=192, height=144, nframes=60, audio=True),
    "h264_one_frame.mp4": dict(codec="libx264", width=128, height=96, nframes=1),
    "h264_vfr.mkv": dict(codec="libx264", width=160, height=120, nframes=60, pts_ms=vfr_timestamps()),
    "h264_vfr.mp4": dict(codec="libx264", width=160, height=120, nframes=60, pts_ms=vfr_timestamps()),
    "hevc_24fps.mp4": dict(codec="libx265", width=192, height=128, nframes=48, rate=24,
                           options={"x265-params": "log-level=error:keyint=24"}),
    "vp9_30fps.webm": dict(codec="libvpx-vp9", width=160, height=96, nframes=60, options={"g": "30", "deadline": "realtime", "cpu-used": "8"}),
    "av1_30fps.mkv": dict(codec="libsvtav1", width=160, height=96, nframes=40, options={"preset": "12"}),
    "mpeg4_25fps.avi": dict(codec="mpeg4", width=176, height=144, nframes=50, rate=25, options={"g": "12"}),
    # containers without a precise index: seeking is inexact (decord returns wrong frames)
    "h264_long_gop.ts": dict(codec="libx264", width=192, height=108, nframes=300, options={"g": "48", "bf": "2"}),
    "mpeg2_long_gop.mpg": dict(codec="mpeg2video", width=192, height=108, nframes=300, rate=25,
                               options={"g": "30", "bf": "2"}),
    "mjpeg_15fps.avi": dict(codec="mjpeg", width=160, height=120, nframes=30, rate=15, pix_fmt="yuvj420p"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "fixtures" / "video"))
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, kwargs in FIXTURES.items():
        path = out / name
        if path.exists() and not args.force:
            continue
        try:
            encode(path, **kwargs)
        except (av.FFmpegError, ValueError) as exc:
            logger.warning("skipped %s: %s", name, exc)
            path.unlink(missing_ok=True)
            continue
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
    audio = out / "audio_only.m4a"
    if args.force or not audio.exists():
        encode_audio_only(audio)
    rotated = out / "h264_rotate90.mp4"
    if args.force or not rotated.exists():
        make_rotated(out / "h264_320x240_30fps.mp4", rotated)
    cover = out / "h264_cover_art_first.mkv"
    if args.force or not cover.exists():
        make_cover_art(out / "h264_320x240_30fps.mp4", cover)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    logger.info("fixtures: %d files, %d bytes", len(list(out.iterdir())), total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
