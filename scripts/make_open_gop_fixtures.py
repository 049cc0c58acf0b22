#!/usr/bin/env python
"""Generate the open-GOP fixtures in fixtures/video/ (decord returns wrong frames on them),
and an AVI whose timestamps follow decode order.

Usage: python scripts/make_open_gop_fixtures.py [--out fixtures/video] [--force]

Open GOP: a keyframe that is not an IDR (h264 I-frame with a recovery point, hevc CRA)
lets the B-frames just before it in display order reference the previous GOP. Decoding
from such a keyframe is exact only from the keyframe on; these files prove that the
parallel segment decoder still matches a sequential decode of every frame. Kept small
(well under 1 MB together); the frame content is make_video_fixtures.frame_image.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_video_fixtures import encode  # noqa: E402

logger = logging.getLogger("make_open_gop_fixtures")

OPEN_GOP_FIXTURES = {
    # B-pyramid, keyframe every 48 frames, open GOP (non-IDR I-frames after the first)
    "h264_open_gop.mp4": dict(
        codec="libx264", width=192, height=108, nframes=240,
        options={"x264-params": "keyint=48:min-keyint=48:scenecut=0:open-gop=1:bframes=3:b-pyramid=normal"},
    ),
    # x265 CRA keyframes (open GOP) with B-frames
    "hevc_open_gop.mp4": dict(
        codec="libx265", width=192, height=128, nframes=150, rate=25,
        options={"x265-params": "log-level=error:keyint=30:min-keyint=30:scenecut=0:open-gop=1:bframes=4"},
    ),
    # the same h264 stream in Matroska: keyframes come from the packet scan there
    "h264_open_gop.mkv": dict(
        codec="libx264", width=160, height=96, nframes=144,
        options={"x264-params": "keyint=48:min-keyint=48:scenecut=0:open-gop=1:bframes=3:b-pyramid=normal"},
    ),
    # h264 with B-frames in AVI: AVI stores no presentation times, so the packets' timestamps
    # follow decode order; frames must be counted in display order instead
    "h264_bframes.avi": dict(codec="libx264", width=176, height=144, nframes=96, rate=25, options={"g": "24", "bf": "2"}),
}


def make_open_gop_fixtures(out: Path, force: bool = False) -> None:
    """Write the open-GOP fixtures into ``out`` (existing files are kept unless ``force``)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, kwargs in OPEN_GOP_FIXTURES.items():
        path = out / name
        if path.exists() and not force:
            continue
        encode(path, **kwargs)
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "fixtures" / "video"))
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_open_gop_fixtures(Path(args.out), args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
