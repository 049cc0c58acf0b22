"""Video facts from the container headers, without scanning or decoding the stream.

``count_tokens`` needs a video's frame count, frame rate and display size, not its pixels.
MP4/MOV files carry a complete sample table in their header, so those facts cost one open
and one decoded frame (for the display rotation and the decoded size). Where the header
cannot be trusted the packet index that fetching builds is used instead, so the numbers are
always the ones fetching works with:

* Matroska/WebM, MPEG-TS/PS and raw streams report no frame count;
* AVI headers can claim any count (``fixtures/bad/vid_lying_frame_count.avi``);
* an MP4 whose sample table points past the end of the file is truncated
  (``fixtures/bad/vid_lying_frame_count.mp4``): fetching rejects it, and so does the scan.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError
from .backends.pyav import PyAVReader, _import_av, _open_container, _short, _video_stream

logger = logging.getLogger(__name__)

_TRUSTED_FORMATS = ("mov",)  # FFmpeg's "mov,mp4,m4a,3gp,3g2,mj2" demuxer


@dataclass(frozen=True)
class VideoHeader:
    """What sizing a video needs: frames, fps and the display-oriented frame size."""

    total_frames: int
    fps: float
    height: int
    width: int
    rotation: int  # degrees, counterclockwise, as fetching applies it
    from_header: bool  # False: the packet index was scanned (header not trusted)


def read_video_header(path: str, source: Any = None) -> VideoHeader:
    """Frame count, fps and display size of the video at ``path``, equal to what the PyAV
    fetch path works with; raises :class:`~vlutils.errors.DecodeError` as fetching would."""
    av = _import_av()
    container = _open_container(path, source)
    try:
        stream = _video_stream(container)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        total = _trusted_frame_count(container, stream, path)
        try:
            frame = next(iter(container.decode(stream)), None)
        except av.FFmpegError as exc:
            raise DecodeError(f"no frame could be decoded ({_short(exc)})", source) from None
    finally:
        container.close()
    if frame is None:
        raise DecodeError("the video stream has no frames", source)
    rotation = int(round((frame.rotation or 0) / 90.0)) % 4
    height, width = (frame.width, frame.height) if rotation % 2 else (frame.height, frame.width)
    if total is None or fps <= 0:
        probe = PyAVReader(path, source).probe()  # the same index fetching builds
        return VideoHeader(probe.total_frames, probe.fps, height, width, rotation * 90, False)
    return VideoHeader(total, fps, height, width, rotation * 90, True)


def _trusted_frame_count(container, stream, path: str) -> int | None:
    """The header's frame count when the sample table is complete and inside the file, else None."""
    if container.format.name.split(",")[0] not in _TRUSTED_FORMATS:
        return None
    declared = stream.frames or 0
    entries = stream.index_entries
    if declared <= 0 or len(entries) != declared:
        return None
    end = max(entry.pos + entry.size for entry in entries)
    if end > os.path.getsize(path):
        logger.info("%s: the sample table points past the end of the file; scanning packets", path)
        return None
    return declared
