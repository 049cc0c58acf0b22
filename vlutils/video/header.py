"""Video facts for sizing, without decoding the stream: frame count, fps, display size.

``count_tokens`` needs a video's frame count, frame rate and display size, not its pixels.
They come from the same frame index the PyAV fetch path samples with
(:func:`vlutils.video.backends.pyav_index.read_frame_index`): MP4/MOV sample tables where they
are complete and consistent, a packet scan everywhere else (Matroska/WebM report no frame count,
AVI headers can claim any count, truncated MP4s point past the end of the file). So the numbers
are always the ones fetching works with. One decoded frame gives the display rotation and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError
from .backends.pyav_index import import_av, open_container, quarter_turns, read_frame_index, short_error, video_stream


@dataclass(frozen=True)
class VideoHeader:
    """What sizing a video needs: frames, fps and the display-oriented frame size."""

    total_frames: int
    fps: float
    height: int
    width: int
    rotation: int  # degrees, counterclockwise, as fetching applies it
    from_header: bool  # True: the MP4/MOV sample table; False: the packets were scanned


def read_video_header(path: str, source: Any = None) -> VideoHeader:
    """Frame count, fps and display size of the video at ``path``, equal to what the PyAV
    fetch path works with; raises :class:`~vlutils.errors.DecodeError` as fetching would."""
    index = read_frame_index(path, source)
    av = import_av()
    container = open_container(path, source)
    try:
        try:
            frame = next(iter(container.decode(video_stream(container))), None)
        except av.FFmpegError as exc:
            raise DecodeError(f"no frame could be decoded ({short_error(exc)})", source) from None
    finally:
        container.close()
    if frame is None:
        raise DecodeError("the video stream has no frames", source)
    rotation = quarter_turns(frame)
    height, width = (frame.width, frame.height) if rotation % 2 else (frame.height, frame.width)
    probe = index.probe
    return VideoHeader(probe.total_frames, probe.fps, height, width, rotation * 90, index.method == "sample-table")
