"""Write fixtures/video/mpeg4_part2_640x360.avi: an MPEG-4 Part 2 AVI made by the ffmpeg CLI
(``-c:v mpeg4``, 2 s of testsrc2 at 25 fps, 164 KB) on which decord 0.6.0 and PyAV 18.1 decode
a few values 1-2 levels apart (their bundled FFmpeg versions differ). The tolerance tests in
tests/test_video_reference.py assert that measured bound. Needs the ffmpeg CLI.

Usage: python scripts/make_tolerance_fixtures.py [--force]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

NAME = "mpeg4_part2_640x360.avi"


def make_mpeg4_part2(dst: Path) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("the ffmpeg CLI is needed for this fixture (apt-get install ffmpeg)")
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=2",
         "-c:v", "mpeg4", "-pix_fmt", "yuv420p", str(dst)],
        check=True, timeout=120,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "fixtures" / "video"))
    parser.add_argument("--force", action="store_true", help="rewrite the file if it exists")
    args = parser.parse_args(argv)
    path = Path(args.out) / NAME
    if args.force or not path.exists():
        make_mpeg4_part2(path)
    print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
