"""Helpers for the video tests: fixture paths, the qwen-vl-utils 0.0.14 reference run with
its decord backend, and availability checks for the optional backends."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VIDEO_DIR = ROOT / "fixtures" / "video"

# Fixtures the reference (decord) reads, with constant frame rate: outputs must be identical.
CFR_FIXTURES = [
    "h264_320x240_30fps.mp4",
    "h264_faststart_25fps.mp4",
    "h264_long_gop.mp4",
    "h264_2997fps.mp4",
    "h264_odd_161x97_yuv444.mp4",
    "h264_wide_450x60.mp4",
    "h264_with_audio.mp4",
    "h264_rotate90.mp4",
    "h264_cover_art_first.mkv",
    "hevc_24fps.mp4",
    "vp9_30fps.webm",
    "mpeg4_25fps.avi",
    "mjpeg_15fps.avi",
]
VFR_FIXTURES = ["h264_vfr.mkv", "h264_vfr.mp4"]


def fixture(name: str) -> str:
    path = VIDEO_DIR / name
    if not path.exists():
        pytest.fail(f"missing fixture {path}: run `python scripts/make_video_fixtures.py`")
    return str(path)


def backend_or_skip(name: str) -> None:
    """Skip (with the reason) when an optional backend cannot load here."""
    from vlutils.video import VIDEO_READER_BACKENDS

    reason = VIDEO_READER_BACKENDS[name].unavailable_reason()
    if reason is not None:
        pytest.skip(f"backend {name} unavailable: {reason}")


def reference_module():
    """qwen_vl_utils.vision_process, or a skip when the reference or decord is missing."""
    vp = pytest.importorskip("qwen_vl_utils.vision_process")
    pytest.importorskip("decord")
    return vp


@contextlib.contextmanager
def reference_decord():
    """The reference module with its backend pinned to decord and its silent fallback to
    torchvision disabled (it reads FORCE_QWENVL_VIDEO_READER at import and caches it)."""
    vp = reference_module()
    saved_backend, saved_tv = vp.get_video_reader_backend, vp.VIDEO_READER_BACKENDS["torchvision"]

    def no_fallback(ele):
        raise RuntimeError("reference decord failed (torchvision fallback disabled in tests)")

    vp.get_video_reader_backend = lambda: "decord"
    vp.VIDEO_READER_BACKENDS["torchvision"] = no_fallback
    try:
        yield vp
    finally:
        vp.get_video_reader_backend = saved_backend
        vp.VIDEO_READER_BACKENDS["torchvision"] = saved_tv


def reference_fetch(ele: dict[str, Any], image_patch_size: int = 14):
    """``((video, metadata), sample_fps)`` from the reference, or the exception it raised."""
    with reference_decord() as vp:
        try:
            return vp.fetch_video(dict(ele), image_patch_size=image_patch_size, return_video_sample_fps=True,
                                  return_video_metadata=True)
        except Exception as exc:  # noqa: BLE001 - the reference's failures are compared, not hidden
            return exc
