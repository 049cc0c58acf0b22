"""The frame index of a video file with PyAV: frame count, timestamps and keyframes.

MP4/MOV files give it from their sample tables (:mod:`.mp4index`, no packet read beyond a
few for checking); every other container (mkv/webm report no frame count, avi/ts/mpg
headers are not trusted) is scanned packet by packet. Both give the same
:class:`FrameIndex`, used by the pyav backend to sample and seek, and reusable by anything
that needs frame counts (token counting) without decoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ...errors import DecodeError
from .base import Probe
from .mp4index import sample_table_index

logger = logging.getLogger(__name__)


def import_av():
    import av  # noqa: PLC0415 - av is a hard dependency, imported lazily to keep `import vlutils` light

    return av


def short_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:160] + "..."


def open_container(path: str, source: Any):
    """``av.open`` with a typed error; refuses files without a video stream."""
    av = import_av()
    try:
        container = av.open(path, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a readable video ({short_error(exc)})", source) from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DecodeError(f"no video stream (streams: {', '.join(kinds)})", source)
    return container


def video_stream(container):
    """FFmpeg's best video stream (as decord picks it): not a cover-art picture stream."""
    return container.streams.best("video") or container.streams.video[0]


def quarter_turns(frame) -> int:
    """The frame's display rotation in counterclockwise quarter turns (0-3)."""
    return int(round((frame.rotation or 0) / 90.0)) % 4


def decode_packet(codec, packet, skip_mode: str, index_of: dict[int, int] | None, wanted: set[int], path: str):
    """Decode one packet; returns ``(frames, skip_mode)``, the codec's ``skip_frame`` now.

    With ``index_of`` (skipping on), the packet of a frame not in ``wanted`` is sent with
    ``skip_frame=NONREF``: a non-reference frame nobody wants need not be decoded at all.
    An undecodable packet is logged and gives no frames."""
    if index_of is not None:
        mode = "DEFAULT" if packet.pts is None or index_of.get(packet.pts, -1) in wanted else "NONREF"
        if mode != skip_mode:
            codec.skip_frame = skip_mode = mode
    try:
        return codec.decode(packet), skip_mode
    except import_av().FFmpegError as exc:
        logger.warning("%s: skipping undecodable packet: %s", path, short_error(exc))
        return (), skip_mode


@dataclass
class FrameIndex:
    """``probe`` plus the presentation timestamps in order (None when packets lack unique
    timestamps: frames are then counted in decode order and seeking is off)."""

    probe: Probe
    sorted_pts: list[int] | None
    index_of: dict[int, int] | None
    method: str  # "sample-table" or "packets"
    container_format: str = ""  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"


def read_frame_index(path: str, source: Any = None, *, use_sample_tables: bool = True) -> FrameIndex:
    """Frame count, timestamps and keyframes of the best video stream of ``path``.

    Raises :class:`DecodeError` for unreadable, truncated or empty streams.
    """
    container = open_container(path, source)
    scan_error = None
    method = "packets"
    try:
        stream = video_stream(container)
        container_format = container.format.name
        time_base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        codec = stream.codec_context.name
        reorders = bool(stream.codec_context.has_b_frames)
        declared_frames = stream.frames or 0
        declared_seconds = None
        if stream.duration and time_base:
            declared_seconds = float(stream.duration * time_base)
        elif container.duration:
            declared_seconds = container.duration / 1_000_000
        table = sample_table_index(container, stream, path) if use_sample_tables else None
        if table is not None:
            stamps, keys = table
            method = "sample-table"
        else:
            if use_sample_tables and container.format.name.startswith("mov"):
                # the check read a few packets: scan from a fresh open
                container.close()
                container = open_container(path, source)
                stream = video_stream(container)
            stamps, keys, scan_error = _scan_packets(container, stream)
    finally:
        container.close()
    if scan_error is not None:
        raise DecodeError(
            f"the file is truncated or corrupt: reading packets failed after {len(stamps)} frame(s) "
            f"({short_error(scan_error)})",
            source,
        )
    if not stamps:
        raise DecodeError("the video stream has no frames", source)
    if declared_frames > len(stamps):
        raise DecodeError(
            f"the file is truncated: its header declares {declared_frames} frames but only "
            f"{len(stamps)} are present",
            source,
        )
    sorted_pts = index_of = timestamps = keyframes = None
    if reorders and len(stamps) > 2 and None not in stamps and all(a < b for a, b in zip(stamps, stamps[1:])):
        # the codec shows frames in another order than it decodes them, yet the timestamps
        # follow decode order: they were made up by the container (h264 with B-frames in
        # AVI), so frames are counted in the order the decoder shows them instead
        logger.info("%s: packet timestamps follow decode order; frames are counted in display order", path)
    elif None not in stamps and len(set(stamps)) == len(stamps):
        sorted_pts = sorted(stamps)
        index_of = {pts: i for i, pts in enumerate(sorted_pts)}
        first = sorted_pts[0]
        tb = float(time_base) if time_base else 0.0
        timestamps = [(p - first) * tb for p in sorted_pts] if tb else None
        keyframes = sorted(index_of[p] for p, k in zip(stamps, keys) if k)
    else:
        logger.info("%s: packets lack unique timestamps; frames are counted in decode order", path)
    fps = float(rate) if rate else 0.0
    if fps <= 0 and timestamps and timestamps[-1] > 0:
        fps = (len(stamps) - 1) / timestamps[-1]
    if declared_seconds and timestamps and fps > 0 and not declared_frames:
        covered = timestamps[-1] + 1.0 / fps
        if declared_seconds - covered > max(2.0 / fps, 0.05 * declared_seconds):
            raise DecodeError(
                f"the file is truncated: its header declares {declared_seconds:.2f}s but frames "
                f"cover only {covered:.2f}s",
                source,
            )
    probe = Probe(total_frames=len(stamps), fps=fps, timestamps=timestamps, keyframes=keyframes, codec=codec,
                  extra={"index": method})
    return FrameIndex(probe, sorted_pts, index_of, method, container_format)


def _scan_packets(container, stream) -> tuple[list, list[bool], Exception | None]:
    """Timestamp (pts, else dts) and keyframe flag of every packet, in decode order."""
    av = import_av()
    stamps: list[int | None] = []
    keys: list[bool] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                continue  # the flush packet PyAV yields at end of stream
            stamps.append(packet.pts if packet.pts is not None else packet.dts)
            keys.append(packet.is_keyframe)
    except av.FFmpegError as exc:
        return stamps, keys, exc
    return stamps, keys, None
